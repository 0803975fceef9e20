"""The Prompt box and the live preview: the prompt read from the layers, predictions on the worker (two stages on
large images), the candidate masks shown in the preview layer."""
from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_ultratinysam.annotation import Candidates, Prompt
from napari_ultratinysam.widgets.napari_compat import canvas_draw_event, refresh_labels_region


class PreviewMixin:
    """Part of AnnotatorWidget: prompt -> prediction -> preview layer."""

    def _build_prompt_box(self) -> QGroupBox:
        g = QGroupBox("Prompt")
        v = QVBoxLayout(g)
        self.hover_check = QCheckBox("hover preview (mask under the cursor before the first click)")
        self.hover_check.setChecked(True)
        self.hover_check.toggled.connect(self._on_hover_toggled)
        v.addWidget(self.hover_check)
        self.overwrite_check = QCheckBox("commit over existing objects")
        self.overwrite_check.setToolTip("off: a new object only takes unlabelled pixels")
        v.addWidget(self.overwrite_check)
        self.mask_label = QLabel("no preview")
        v.addWidget(self.mask_label)
        row = QHBoxLayout()
        for text, slot, tip in (("Box (B)", self.start_box, "draw a rectangle"),
                                ("Next mask (M)", self.cycle_mask, "cycle candidates"),
                                ("Commit (C)", self.commit, "preview -> new object"),
                                ("Clear (Esc)", self.clear_prompts, "clear prompts")):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, s=slot: s())
            row.addWidget(b)
        v.addLayout(row)
        return g

    # ========================================================================================= prediction
    def _prompt(self) -> Prompt:
        if self.prompts is None or self.image_layer is None:
            return Prompt()
        pts = np.asarray(self.prompts.data, dtype=float)
        lab = np.asarray(self.prompts.features["label"]).astype(int) if len(pts) else np.zeros(0, int)
        if self._pending_points:
            pts = np.concatenate([pts.reshape(-1, self.prompts.ndim), [c for c, _ in self._pending_points]])
            lab = np.concatenate([lab, [int(p) for _, p in self._pending_points]])
        if self._plane and len(pts):
            keep = np.round(pts[:, 0]) == self._plane[0]
            pts, lab = pts[keep], lab[keep]
        rect = None
        if self.box is not None and len(self.box.data):
            rects = [d for d, t in zip(self.box.data, self.box.shape_type) if t == "rectangle"]
            if rects:
                rect = rects[-1]
        return Prompt.from_layers(pts, lab == 1, rect, image_hw=self.spatial_shape()[-2:])

    def _request_preview(self, refine: bool) -> int | None:
        prompt = self._prompt()
        if prompt.empty:
            self.worker.cancel("preview")
            self._clear_preview()
            return None
        mask_input = None
        if refine and self.candidates is not None and self.candidates_plane == self._plane \
                and len(prompt.points) > 1:
            mask_input = self.candidates.current_lowres  # the previous mask, fed back when refining
        return self._submit_prediction(prompt, mask_input, hover=False)

    def _zoom_may_apply(self) -> bool:
        """Whether the predictor may refine by zooming in on this image (large images only)."""
        size = getattr(self.session.predictor, "image_size", None)
        return bool(self.session.zoom_refine and size and max(self.spatial_shape()[-2:]) > 2 * size)

    def _submit_prediction(self, prompt: Prompt, mask_input, hover: bool, stage: str = "first",
                           t_submit: float | None = None, first=None) -> int:
        """Predict ``prompt`` on the worker and show it. On large images with zoom-in refinement on, in two stages:
        the full-view mask first (decoder only: shown within milliseconds), then the zoom-refined one (a crop
        encoded at the model's resolution, from the ``first`` result: its decode is not repeated), which replaces
        it unless a newer prompt came in meanwhile."""
        key, get, session, plane = self._embedding_key(), self._image_getter(), self.session, self._plane
        t_submit = time.perf_counter() if t_submit is None else t_submit
        two_stage = stage == "first" and self._zoom_may_apply()
        zoom = False if two_stage else None  # None: the session's setting
        holder: dict = {}

        def run():
            t0 = time.perf_counter()
            if stage == "refine":
                r = session.zoom_in(key, get, prompt, first, mask_input, refine=False if hover else None)
                if r is None:
                    return None, time.perf_counter() - t0, False, None  # zooming does not apply: the mask stays
            else:
                # a hover preview follows the mouse: the model's mask, refined once the user clicks
                r = session.predict(key, get, prompt, mask_input=mask_input, zoom_refine=zoom,
                                    refine=False if hover else None)
            cands = Candidates.from_result(r)
            cands.mask  # noqa: B018 - the best mask is upsampled here, on the worker; others only when cycled to
            # the predictor says whether zooming would apply (an object small in the full view); unknown: try
            return cands, time.perf_counter() - t0, bool(getattr(r, "zoomable", True)), r

        def done(res):
            cands, dt, zoomable, r = res
            if hover and not self._prompt().empty:
                return  # a click arrived meanwhile: its own request will show
            if cands is not None:
                prev = self.candidates
                if stage == "refine" and prev is not None and prev.index < len(cands):
                    cands.index = prev.index  # keep the candidate the user cycled to
                self.candidates = cands
                self.candidates_plane = plane
                self._timing["predict" if stage == "first" else "refine"] = dt
                self._show_candidate(holder.get("seq", 0))
            what = "click" if not hover else "hover"
            self._timing[f"{what}_to_preview" if stage == "first" else f"{what}_to_refined"] = \
                time.perf_counter() - t_submit
            # refine only the newest request: a newer one (the mouse moved on) would be replaced by this refinement
            if two_stage and zoomable and self.worker.is_current(holder.get("seq", 0), "preview", strict=True):
                self._submit_prediction(prompt, mask_input, hover, stage="refine", t_submit=t_submit, first=r)

        holder["seq"] = seq = self.worker.submit("preview", run, strict=not hover, on_done=done,
                                                 on_error=self._predict_error)
        if stage == "refine":
            return seq
        if not hover and self.device_session is not None:
            self._request_device(prompt)  # after the float preview: the float mask is never delayed by it
        return seq

    def _predict_error(self, exc):
        self.mask_label.setText(f"<span style='color:#e55'>prediction failed: {exc}</span>")
        self._notify(f"UltraTinySAM: prediction failed: {exc}")

    def _show_candidate(self, seq: int = 0):
        c = self.candidates
        if c is None or self.preview_buffer is None:
            return
        t0 = time.perf_counter()
        region = self.preview_buffer.show(c.mask, self.candidates_plane)
        if region is not None:
            refresh_labels_region(self.preview, region)  # only the changed region's texture
        self._timing["preview_update"] = time.perf_counter() - t0
        area = int(c.mask.sum())
        self.mask_label.setText(f"{c.describe()}  ·  {area} px" if area else f"{c.describe()}  ·  empty")
        self.preview_updated.emit(seq)
        if self._pending_points:
            self._flush_points_after_draw()

    def _flush_points_after_draw(self):
        """Add the pending points once the canvas has drawn the new preview, so that the mask reaches the screen
        before napari's Points.add runs (the flush timer still adds them after POINT_FLUSH_MS at most)."""
        draw = canvas_draw_event(self.viewer)
        if draw is None:
            QTimer.singleShot(0, self.flush_points)
            return
        if self._flush_on_draw is not None:
            return  # already waiting for the next draw

        def once(event):
            draw.disconnect(once)
            self._flush_on_draw = None
            if not self._closed:
                QTimer.singleShot(0, self.flush_points)  # after this paint has finished

        self._flush_on_draw = once
        draw.connect(once)

    def cycle_mask(self):
        """Next candidate mask (key M), best-scored first."""
        if self.candidates is None or len(self.candidates) < 2:
            return
        self.candidates.cycle()
        self._show_candidate()

    def _clear_preview(self):
        self.worker.cancel("device")
        self._clear_device_preview()
        self.candidates = None
        self._last_hover_px = None
        region = None if self.preview_buffer is None else self.preview_buffer.clear()
        if region is not None:
            refresh_labels_region(self.preview, region)
        self.mask_label.setText("no preview")
        self.preview_updated.emit(0)

    def _clear_prompt_layers(self):
        self._pending_points.clear()
        self._flush_timer.stop()
        self._suspend += 1
        try:
            if self.prompts is not None and len(self.prompts.data):
                self.prompts.data = np.zeros((0, self.prompts.ndim))
            if self.box is not None and len(self.box.data):
                self.box.data = []
        finally:
            self._suspend -= 1

    def clear_prompts(self):
        """Esc: drop prompts and preview, commit nothing."""
        self.worker.cancel("preview")
        self._clear_prompt_layers()
        self._clear_preview()
