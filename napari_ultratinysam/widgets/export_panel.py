"""The "Export to IMX500" dock widget: collects the user's choices and calls compression.imx500.export_imx500
(the same function `utsam export-imx500` calls) on a background thread, with progress and cancel. And the
annotator's "Export dataset" dialog: a project's annotations -> a dataset folder (the same function
`utsam export-dataset` calls), on a napari worker thread with napari's progress.

The parsing of the forms (``ExportRequest.from_form``, ``annotation.DatasetExportRequest``) is plain Python,
testable without Qt.
"""
from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from qtpy.QtCore import QObject, Qt, QUrl, Signal
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ultratinysam.annotation import DatasetExportRequest, dataset_export_formats
from napari_ultratinysam.core.parsers import parse_box, parse_points
from napari_ultratinysam.widgets.qt_parts import with_browse_button

PROMPT_MODES = ("center-point", "points", "box")


class ExportCancelled(Exception):
    """Raised from the progress callback to stop an export."""


def parse_points_text(text: str) -> list[tuple]:
    """The form's points, 'x,y[,label]; x,y[,label]' (model pixels) -> [(x, y) or (x, y, label)]."""
    return parse_points(text, "points")


def parse_box_text(text: str) -> tuple[float, float, float, float]:
    """The form's box, 'x0,y0,x1,y1' (model pixels)."""
    return parse_box(text, "box")


@dataclass
class ExportRequest:
    out: str
    checkpoint: str | None = None
    calibration: str | None = None
    prompt: str = "center-point"
    points: list | None = None
    box: tuple | None = None
    method: str = "ptq"
    num_images: int = 128
    qat_steps: int = 200
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_form(cls, out: str, checkpoint: str = "", calibration: str = "", prompt: str = "center-point",
                  prompt_text: str = "", method: str = "PTQ", num_images: int = 128,
                  qat_steps: int = 200) -> "ExportRequest":
        if not out.strip():
            raise ValueError("output folder: choose where to write the IMX500 files")
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt: expected one of {', '.join(PROMPT_MODES)}, got {prompt!r}")
        ck = checkpoint.strip() or None
        if ck is not None and not Path(ck).is_file():
            raise ValueError(f"checkpoint {ck}: file not found")
        cal = calibration.strip() or None
        if cal is not None and not Path(cal).exists():
            raise ValueError(f"calibration data {cal}: not found")
        points = parse_points_text(prompt_text) if prompt == "points" else None
        box = parse_box_text(prompt_text) if prompt == "box" else None
        return cls(out.strip(), ck, cal, prompt, points, box, method.lower(), int(num_images), int(qat_steps))

    def kwargs(self) -> dict:
        return {"checkpoint": self.checkpoint, "calibration": self.calibration, "prompt": self.prompt,
                "points": self.points, "box": self.box, "method": self.method, "out": self.out,
                "num_images": self.num_images, "qat_steps": self.qat_steps, **self.extra}


def checkpoint_in_use(viewer) -> str | None:
    """The checkpoint the annotator dock widget has loaded, if there is one (best effort)."""
    try:
        docks = getattr(viewer.window, "dock_widgets", {}) or {}  # public: name -> inner widget
        for w in list(docks.values()):
            w = getattr(w, "native", w)
            spec_fn = getattr(w, "model_spec", None)
            if spec_fn is None:
                continue
            spec = spec_fn()
            if getattr(spec, "source", "") == "checkpoint" and getattr(spec, "path", ""):
                return str(spec.path)
    except Exception:  # noqa: BLE001 - a convenience only
        return None
    return None


class _Bridge(QObject):
    progress = Signal(str, float)
    finished = Signal(object)
    failed = Signal(str)


class ExportPanel(QWidget):
    """Export to IMX500: checkpoint, calibration data, prompt, PTQ/QAT -> OUT/ with packerOut.zip."""

    def __init__(self, napari_viewer=None, export_fn=None):
        super().__init__()
        self.viewer = napari_viewer
        self._export_fn = export_fn  # tests inject a fake; default: compression.imx500.export_imx500
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.result = None
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._bridge.finished.connect(self._on_finished)
        self._bridge.failed.connect(self._on_failed)

        form = QFormLayout()
        self.checkpoint_edit = QLineEdit(checkpoint_in_use(napari_viewer) or "" if napari_viewer else "")
        self.checkpoint_edit.setPlaceholderText("default: the shipped weights")
        form.addRow("Checkpoint", with_browse_button(self.checkpoint_edit, self._browse_checkpoint))
        self.calib_edit = QLineEdit()
        self.calib_edit.setPlaceholderText("default: the bundled sample data")
        form.addRow("Calibration data", with_browse_button(self.calib_edit, self._browse_calibration))
        self.images_spin = QSpinBox()
        self.images_spin.setRange(1, 100000)
        self.images_spin.setValue(128)
        form.addRow("Calibration images", self.images_spin)
        self.prompt_combo = QComboBox()
        self.prompt_combo.addItems(PROMPT_MODES)
        self.prompt_combo.currentTextChanged.connect(self._on_prompt_changed)
        form.addRow("Prompt", self.prompt_combo)
        self.prompt_edit = QLineEdit()
        form.addRow("Points / box", self.prompt_edit)
        self.method_combo = QComboBox()
        self.method_combo.addItems(["PTQ", "QAT"])
        self.method_combo.currentTextChanged.connect(self._on_method_changed)
        form.addRow("Quantization", self.method_combo)
        self.qat_spin = QSpinBox()
        self.qat_spin.setRange(1, 1000000)
        self.qat_spin.setValue(200)
        form.addRow("QAT steps", self.qat_spin)
        self.out_edit = QLineEdit(str(Path.home() / "utsam_imx500"))
        form.addRow("Output folder", with_browse_button(self.out_edit, self._browse_out))

        self.export_btn = QPushButton("Export to IMX500")
        self.export_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_btn)
        buttons.addWidget(self.cancel_btn)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status_label)
        lay.addWidget(self.result_label)
        lay.addStretch(1)
        self._on_prompt_changed(self.prompt_combo.currentText())
        self._on_method_changed(self.method_combo.currentText())

    # ------------------------------------------------------------------------------------------------ form
    def _browse_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_calibration(self):
        path = QFileDialog.getExistingDirectory(self, "Calibration dataset folder")
        if path:
            self.calib_edit.setText(path)

    def _browse_out(self):
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def _on_prompt_changed(self, mode: str):
        self.prompt_edit.setEnabled(mode != "center-point")
        self.prompt_edit.setPlaceholderText({"center-point": "one click at (64, 64)",
                                             "points": "x,y[,label]; x,y ... (model pixels)",
                                             "box": "x0,y0,x1,y1 (model pixels)"}[mode])

    def _on_method_changed(self, method: str):
        self.qat_spin.setEnabled(method == "QAT")

    def request(self) -> ExportRequest:
        return ExportRequest.from_form(self.out_edit.text(), self.checkpoint_edit.text(), self.calib_edit.text(),
                                       self.prompt_combo.currentText(), self.prompt_edit.text(),
                                       self.method_combo.currentText(), self.images_spin.value(),
                                       self.qat_spin.value())

    # ------------------------------------------------------------------------------------------------ run
    def start(self) -> bool:
        """Validate the form and start the export on a background thread; False (and a message) if invalid."""
        if self._thread is not None and self._thread.is_alive():
            return False
        try:
            req = self.request()
        except ValueError as e:
            self.status_label.setText(f"error: {e}")
            return False
        self._cancel.clear()
        self.result = None
        self.export_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.result_label.setText("")
        self.progress_bar.setValue(0)
        self.status_label.setText("starting ...")
        fn = self._export_fn
        if fn is None:
            from napari_ultratinysam.compression.imx500 import export_imx500 as fn

        def progress(message: str, fraction: float | None = None):
            if self._cancel.is_set():
                raise ExportCancelled("export cancelled")
            self._bridge.progress.emit(message, -1.0 if fraction is None else float(fraction))

        def work():
            try:
                res = fn(progress=progress, **req.kwargs())
            except ExportCancelled:
                self._bridge.failed.emit("cancelled")
            except Exception as e:  # noqa: BLE001 - shown in the panel
                from napari_ultratinysam.core.extras import as_missing_extra

                e = as_missing_extra(e) or e  # a missing toolchain: name the extra that brings it
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                self._bridge.failed.emit(msg)
                traceback.print_exc()
            else:
                self._bridge.finished.emit(res)

        self._thread = threading.Thread(target=work, name="utsam-imx500-export", daemon=True)
        self._thread.start()
        return True

    def cancel(self):
        self._cancel.set()
        self.status_label.setText("cancelling ...")

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_progress(self, message: str, fraction: float):
        if fraction >= 0:
            self.progress_bar.setValue(int(1000 * min(1.0, fraction)))
        self.status_label.setText(message)

    def _done(self):
        self.export_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_finished(self, res):
        self._done()
        self.result = res
        self.progress_bar.setValue(1000)
        mem = res.memory
        fits = "fits" if mem.fits else "does NOT fit"
        self.status_label.setText("done")
        self.result_label.setText(f"{fits}: {mem.memory_usage_bytes / 2 ** 20:.2f} MB of "
                                  f"{mem.available_bytes / 2 ** 20:.0f} MB\n{res.out_dir}")

    def _on_failed(self, message: str):
        self._done()
        self.status_label.setText(f"error: {message}" if message != "cancelled" else "cancelled")


DATASET_FORMAT_NAMES = {"camvid": "CamVid-style (class + instance PNGs; Fine-tune reads it)",
                        "coco": "COCO instances (JSON, RLE masks)",
                        "yolo": "YOLO segmentation (polygon .txt)"}


class DatasetExportDialog(QDialog):
    """Annotator > Project > Export dataset: output folder, split ratios, format -> the export runs on a napari
    worker thread (napari's activity dock shows it); the folder is shown at the end and ``exported`` carries it."""

    exported = Signal(str, object)  # output folder, the export's summary
    failed = Signal(str)

    def __init__(self, project_folder, parent=None, default_out: str = "", export_fn=None, before_export=None):
        super().__init__(parent)
        self.setWindowTitle("Export dataset")
        self.project_folder = Path(project_folder)
        self._export_fn = export_fn  # tests may inject one; default: data.export.export_dataset
        self._before_export = before_export  # e.g. wait for the annotator's pending autosave
        self._worker = None
        self.summary = None
        self.formats = dataset_export_formats(export_fn)

        form = QFormLayout()
        self.out_edit = QLineEdit(default_out)
        self.out_edit.setPlaceholderText("an empty folder, or an earlier export to add to")
        form.addRow("Output folder", with_browse_button(self.out_edit, self._browse_out))
        self.ratios_edit = QLineEdit("0.8,0.1,0.1")
        self.ratios_edit.setToolTip("train,val,test shares; an image's split follows from its name, so adding "
                                    "images later never moves the earlier ones")
        form.addRow("Split ratios", self.ratios_edit)
        self.format_combo = QComboBox()
        for fmt in self.formats:
            self.format_combo.addItem(DATASET_FORMAT_NAMES.get(fmt, fmt), fmt)
        form.addRow("Format", self.format_combo)
        self.overwrite_check = QCheckBox("replace a dataset already there (else add to it)")
        form.addRow(self.overwrite_check)

        self.export_btn = QPushButton("Export")
        self.export_btn.setDefault(True)
        self.export_btn.clicked.connect(self.start)
        self.open_btn = QPushButton("Open folder")
        self.open_btn.setEnabled(False)
        self.open_btn.clicked.connect(self._open_folder)
        close_btn = QPushButton("Close")
        close_btn.clicked.connect(self.close)
        buttons = QHBoxLayout()
        for b in (self.export_btn, self.open_btn, close_btn):
            buttons.addWidget(b)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"project: {self.project_folder}"))
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status_label)
        self.resize(520, self.sizeHint().height())

    def _browse_out(self):
        path = QFileDialog.getExistingDirectory(self, "Output folder for the dataset")
        if path:
            self.out_edit.setText(path)

    def _open_folder(self):
        if self.summary is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.out_edit.text().strip()))

    def request(self) -> DatasetExportRequest:
        return DatasetExportRequest.from_form(self.out_edit.text(), self.ratios_edit.text(),
                                              self.format_combo.currentData(), self.overwrite_check.isChecked(),
                                              self.formats)

    def is_running(self) -> bool:
        return self._worker is not None

    def start(self) -> bool:
        """Check the form and start the export off the GUI thread; False (and one line) if the form is bad."""
        if self._worker is not None:
            return False
        try:
            req = self.request()
        except ValueError as exc:
            self.status_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return False
        if self._before_export is not None:
            self._before_export()
        from napari.qt.threading import create_worker

        self.summary = None
        self.export_btn.setEnabled(False)
        self.open_btn.setEnabled(False)
        self.progress_bar.setRange(0, 0)  # busy: the export reports no per-image progress
        self.status_label.setText(f"exporting to {req.out} ...")
        worker = create_worker(req.run, self.project_folder, self._export_fn,
                               _progress={"total": 0, "desc": "Exporting dataset"},
                               _ignore_errors=True)  # shown in the dialog as one line, not re-raised
        worker.returned.connect(lambda summary: self._on_done(req, summary))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return True

    def _on_done(self, req: DatasetExportRequest, summary):
        self.summary = summary
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.open_btn.setEnabled(True)
        self.status_label.setText(f"{summary}\n\nDataset folder: {req.out}")
        self.adjustSize()  # room for the summary's lines
        self.exported.emit(req.out, summary)

    def _on_error(self, exc: BaseException):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label.setText(f"<span style='color:#e55'>export failed: {msg}</span>")
        self.adjustSize()
        self.failed.emit(msg)

    def _on_finished(self):
        self._worker = None
        self.export_btn.setEnabled(True)
