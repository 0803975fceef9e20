"""The two places where the annotator reaches into napari's private API for speed, each with a public fallback:

* :func:`refresh_labels_region`: show a changed region of a Labels layer by updating only that part of its texture
  (what napari's own paint brush does), instead of ``layer.refresh()`` re-slicing and re-uploading the whole image.
* :func:`canvas_draw_event`: the vispy canvas' draw event, to run work right after the next frame is drawn.
"""
from __future__ import annotations

import numpy as np


def canvas_draw_event(viewer):
    """The draw event of napari's vispy canvas, or None where it is not reachable."""
    try:
        return viewer.window._qt_viewer.canvas._scene_canvas.events.draw
    except AttributeError:
        return None


def refresh_labels_region(layer, region: tuple) -> bool:
    """After ``layer.data[region]`` was written in place, update what is displayed of that region only.

    ``region`` indexes every data axis (ints for the leading, not displayed axes; slices for the two displayed
    ones). Returns True when the partial update ran, False when it fell back to ``layer.refresh()`` (a contour,
    a multiscale or non-NumPy layer, a 3-D view, a region on a plane not displayed, or a napari without the
    private methods used here).
    """
    try:
        ok = (isinstance(layer.data, np.ndarray) and not layer.multiscale and layer.contour == 0
              and layer._slicing_state.loaded and len(region) == layer.data.ndim)
        displayed = list(layer._slice_input.displayed) if ok else []
        ok = ok and displayed == [layer.data.ndim - 2, layer.data.ndim - 1]
        if ok and region[:-2]:  # an n-D layer: the region's plane must be the one displayed
            shown = layer._get_pt_not_disp()
            ok = all(int(shown.get(ax, -1)) == int(i) for ax, i in enumerate(region[:-2]))
        if ok:
            rs, cs = region[-2:]
            view, raw = layer._slice.image.view, layer._slice.image.raw
            ok = view.shape == raw.shape == layer.data.shape[-2:]
        if not ok:
            layer.refresh()
            return False
        view[rs, cs] = layer.colormap._data_to_texture(raw[rs, cs])
        full = tuple(slice(int(i), int(i) + 1) for i in region[:-2]) + (rs, cs)
        layer._updated_slice = full
        layer._partial_labels_refresh()
        return True
    except (AttributeError, TypeError, ValueError, IndexError):
        layer.refresh()
        return False
