"""Mouse and keyboard: clicks and hover on the prompts layer, the box, and the viewer's key bindings."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from napari_ultratinysam.annotation import Prompt, inside
from napari_ultratinysam.widgets.annotator.layers import NEGATIVE_COLOR, POSITIVE_COLOR

POINT_FLUSH_MS = 120  # a clicked point reaches the prompts layer after its preview is drawn, or after this at most
DRAG_PIXELS = 4  # a press that moves further than this (canvas pixels) is a pan, not a click

SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("Left click", "positive point (prompts layer selected)"),
    ("Right click / Ctrl+click / Shift+click", "negative point"),
    ("Alt+click", "select the object under the cursor"),
    ("Drag", "pan (the point of that press is taken back)"),
    ("B", "draw a box (then the prompts layer is selected again)"),
    ("M", "next candidate mask (best first)"),
    ("C", "commit the preview as a new object of the selected class"),
    ("Esc", "clear prompts without committing"),
    ("Ctrl+Z / Ctrl+Shift+Z", "undo / redo commit, delete, re-class"),
    ("H", "hover preview on/off"),
    ("Shift+P", "propagate the preview or the selected object through the stack (one undo step)"),
    ("Y / N", "accept (selected class) / reject the proposal under the cursor (after Propose objects)"),
    ("Shift+Y", "accept every open proposal (one undo step)"),
)
SHORTCUT_HELP = (
    "<b>Shortcuts</b> (with the <i>prompts</i> layer selected; with <i>annotations</i> selected napari's own "
    "brush keys and Ctrl+Z apply)<table>"
    + "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in SHORTCUTS)
    + "</table>"
)


class InputMixin:
    """Part of AnnotatorWidget: mouse callbacks of the prompts and box layers, and the key bindings."""

    # ======================================================================================= mouse: prompts
    def _event_to_pixel(self, position) -> tuple[tuple, float, float] | None:
        """World position -> (plane, row, col) in image pixels, or None outside the image."""
        if self.image_layer is None:
            return None
        d = np.asarray(self.image_layer.world_to_data(position), dtype=float)
        shape = self.spatial_shape()
        rc = d[-2:]
        if not inside(rc, shape[-2:]):
            return None
        return self._plane, float(rc[0]), float(rc[1])

    def _on_mouse_drag(self, layer, event):
        """Mouse press on the prompts layer (napari drag callback): a point now; taken back if it turns into a pan."""
        if layer.mode != "pan_zoom" or event.type != "mouse_press":
            return
        idx = self.handle_click(event.position, event.button, event.modifiers)
        start = np.asarray(event.pos, dtype=float)
        yield
        while event.type == "mouse_move":
            if idx is not None and np.hypot(*(np.asarray(event.pos, dtype=float) - start)) > DRAG_PIXELS:
                self._remove_point(idx)
                idx = None
            yield

    def handle_click(self, position, button: int = 1, modifiers=()) -> int | None:
        """The click path: world position + mouse button + modifiers -> a prompt point (or an object pick).

        Returns the index of the point added, or None."""
        mods = {str(getattr(m, "name", m)) for m in modifiers}
        px = self._event_to_pixel(position)
        if px is None:
            return None
        plane, r, c = px
        if "Alt" in mods:
            if self.model is not None:
                self.select_object(self.model.object_at(plane, int(round(r)), int(round(c))))
            return None
        positive = button == 1 and not ({"Control", "Shift", "Meta"} & mods)
        return self.add_point(r, c, positive)

    def add_point(self, row: float, col: float, positive: bool = True) -> int:
        """Add a prompt point at image pixel (row, col) on the current plane; the preview follows."""
        coord = np.array([*self._plane, row, col], dtype=float)
        self._pending_points.append((coord, bool(positive)))
        self._request_preview(refine=True)  # the prompt includes the pending point
        self._flush_timer.start(POINT_FLUSH_MS)
        return len(self.prompts.data) + len(self._pending_points) - 1

    def flush_points(self):
        """Add the clicked points still pending to the prompts layer (no new prediction: theirs is under way)."""
        self._flush_timer.stop()
        pending, self._pending_points = self._pending_points, []
        if not pending or self.prompts is None:
            return
        self._suspend += 1
        try:
            for coord, positive in pending:
                if not positive:
                    self.prompts.feature_defaults = {"label": 0}
                self.prompts.add(coord[None])
                if not positive:
                    self.prompts.feature_defaults = {"label": 1}
            if not all(pos for _, pos in pending):
                self._color_prompts()  # new points are drawn in the positive colour by default
        finally:
            self._suspend -= 1

    def _remove_point(self, idx: int):
        n = 0 if self.prompts is None else len(self.prompts.data)
        if 0 <= idx - n < len(self._pending_points):  # not in the layer yet: forget it and predict again
            del self._pending_points[idx - n]
            self._request_preview(refine=False)
            return
        if self.prompts is not None and idx < len(self.prompts.data):
            self.prompts.selected_data = {idx}
            self.prompts.remove_selected()

    def _on_prompts_data(self, event):
        from napari.layers.base._base_constants import ActionType

        action = getattr(event, "action", None)
        if action not in (ActionType.ADDED, ActionType.REMOVED, ActionType.CHANGED) or self._suspend:
            return
        self._color_prompts()
        self._request_preview(refine=action == ActionType.ADDED)

    def _color_prompts(self):
        n = len(self.prompts.data)
        if n:
            lab = np.asarray(self.prompts.features["label"]).astype(int)
            cols = np.where(lab[:, None] == 1, POSITIVE_COLOR, NEGATIVE_COLOR)
            self._suspend += 1
            try:
                self.prompts.face_color = cols
            finally:
                self._suspend -= 1

    def _on_mouse_move(self, layer, event):
        """Hover preview: with no prompt yet, the mask under the cursor follows the mouse (throttled)."""
        if not self.hover_check.isChecked() or self.image_layer is None or layer.mode != "pan_zoom":
            return
        self.handle_hover(event.position)

    def handle_hover(self, position) -> int | None:
        if not self._prompt().empty:
            return None
        px = self._event_to_pixel(position)
        if px is None:
            self._last_hover_px = None
            if self.preview_buffer is not None and self.preview_buffer.showing:
                self.worker.cancel("preview")
                self._clear_preview()
            return None
        plane, r, c = px
        key_px = (plane, int(r), int(c))
        if key_px == self._last_hover_px:
            return None
        self._last_hover_px = key_px
        prompt = Prompt(np.array([[c, r]], np.float32), np.array([1]))
        return self._submit_prediction(prompt, None, hover=True)

    # ============================================================================================== box
    def start_box(self):
        """Activate the box layer in rectangle mode (key B)."""
        if self.box is None:
            return
        self.viewer.layers.selection.active = self.box
        self.box.mode = "add_rectangle"

    def _on_box_data(self, event):
        from napari.layers.base._base_constants import ActionType

        action = getattr(event, "action", None)
        if action not in (ActionType.ADDED, ActionType.REMOVED, ActionType.CHANGED) or self._suspend:
            return
        self._request_preview(refine=False)
        if action == ActionType.ADDED:
            QTimer.singleShot(0, self._after_box_drawn)  # not inside napari's own drawing code

    def _after_box_drawn(self):
        if self.box is None:
            return
        n = len(self.box.data)
        if n > 1:  # one box per object: keep the newest
            self._suspend += 1
            try:
                self.box.selected_data = set(range(n - 1))
                self.box.remove_selected()
            finally:
                self._suspend -= 1
        if self.prompts is not None and self.box.mode == "add_rectangle":
            self.box.mode = "pan_zoom"
            self.viewer.layers.selection.active = self.prompts

    def set_box(self, x0: float, y0: float, x1: float, y1: float):
        """Programmatic box in image pixels (x, y) -> the same path as a drawn rectangle."""
        rc = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)
        if self._plane:
            rc = np.concatenate([np.full((4, 1), self._plane[0], float), rc], axis=1)
        self.box.add_rectangles(rc)

    # ============================================================================================ keys
    def _bind_keys(self):
        keys = {
            "c": lambda v: self.commit(),
            "m": lambda v: self.cycle_mask(),
            "b": lambda v: self.start_box(),
            "h": lambda v: self.hover_check.toggle(),
            "Escape": lambda v: self.clear_prompts(),
            "Control-z": lambda v: self.undo(),
            "Control-Shift-z": lambda v: self.redo(),
            "Shift-P": lambda v: self.propagate_object(),
            "y": lambda v: self._proposal_under_cursor(accept=True),
            "n": lambda v: self._proposal_under_cursor(accept=False),
            "Shift-Y": lambda v: self.accept_all_proposals(),
        }
        for k, fn in keys.items():
            self.viewer.bind_key(k, fn, overwrite=True)
            self._bound_keys.append(k)

    def _on_hover_toggled(self, on: bool):
        if not on and self._prompt().empty:
            self.worker.cancel("preview")
            self._clear_preview()
