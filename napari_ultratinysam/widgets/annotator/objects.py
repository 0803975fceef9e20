"""The Objects box: commit the preview, select, delete, re-class, undo / redo, and propagate an object through a
stack; the annotations layer's colours and the object counts."""
from __future__ import annotations

from typing import Callable

import numpy as np
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_ultratinysam.annotation import PredictorSession


class ObjectsMixin:
    """Part of AnnotatorWidget: committed objects and their edits."""

    def _build_objects_box(self) -> QGroupBox:
        g = QGroupBox("Objects")
        v = QVBoxLayout(g)
        self.selected_label = QLabel("selected: none (Alt+click an object)")
        v.addWidget(self.selected_label)
        row = QHBoxLayout()
        self.reclass_btn = QPushButton("Set class")
        self.reclass_btn.setToolTip("give the selected object the class selected above")
        self.reclass_btn.clicked.connect(lambda: self.set_selected_class(self.current_class()))
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.clicked.connect(self.delete_selected)
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.clicked.connect(self.undo)
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.clicked.connect(self.redo)
        for b in (self.reclass_btn, self.delete_btn, self.undo_btn, self.redo_btn):
            row.addWidget(b)
        v.addLayout(row)
        self.propagate_btn = QPushButton("Propagate (Shift+P)")
        self.propagate_btn.setToolTip("3-D stack or time series: carry the preview (committed first) or the "
                                      "selected object to the next and previous slices, each prompted with the "
                                      "slice before it, until the object disappears; Undo takes it all back")
        self.propagate_btn.clicked.connect(lambda: self.propagate_object())
        v.addWidget(self.propagate_btn)
        self._add_proposal_row(v)
        self.objects_label = QLabel("")
        v.addWidget(self.objects_label)
        return g

    # ============================================================================================= commit
    def commit(self) -> int | None:
        """C: the preview becomes a new object with the selected class; prompts clear."""
        if self.candidates is None or self.model is None:
            self.status_label.setText("nothing to commit: click or draw a box first")
            return None
        try:
            oid, _region = self.model.commit(self.candidates.mask, self.current_class(), self.candidates_plane,
                                             overwrite=self.overwrite_check.isChecked())
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return None
        self.clear_prompts()
        self._drop_covered_proposals()  # a proposal corrected with clicks is done with
        self._after_annotation_change()
        self.select_object(oid)
        self.status_label.setText(f"committed object #{oid} as {self.model.class_name(oid)}")
        self.committed.emit(oid)
        return oid

    def propagate_object(self, direction: str = "both") -> int | None:
        """Shift+P: carry the preview (committed first) or the selected object of this slice to the next and/or
        previous slices (propagation.propagate, on the worker); written as one undo step. Returns the request."""
        if self.image_layer is None or self.model is None or len(self.spatial_shape()) != 3:
            self.status_label.setText("propagate: needs a 3-D stack or time series (this image is 2-D)")
            return None
        if self.candidates is not None and self.candidates_plane == self._plane and self.commit() is None:
            return None
        oid, plane, model, session, worker = self.selected_id, self._plane, self.model, self.session, self.worker
        start = (model.labels[plane] == oid) if oid else None
        if start is None or not start.any():
            self.status_label.setText("propagate: commit an object on this slice or select one (Alt+click) first")
            return None
        from napari_ultratinysam.inference.propagation import propagate

        n = self.spatial_shape()[0]
        keys = {i: self._embedding_key((i,)) for i in range(n)}
        getters = [self._image_getter((i,)) for i in range(n)]
        holder: dict = {}

        def run():
            p = _PropagationPredictor(session)
            return propagate(p, _Slices(getters), plane[0], start, direction, key=keys.__getitem__,
                             progress=self.propagation_progress.emit,
                             cancelled=lambda: worker.closed or ("seq" in holder  # (set once submitted)
                                                                 and not worker.is_current(holder["seq"], "propagate")))

        def done(res):
            if self.model is not model or self._closed:
                return  # another image (or layer) meanwhile: these masks belong to the old one
            try:
                region = model.set_planes(oid, dict(res), overwrite=self.overwrite_check.isChecked())
            except ValueError as exc:  # e.g. the object was deleted meanwhile
                self.status_label.setText(str(exc))
                return
            if region is not None:
                self._after_annotation_change()
            stops = ", ".join(f"{d} at slice {s.index} ({s.reason})" for d, s in res.stops.items()
                              if 0 <= s.index < n)
            span = f" ({min(res)}..{max(res)})" if res else ""
            self.status_label.setText(f"propagated #{oid} to {len(res)} slice(s){span}"
                                      + (f"; stopped {stops}" if stops else ""))
            self.propagated.emit(oid)

        def failed(exc):
            self.status_label.setText(f"<span style='color:#e55'>propagation failed: {exc}</span>")
            self._notify(f"UltraTinySAM: propagation failed: {exc}")

        self.status_label.setText(f"propagating #{oid} from slice {plane[0]} ...")
        holder["seq"] = seq = worker.submit("propagate", run, on_done=done, on_error=failed)
        return seq

    def _on_propagation_progress(self, done: int, total: int):
        if self.worker.is_busy("propagate"):
            self.status_label.setText(f"propagating: {done}/{total} slices")

    def undo(self):
        if self.model is not None and self.model.undo() is not None:
            self._after_annotation_change()

    def redo(self):
        if self.model is not None and self.model.redo() is not None:
            self._after_annotation_change()

    def select_object(self, object_id: int):
        self.selected_id = int(object_id)
        if self.annotations is not None and object_id and self.annotations.selected_label != object_id:
            self._suspend += 1
            try:
                self.annotations.selected_label = int(object_id)
            finally:
                self._suspend -= 1
        self._update_objects_label()

    def _on_labels_selected(self, event):
        if self._suspend or self.annotations is None:
            return
        sel = int(self.annotations.selected_label)
        if self.model is not None and (sel in self.model.object_class):
            self.selected_id = sel
            self._update_objects_label()

    def _on_labels_painted(self, event):
        self._update_annotation_colors()
        self._autosave()

    def delete_selected(self):
        if self.model is None or not self.selected_id:
            return
        try:
            self.model.delete(self.selected_id)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return
        self.selected_id = 0
        self._after_annotation_change()

    def set_selected_class(self, class_index: int):
        if self.model is None or not self.selected_id:
            return
        try:
            self.model.set_class(self.selected_id, class_index)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return
        self._after_annotation_change()

    def _after_annotation_change(self):
        self.annotations.refresh()
        self._update_annotation_colors()
        self._update_objects_label()
        self._autosave()

    def _update_annotation_colors(self):
        if self.annotations is None or self.model is None:
            return
        from napari.utils.colormaps import DirectLabelColormap, label_colormap

        if self.by_class_check.isChecked():
            self.annotations.colormap = DirectLabelColormap(color_dict=self.model.color_dict())
        else:
            self.annotations.colormap = label_colormap(49)

    def _update_objects_label(self):
        m = self.model
        if m is None:
            self.selected_label.setText("selected: none")
            self._update_buttons()
            return
        if self.selected_id:
            self.selected_label.setText(f"selected: #{self.selected_id} ({m.class_name(self.selected_id)})")
        else:
            self.selected_label.setText("selected: none (Alt+click an object)")
        counts: dict[str, int] = {}
        for oid in m.object_class:
            counts[m.class_name(oid)] = counts.get(m.class_name(oid), 0) + 1
        self.objects_label.setText(f"{len(m.object_class)} object(s)" + (
            ": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else ""))
        self._update_buttons()

    def _update_buttons(self):
        m = self.model
        self.undo_btn.setEnabled(bool(m and m.can_undo))
        self.redo_btn.setEnabled(bool(m and m.can_redo))
        self.delete_btn.setEnabled(bool(m and self.selected_id))
        self.reclass_btn.setEnabled(bool(m and self.selected_id))
        self.propagate_btn.setEnabled(bool(m is not None and m.labels.ndim == 3))
        self.propose_btn.setEnabled(m is not None and not self.worker.is_busy("propose"))
        has = bool(self.proposal_set is not None and len(self.proposal_set))
        self.accept_all_btn.setEnabled(has)
        self.reject_all_btn.setEnabled(has)


class _Slices:
    """A stack's slices as propagate() reads them: each through its own reader (the layer's contrast applied)."""

    def __init__(self, getters: list[Callable[[], np.ndarray]]):
        self.getters = getters

    def __len__(self) -> int:
        return len(self.getters)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.getters[int(i)]()


class _PropagationPredictor:
    """The session's predictor as propagate() uses it (worker thread only): slices are set through the session,
    so that it keeps knowing which image the predictor holds."""

    def __init__(self, session: PredictorSession):
        self.session = session
        self.predictor = p = session.ensure_predictor()
        if hasattr(p, "zoom_refine"):
            p.zoom_refine = bool(session.zoom_refine)
        for name in ("image_size", "lowres_size", "backend"):
            if hasattr(p, name):
                setattr(self, name, getattr(p, name))

    def set_image(self, image: np.ndarray, key=None) -> None:
        self.session.ensure_image(key, lambda: image)

    def predict(self, **kw):
        return self.predictor.predict(**kw)
