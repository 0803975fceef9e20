"""The Model box: weights, backend, zoom and flip switches, and loading a model off the GUI thread."""
from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from napari_ultratinysam.annotation import BACKENDS, PredictorSpec, model_status_text

SLOW_NOTICE_MS = 1000  # a model build still running after this gets a message (the first int8 build is long)


class ModelPickerMixin:
    """Part of AnnotatorWidget: the model picker (the session and the worker are the widget's)."""

    def _build_model_box(self) -> QGroupBox:
        g = QGroupBox("Model")
        f = QFormLayout(g)
        self.source_combo = QComboBox()
        self.source_combo.addItem("Default weights", "default")
        self.source_combo.addItem("Checkpoint file", "checkpoint")
        self.source_combo.addItem("ONNX folder", "onnx")
        f.addRow("Weights", self.source_combo)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("checkpoint (.safetensors) or ONNX folder")
        self.browse_btn = QPushButton("...")
        self.browse_btn.setMaximumWidth(30)
        self.browse_btn.clicked.connect(self._browse_model)
        row.addWidget(self.path_edit)
        row.addWidget(self.browse_btn)
        f.addRow("Path", row)
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.backend_combo.setCurrentText(self.session.spec.backend)  # the capability check's choice
        self.backend_combo.setToolTip("torch: the model as trained; onnxruntime: the same graph, faster on a CPU; "
                                      "onnxruntime int8: int8 decoder (made once, then cached), masks within "
                                      "~0.5 % IoU of float; openvino bf16: CPUs with AMX / AVX512-BF16, ~2x "
                                      "faster encoder and decoder, mIoU as float's")
        f.addRow("Backend", self.backend_combo)
        self.zoom_check = QCheckBox("zoom-in refinement (small objects in big images)")
        self.zoom_check.setChecked(True)
        self.zoom_check.toggled.connect(self._on_zoom_toggled)
        f.addRow(self.zoom_check)
        self.flip_check = QCheckBox("flip averaging (the mirror image too: 2x time)")
        self.flip_check.setToolTip("every mask is averaged over the image and its mirror image; measured on 7 "
                                   "sets: mIoU after 3 clicks 0.627 -> 0.640, NoC@90 18.1 -> 17.4, the first "
                                   "click about the same; the encoder and each click take twice as long")
        self.flip_check.toggled.connect(self._on_flip_toggled)
        f.addRow(self.flip_check)
        self.load_btn = QPushButton("Load model")
        self.load_btn.setToolTip("load the weights and backend chosen above (a Backend change alone loads at once)")
        self.load_btn.clicked.connect(lambda: self.load_model())
        f.addRow(self.load_btn)
        self._add_device_rows(f)  # the IMX500 preview's rows sit in this box
        self._given_predictor = self.session.predictor is not None
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        f.addRow(self.model_label)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self._on_source_changed()
        self.backend_combo.currentIndexChanged.connect(self._on_backend_changed)
        self.path_edit.textChanged.connect(lambda _t: self._update_model_label())
        self._update_model_label()
        return g

    def _on_source_changed(self, *_):
        src = self.source_combo.currentData()
        self.path_edit.setEnabled(src != "default")
        self.browse_btn.setEnabled(src != "default")
        if src == "onnx":
            self.backend_combo.setCurrentText("onnxruntime")
        if hasattr(self, "model_label"):
            self._update_model_label()

    def _on_backend_changed(self, *_):
        """A Backend change applies at once (the model is reloaded off the GUI thread) when the chosen weights can
        be loaded; otherwise the label says what is still in use and that Load model is needed."""
        if self.model_spec().loadable:
            self.load_model(force=False)
        else:
            self._update_model_label()

    def _update_model_label(self):
        if self.worker.is_busy("model"):
            return  # the "loading ..." line stays until the load ends
        self.model_label.setText(model_status_text(self.session.loaded_spec, self.model_spec(),
                                                   given=self._given_predictor))

    def _browse_model(self):
        if self.source_combo.currentData() == "onnx":
            path = QFileDialog.getExistingDirectory(self, "ONNX folder (encoder + decoder)")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "Checkpoints (*.safetensors);;All (*)")
        if path:
            self.path_edit.setText(path)

    def model_spec(self) -> PredictorSpec:
        return PredictorSpec(self.source_combo.currentData(), self.path_edit.text().strip(),
                             self.backend_combo.currentText())

    def load_model(self, force: bool = True) -> int:
        """Load the model chosen in the picker (off the GUI thread); the current image is embedded again.
        ``force=False`` (a Backend change) skips the load when that model is the one in use already."""
        spec = self.model_spec()
        session = self.session
        if session.predictor is None:
            session.spec = spec  # nothing in use yet: a first use already under way loads this choice
        self.model_label.setText(f"loading {spec.describe()} ...")
        self.worker.cancel("preview")

        def run():
            if not force and session.predictor is not None and session.loaded_spec == spec:
                return None
            t0 = time.perf_counter()
            session.load(spec)
            return time.perf_counter() - t0

        def done(dt):
            if dt is None:
                self._update_model_label()
                return
            self.model_label.setText(f"in use: {spec.describe()} (loaded in {dt * 1e3:.0f} ms)")
            self._clear_preview()
            self._request_embedding()

        seq = self.worker.submit("model", run, on_done=done, on_error=self._model_error)
        self._watch_slow(seq, spec)
        return seq

    def _model_error(self, exc: BaseException):
        in_use = self.session.loaded_spec
        still = f"; still in use: {in_use.describe()}" if in_use is not None else ""
        if in_use is not None and self.backend_combo.currentText() != in_use.backend:
            self.backend_combo.blockSignals(True)  # the picker shows the backend actually in use
            self.backend_combo.setCurrentText(in_use.backend)
            self.backend_combo.blockSignals(False)
        self.model_label.setText(f"<span style='color:#e55'>model: {exc}</span>{still}")
        self._notify(f"UltraTinySAM model: {exc}")

    def _watch_slow(self, seq: int, spec: PredictorSpec) -> None:
        """If request ``seq`` (a model build) still runs after ``slow_notice_ms``, say so: the label, a napari
        notification and a busy bar in napari's activity dock (closed when the request ends)."""
        def check():
            if self._closed or not self.worker.is_pending(seq):
                return
            text = (f"building {spec.describe()}: a first start makes its ONNX / int8 graphs (cached for the next "
                    "start); this can take a while ...")
            self.model_label.setText(text)
            self._notify(f"UltraTinySAM: {text}", warning=False)
            if self._slow_progress is None:
                try:
                    from napari.utils import progress

                    self._slow_progress = progress(total=0, desc=f"UltraTinySAM: building {spec.describe()}")
                except Exception:  # noqa: BLE001 - the label and the notification already say it
                    self._slow_progress = None

        QTimer.singleShot(int(self.slow_notice_ms), check)

    def _end_slow_progress(self):
        pbar, self._slow_progress = self._slow_progress, None
        if pbar is not None:
            pbar.close()

    def _on_flip_toggled(self, on: bool):
        self.session.flip_tta = bool(on)  # read by the worker before its next use of the predictor
        if not self._prompt().empty:
            self._request_preview(refine=False)

    def _on_zoom_toggled(self, on: bool):
        self.session.zoom_refine = bool(on)  # a plain attribute, read by the worker before each prediction
        if not self._prompt().empty:
            self._request_preview(refine=False)
