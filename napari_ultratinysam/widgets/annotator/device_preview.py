"""The IMX500 device-faithful preview: the quantized graph's mask (cyan outline) beside the float one."""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton

from napari_ultratinysam.annotation import Candidates, PredictorSession, PreviewBuffer, Prompt
from napari_ultratinysam.evaluation.metrics import agreement_iou

DEVICE_PREVIEW = "preview (IMX500)"
DEVICE_RGBA = (0.0, 0.9, 1.0, 1.0)


class DevicePreviewMixin:
    """Part of AnnotatorWidget: the IMX500 rows of the Model box and the device preview layer."""

    def _add_device_rows(self, f: QFormLayout) -> None:
        drow = QHBoxLayout()
        self.device_edit = QLineEdit()
        self.device_edit.setPlaceholderText("IMX500 export folder or quantized .onnx")
        dbrowse = QPushButton("...")
        dbrowse.setMaximumWidth(30)
        dbrowse.clicked.connect(self._browse_device)
        drow.addWidget(self.device_edit)
        drow.addWidget(dbrowse)
        f.addRow("IMX500", drow)
        self.device_check = QCheckBox("IMX500 preview: the quantized model's mask too (cyan outline)")
        self.device_check.setToolTip(
            "Runs the quantized IMX500 graph (utsam export-imx500 / Export to IMX500) on each click or box the way "
            "the camera does: the prompt is baked into the graph, so the ROI is moved onto your first positive "
            "click (or box). Shows its mask as a cyan outline and its IoU with the float mask.")
        self.device_check.toggled.connect(self.set_device_preview)
        f.addRow(self.device_check)
        self.device_label = QLabel("")
        self.device_label.setWordWrap(True)
        f.addRow(self.device_label)

    def _browse_device(self):
        path = QFileDialog.getExistingDirectory(self, "IMX500 export folder (utsam export-imx500 -o DIR)")
        if path:
            self.device_edit.setText(path)

    def set_device_preview(self, on: bool) -> int | None:
        """Turn the IMX500 device-faithful preview on (loads the quantized graph off the GUI thread) or off."""
        self.worker.cancel("device")
        if not on:
            self.device_session = None
            self._remove_device_layer()
            self.device_label.setText("")
            return None
        path = self.device_edit.text().strip()
        self.device_label.setText(f"loading IMX500 graph {path} ...")
        loader = self.device_loader

        def done(predictor):
            self.device_session = PredictorSession(predictor)
            name = getattr(getattr(predictor, "prompt", None), "mode", None)
            self.device_label.setText(f"IMX500 graph loaded{f' (prompt baked in: {name})' if name else ''}; "
                                      "click or draw a box")
            self._ensure_device_layer()
            if not self._prompt().empty:
                self._request_device(self._prompt())

        def failed(exc):
            self.device_label.setText(f"<span style='color:#e55'>IMX500 preview: {exc}</span>")
            self.device_check.blockSignals(True)
            self.device_check.setChecked(False)
            self.device_check.blockSignals(False)

        return self.worker.submit("device", lambda: loader(path), on_done=done, on_error=failed)

    def _ensure_device_layer(self):
        if self.image_layer is None:
            return
        shape = self.spatial_shape()
        if self.device_preview is not None and self.device_preview.data.shape == shape:
            return
        self._remove_device_layer()
        from napari.utils.colormaps import DirectLabelColormap

        self._suspend += 1
        try:
            self.device_preview = self.viewer.add_labels(
                np.zeros(shape, np.uint8), name=DEVICE_PREVIEW, opacity=0.9, blending="translucent",
                colormap=DirectLabelColormap(color_dict={0: (0, 0, 0, 0), 1: DEVICE_RGBA, None: DEVICE_RGBA}),
                **self._layer_kwargs())
            self.device_preview.contour = max(1, int(max(shape[-2:]) / 400))
            self.device_preview.editable = False
            self.device_buffer = PreviewBuffer(self.device_preview.data)
            if self.prompts is not None:  # keep the prompts layer active for clicks
                self.viewer.layers.selection.active = self.prompts
        finally:
            self._suspend -= 1

    def _remove_device_layer(self):
        layer, self.device_preview, self.device_buffer = self.device_preview, None, None
        if layer is not None and layer in self.viewer.layers:
            self._suspend += 1
            try:
                self.viewer.layers.remove(layer)
            finally:
                self._suspend -= 1

    def _request_device(self, prompt: Prompt) -> int | None:
        """The device-faithful mask for ``prompt`` (clicks and boxes, never hover), on the worker."""
        if self.device_session is None or self.image_layer is None:
            return None
        self._ensure_device_layer()
        key, get, session, plane = self._embedding_key(), self._image_getter(), self.device_session, self._plane

        def run():
            cands = Candidates.from_result(session.predict(key, get, prompt))
            return cands.mask, float(cands.score)

        def done(res):
            mask, score = res
            if self.device_buffer is None:
                return
            if self.device_buffer.show(mask, plane) is not None:
                self.device_preview.refresh()
            text = f"IMX500 (quantized): score {score:.3f}, {int(mask.sum())} px"
            c = self.candidates
            if c is not None and self.candidates_plane == plane:
                text += f", IoU with the float mask {agreement_iou(mask, c.mask):.3f}"
            self.device_label.setText(text)
            self.device_updated.emit(int(mask.sum()))

        def failed(exc):
            self._clear_device_preview()
            self.device_label.setText(f"<span style='color:#e55'>IMX500 preview: {exc}</span>")

        return self.worker.submit("device", run, on_done=done, on_error=failed)

    def _clear_device_preview(self):
        if self.device_buffer is not None and self.device_buffer.clear() is not None:
            self.device_preview.refresh()
