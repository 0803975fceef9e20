"""Propose objects: segment everything on the current image (slice), then accept or reject the proposals."""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout

from napari_ultratinysam.annotation.proposals import ProposalSet
from napari_ultratinysam.widgets.annotator.layers import PROPOSALS


class ProposalsMixin:
    """Part of AnnotatorWidget: the proposals layer and its accept / reject actions."""

    def _add_proposal_row(self, v: QVBoxLayout) -> None:
        row = QHBoxLayout()
        self.propose_btn = QPushButton("Propose objects")
        self.propose_btn.setToolTip("segment everything on this image (slice): every object found is shown in the "
                                    "'proposals' layer; Y accepts the one under the cursor with the selected "
                                    "class, N rejects it, clicks and C correct one as usual")
        self.propose_btn.clicked.connect(lambda: self.propose_objects())
        self.accept_all_btn = QPushButton("Accept all (Shift+Y)")
        self.accept_all_btn.clicked.connect(lambda: self.accept_all_proposals())
        self.reject_all_btn = QPushButton("Reject all")
        self.reject_all_btn.clicked.connect(lambda: self.clear_proposals())
        for b in (self.propose_btn, self.accept_all_btn, self.reject_all_btn):
            row.addWidget(b)
        v.addLayout(row)

    # ========================================================================================== proposals
    def propose_objects(self) -> int | None:
        """Propose objects: segment_all on the current image (slice) on the worker; the result opens as the
        ``proposals`` layer (objects already annotated are left out). Returns the request, None without an image."""
        if self.image_layer is None or self.model is None:
            self.status_label.setText("propose: choose an image layer first")
            return None
        from napari_ultratinysam.inference.batched_decoder import batched_decoder
        from napari_ultratinysam.inference.segment_all import segment_all

        get, session, worker, plane, model = self._image_getter(), self.session, self.worker, self._plane, self.model
        holder: dict = {}

        def run():
            p = session.ensure_predictor()
            # a batched decoder where it costs nothing to make (torch); the ONNX backends decode click by click
            batched = batched_decoder(p) if getattr(p.backend, "name", "") == "torch" else None
            return segment_all(p, get(), batched=batched, progress=self.proposal_progress.emit,
                               cancelled=lambda: worker.closed or ("seq" in holder and not worker.is_current(
                                   holder["seq"], "propose")))

        def done(res):
            if self.model is not model or self._plane != plane or self._closed:
                return  # another image or slice meanwhile
            self.proposal_set = ProposalSet(res.labels, res.scores, plane)
            n_found = len(self.proposal_set)
            self._drop_covered_proposals()
            n = len(self.proposal_set)
            skipped = f" ({n_found - n} already annotated)" if n < n_found else ""
            self.status_label.setText(f"{n} proposal(s){skipped}: Y accept, N reject (under the cursor), "
                                      "Shift+Y accept all")

        def failed(exc):
            self.status_label.setText(f"<span style='color:#e55'>propose failed: {exc}</span>")
            self._notify(f"UltraTinySAM: propose failed: {exc}")

        self.clear_proposals()
        self.status_label.setText("proposing objects ...")
        holder["seq"] = seq = worker.submit("propose", run, on_done=done, on_error=failed)
        self._update_buttons()
        return seq

    def _on_proposal_progress(self, done: int, total: int):
        if self.worker.is_busy("propose"):
            self.status_label.setText(f"proposing objects: {done}/{total} views")

    def _show_proposals(self) -> None:
        """The open proposals in the ``proposals`` layer (outlines in instance colours over the image)."""
        ps = self.proposal_set
        if ps is None or not len(ps):
            if self.proposal_layer is not None and self.proposal_layer.data.any():
                self.proposal_layer.data[...] = 0
                self.proposal_layer.refresh()
            self.proposals_updated.emit(0)
            self._update_buttons()
            return
        shape = self.spatial_shape()
        layer = self.proposal_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)  # (its removal handler drops the set: keep it)
                self.proposal_set = ps
            self._suspend += 1
            try:
                layer = self.proposal_layer = self.viewer.add_labels(
                    np.zeros(shape, np.uint16), name=PROPOSALS, opacity=0.8, blending="translucent",
                    **self._layer_kwargs())
                layer.contour = max(2, int(max(shape[-2:]) / 300))
                layer.editable = False
                if self.prompts is not None:  # clicks still go to the prompts layer
                    self.viewer.layers.selection.active = self.prompts
            finally:
                self._suspend -= 1
        layer.scale, layer.translate = self.image_layer.scale, self.image_layer.translate
        layer.data[ps.plane] = ps.labels
        layer.refresh()
        self.proposals_updated.emit(len(ps))
        self._update_buttons()

    def clear_proposals(self) -> None:
        """Reject every open proposal (and stop a proposal run in progress)."""
        self.worker.cancel("propose")
        had = self.proposal_set is not None
        self.proposal_set = None
        if had or (self.proposal_layer is not None and self.proposal_layer.data.any()):
            self._show_proposals()

    def _drop_covered_proposals(self) -> None:
        """Proposals whose pixels are mostly annotated already (committed, or accepted as another proposal)."""
        ps, m = self.proposal_set, self.model
        if ps is None or m is None or m.labels.shape[len(ps.plane):] != ps.labels.shape:
            return
        n = int(ps.labels.max(initial=0))
        total = np.bincount(ps.labels.ravel(), minlength=n + 1)
        covered = np.bincount(ps.labels[m.labels[ps.plane] != 0], minlength=n + 1)
        for pid in np.flatnonzero((total > 0) & (2 * covered >= total)):
            if pid:
                ps.reject(int(pid))
        self._show_proposals()

    def proposal_at(self, row: float, col: float) -> int:
        return 0 if self.proposal_set is None else self.proposal_set.at(row, col)

    def accept_proposal(self, pid: int) -> int | None:
        """Proposal ``pid`` becomes a committed object of the selected class (as C does for the preview)."""
        ps = self.proposal_set
        if ps is None or self.model is None or pid not in ps.ids:
            self.status_label.setText("no proposal there")
            return None
        try:
            oid, _region = self.model.commit(ps.labels == pid, self.current_class(), ps.plane,
                                             overwrite=self.overwrite_check.isChecked())
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return None
        ps.accept(pid)
        self._show_proposals()
        self._after_annotation_change()
        self.select_object(oid)
        self.status_label.setText(f"accepted proposal as object #{oid} ({self.model.class_name(oid)}); "
                                  f"{len(ps)} left")
        self.committed.emit(oid)
        return oid

    def reject_proposal(self, pid: int) -> bool:
        ps = self.proposal_set
        if ps is None or pid not in ps.ids:
            self.status_label.setText("no proposal there")
            return False
        ps.reject(pid)
        self._show_proposals()
        self.status_label.setText(f"rejected a proposal; {len(ps)} left")
        return True

    def accept_all_proposals(self) -> list[int]:
        """Every open proposal becomes an object of the selected class (best predicted IoU first), one undo step."""
        ps = self.proposal_set
        if ps is None or self.model is None or not len(ps):
            self.status_label.setText("no proposals: press Propose objects first")
            return []
        try:
            ids, _region = self.model.commit_many(ps.accept_all(), self.current_class(), ps.plane,
                                                  overwrite=self.overwrite_check.isChecked())
        except ValueError as exc:
            self.status_label.setText(str(exc))
            ids = []
        self._show_proposals()
        if ids:
            self._after_annotation_change()
            self.status_label.setText(f"accepted {len(ids)} proposal(s) as "
                                      f"{self.classes[self.current_class()].name} (one undo step)")
            for oid in ids:
                self.committed.emit(oid)
        return ids

    def _proposal_under_cursor(self, accept: bool):
        """Y / N: the proposal under the mouse cursor (the viewer's cursor position)."""
        px = self._event_to_pixel(self.viewer.cursor.position)
        pid = self.proposal_at(px[1], px[2]) if px is not None and px[0] == getattr(
            self.proposal_set, "plane", None) else 0
        return self.accept_proposal(pid) if accept else self.reject_proposal(pid)
