"""The image being annotated and the layers made for it: the Image box, the helper layers (created once per image,
then updated in place), the current plane of a stack, and the embedding of that plane."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QGroupBox, QLabel, QProgressBar, QVBoxLayout

from napari_ultratinysam.annotation import AnnotationModel, PreviewBuffer

PROMPTS, BOX, PREVIEW, ANNOTATIONS = "prompts", "box", "preview", "annotations"
PROPOSALS = "proposals"
POSITIVE_COLOR = (0.1, 0.9, 0.2, 1.0)
NEGATIVE_COLOR = (1.0, 0.15, 0.15, 1.0)
PREVIEW_RGBA = (1.0, 0.85, 0.0, 1.0)


class LayersMixin:
    """Part of AnnotatorWidget: the image layer, the helper layers, planes and embeddings."""

    def _build_image_box(self) -> QGroupBox:
        g = QGroupBox("Image")
        v = QVBoxLayout(g)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("2-D grayscale/RGB image or a 3-D stack (annotated slice by slice)")
        self.layer_combo.activated.connect(lambda _i: self._on_layer_chosen())
        v.addWidget(self.layer_combo)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # indeterminate
        self.busy_bar.setMaximumHeight(10)
        self.busy_bar.setTextVisible(False)
        self.busy_bar.setVisible(False)
        v.addWidget(self.busy_bar)
        self.status_label = QLabel("Choose an image layer.")
        self.status_label.setWordWrap(True)
        v.addWidget(self.status_label)
        return g

    def _image_layers(self):
        from napari.layers import Image

        return [l for l in self.viewer.layers if isinstance(l, Image)]

    def _refresh_layer_choices(self, *_):
        current = self.layer_combo.currentText()
        names = [l.name for l in self._image_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.image_layer is None and names:
            # not inside napari's own "inserted" handling: our helper layers are added right after it
            QTimer.singleShot(0, self._auto_choose)

    def _auto_choose(self):
        if self.image_layer is None and not self._closed:
            self._on_layer_chosen()

    def _on_layer_removed(self, event):
        layer = event.value
        if layer is self.image_layer:
            self.worker.cancel("preview")
            self.worker.cancel("embed")
            self.worker.cancel("propagate")
            self.worker.cancel("propose")
            self.image_layer = None
            self.status_label.setText("Choose an image layer.")
        for name in (PROMPTS, BOX, PREVIEW, ANNOTATIONS):
            if getattr(self, name) is layer:
                setattr(self, name, None)
                if name == PREVIEW:
                    self.preview_buffer = None
                if name == ANNOTATIONS:
                    self.model = None
        if layer is self.device_preview:
            self.device_preview, self.device_buffer = None, None
        if layer is self._project_annotations:
            self._project_annotations = None
        if layer is self.proposal_layer:
            self.proposal_layer, self.proposal_set = None, None
            self._update_buttons()
        self._refresh_layer_choices()

    def _on_layer_chosen(self):
        name = self.layer_combo.currentText()
        layer = next((l for l in self._image_layers() if l.name == name), None)
        if layer is not None:
            self.set_image_layer(layer)

    def spatial_shape(self, layer=None) -> tuple[int, ...]:
        layer = layer or self.image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        return tuple(data.shape[:-1] if layer.rgb else data.shape)

    def set_image_layer(self, layer, key_base=None) -> None:
        """Annotate ``layer``: (re)create the helper layers if needed and start computing the embedding."""
        shape = self.spatial_shape(layer)
        if len(shape) not in (2, 3):
            self.status_label.setText(f"{layer.name}: expected a 2-D image or a 3-D stack, got shape {shape}")
            return
        if self.layer_combo.currentText() != layer.name:
            self.layer_combo.setCurrentText(layer.name)
        self.worker.cancel("preview")
        self.worker.cancel("propagate")
        self.clear_proposals()
        self.image_layer = layer
        self._image_token += 1
        self._key_base = key_base
        self._watch_image_data(layer)
        self._plane = self._current_plane()
        # the embedding (and on first use the model load) runs on the worker thread while napari makes the other
        # layers; not during the first one: that is the longest, and the load's Python parts would slow it down
        embedding_line = []

        def request():
            self._request_embedding()
            embedding_line.append(self.status_label.text())

        self._ensure_layers(after_first=request)
        self.status_label.setText(embedding_line[0])  # the layer steps' lines are done
        self._clear_prompt_layers()
        self._clear_preview()
        self.viewer.layers.selection.active = self.prompts

    def _layer_kwargs(self):
        il = self.image_layer
        return {"scale": il.scale, "translate": il.translate}

    def _ensure_layers(self, after_first) -> None:
        """Make the helper layers this image needs; ``after_first()`` runs once, when the annotations layer exists
        (made, adopted or kept), before the other layers are made."""
        shape = self.spatial_shape()
        ndim = len(shape)
        kw = self._layer_kwargs()
        self._suspend += 1
        try:
            if self.annotations is None or self.annotations.data.shape != shape:
                own = self._project_annotations
                if self._in_project() and own is not None and own in self.viewer.layers and own.ndim == ndim:
                    # a project's annotations live on disk: its one layer takes each image's size in turn
                    own.data = np.zeros(shape, np.uint32)
                    own.scale, own.translate = kw["scale"], kw["translate"]
                    self.annotations = own
                else:
                    # a project never adopts another layer: go_to_image overwrites what it holds
                    found = None if self._in_project() else self._reusable_annotations(shape)
                    if found is None:
                        self._layer_step(ANNOTATIONS)
                    self.annotations = found or self.viewer.add_labels(
                        np.zeros(shape, np.uint32), name=ANNOTATIONS, opacity=0.55, **kw)
                for emitter, slot in ((self.annotations.events.selected_label, self._on_labels_selected),
                                      (self.annotations.events.paint, self._on_labels_painted)):
                    emitter.disconnect(slot)  # connected once, however often the layer is adopted again
                    emitter.connect(slot)
                self.model = AnnotationModel(self.annotations.data, self._classes)
            after_first()
            if self.preview is not None and self.preview.data.shape != shape and self.preview.ndim == ndim:
                self.preview.data = np.zeros(shape, np.uint8)  # resized in place: no layer churn between images
                self.preview.scale, self.preview.translate = kw["scale"], kw["translate"]
                self.preview_buffer = PreviewBuffer(self.preview.data)
            if self.preview is None or self.preview.data.shape != shape:
                if self.preview is not None:
                    self.viewer.layers.remove(self.preview)
                from napari.utils.colormaps import DirectLabelColormap

                self._layer_step(PREVIEW)
                self.preview = self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=PREVIEW, opacity=0.55, blending="translucent",
                    colormap=DirectLabelColormap(color_dict={0: (0, 0, 0, 0), 1: PREVIEW_RGBA, None: PREVIEW_RGBA}),
                    **kw)
                self.preview.editable = False
                self.preview_buffer = PreviewBuffer(self.preview.data)
            if self.box is None or self.box.ndim != ndim:
                if self.box is not None:
                    self.viewer.layers.remove(self.box)
                self._layer_step(BOX)
                self.box = self.viewer.add_shapes(
                    ndim=ndim, name=BOX, edge_color="#00e5ff", face_color="transparent",
                    edge_width=max(1.0, max(shape[-2:]) / 300), **kw)
                self.box.events.data.connect(self._on_box_data)
            if self.prompts is None or self.prompts.ndim != ndim:
                if self.prompts is not None:
                    self.viewer.layers.remove(self.prompts)
                self._layer_step(PROMPTS)
                self.prompts = self.viewer.add_points(
                    np.zeros((0, ndim)), name=PROMPTS, features={"label": np.zeros(0, np.int64)},
                    size=max(5.0, max(shape[-2:]) / 60), border_color="white", border_width=0.15,
                    face_color=np.array(POSITIVE_COLOR), **kw)
                self.prompts.feature_defaults = {"label": 1}
                self.prompts.events.data.connect(self._on_prompts_data)
                self.prompts.mouse_drag_callbacks.append(self._on_mouse_drag)
                self.prompts.mouse_move_callbacks.append(self._on_mouse_move)
            self.prompts.mode = "pan_zoom"
        finally:
            self._suspend -= 1
        self._update_annotation_colors()
        self._update_objects_label()

    def _layer_step(self, name: str) -> None:
        """Say which helper layer napari is making (a few hundred ms each on the GUI thread, over a second for
        the four on a first start), painted at once: the event loop does not run until they are all made."""
        self.status_label.setText(f"adding the layer '{name}' ...")
        self.status_label.repaint()

    def _in_project(self) -> bool:
        """Whether the image being annotated is the open project's current image."""
        kb = self._key_base
        return self.project is not None and isinstance(kb, tuple) and kb[:1] == ("project",)

    def _reusable_annotations(self, shape):
        """An annotations layer already in the viewer for an image of ``shape`` (one per size outside projects:
        their annotations exist nowhere else), never the project's own layer."""
        from napari.layers import Labels

        for l in self.viewer.layers:
            if isinstance(l, Labels) and l is not self._project_annotations \
                    and (l.name == ANNOTATIONS or l.name.startswith(ANNOTATIONS + " [")) \
                    and isinstance(l.data, np.ndarray) and l.data.shape == shape and l.data.dtype.kind in "ui":
                return l
        return None

    # ============================================================================================== planes
    def _current_plane(self) -> tuple:
        if self.image_layer is None or len(self.spatial_shape()) == 2:
            return ()
        z = self.image_layer.world_to_data(self.viewer.dims.point)[0]
        n = self.spatial_shape()[0]
        return (int(np.clip(np.round(z), 0, n - 1)),)

    def _on_dims_step(self, *_):
        if self.image_layer is None:
            return
        plane = self._current_plane()
        if plane != self._plane:
            self._plane = plane
            self.worker.cancel("preview")
            self.clear_proposals()  # proposals belong to the slice they were made on
            self._clear_prompt_layers()
            self._clear_preview()
            self._request_embedding()

    def _embedding_key(self, plane: tuple | None = None):
        """The predictor's cache key of a plane (default: the current one): which layer, which version of its data,
        which slice, which contrast. Cheap: the predictor never hashes the pixels."""
        il = self.image_layer
        contrast = () if (il.rgb or _dtype(il) == np.uint8) else tuple(float(c) for c in il.contrast_limits)
        base = self._key_base or self._image_token
        if self._data_version:  # the layer's data was replaced since it was chosen
            base = (base, "data", self._data_version)
        return (base, self._plane if plane is None else plane, contrast)

    def _watch_image_data(self, layer) -> None:
        if self._data_layer is not None:
            self._data_layer.events.data.disconnect(self._on_image_data)
        self._data_layer = layer
        self._data_version = 0
        layer.events.data.connect(self._on_image_data)

    def _on_image_data(self, event=None):
        """New pixels under the same layer: later requests use new embedding keys (computed on next use)."""
        self._data_version += 1
        self.worker.cancel("propagate")
        self.clear_proposals()

    def _image_getter(self, plane: tuple | None = None) -> Callable[[], np.ndarray]:
        """A function that reads a plane (default: the current one; called on the worker thread; works for dask
        arrays too)."""
        il, plane = self.image_layer, (self._plane if plane is None else plane)
        data = il.data[0] if il.multiscale else il.data
        contrast = None if (il.rgb or _dtype(il) == np.uint8) else tuple(float(c) for c in il.contrast_limits)

        def get() -> np.ndarray:
            img = np.asarray(data[plane] if plane else data)
            if contrast is not None:  # what the user sees: the layer's contrast limits, as floats in [0, 1]
                lo, hi = contrast
                img = np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
            return img

        return get

    def _request_embedding(self) -> int | None:
        if self.image_layer is None:
            return None
        key, get, session = self._embedding_key(), self._image_getter(), self.session
        name = self.image_layer.name + (f" [slice {self._plane[0]}]" if self._plane else "")
        self.status_label.setText(f"computing the embedding of {name} ...")
        first_use = session.predictor is None
        if first_use:
            self.model_label.setText(f"loading {session.spec.describe()} ...")

        def run():
            t0 = time.perf_counter()
            loaded = session.predictor is None
            session.ensure_predictor()  # the model itself, on first use
            t1 = time.perf_counter()
            computed = session.ensure_image(key, get)
            return computed, time.perf_counter() - t1, (t1 - t0) if loaded else None

        def done(res):
            computed, dt, load_s = res
            self._timing["embed"] = dt
            if load_s is not None:
                spec = session.loaded_spec or session.spec
                self.model_label.setText(f"in use: {spec.describe()} (loaded in {load_s * 1e3:.0f} ms)")
            what = f"embedding {dt * 1e3:.0f} ms" if computed else "cached"
            self.status_label.setText(f"{name}: ready ({what}) - click to segment")
            self.embedding_ready.emit(key)

        seq = self.worker.submit("embed", run, on_done=done, on_error=self._embed_error)
        if first_use:  # the model itself is built inside this request
            self._watch_slow(seq, session.spec)
        return seq

    def _embed_error(self, exc):
        self.status_label.setText(f"<span style='color:#e55'>embedding failed: {exc}</span>")
        self._notify(f"UltraTinySAM: embedding failed: {exc}")


def _dtype(layer):
    data = layer.data[0] if layer.multiscale else layer.data
    return np.dtype(data.dtype)
