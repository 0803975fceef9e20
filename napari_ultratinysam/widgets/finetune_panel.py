"""Fine-tune panel: pick an exported dataset and a starting checkpoint, train in a background process with live
progress (loss curve) and cancel, then switch the annotator to the new weights in one click.

The run is a :class:`~napari_ultratinysam.training.job.FinetuneJob` (a separate process, Qt-free); its progress
comes back through a queue polled by a QTimer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_ultratinysam.training.job import FinetuneJob, finetune_config, progress_step


def set_finetune_dataset(viewer: Any, dataset: str | Path) -> bool:
    """Fill the dataset field of every docked Fine-tune panel of ``viewer``; True if one was found."""
    found = False
    for w in dict(getattr(getattr(viewer, "window", None), "dock_widgets", {}) or {}).values():
        w = getattr(w, "native", w)
        if isinstance(w, FinetunePanel):
            w.dataset_edit.setText(str(dataset))
            found = True
    return found


def _last_export_of_annotator(viewer: Any) -> str:
    """The dataset a docked annotator exported last in this session ("" if none): a panel opened after the
    export starts from it."""
    try:
        for w in dict(getattr(viewer.window, "dock_widgets", {}) or {}).values():
            path = getattr(getattr(w, "native", w), "last_dataset_export", None)
            if path:
                return str(path)
    except Exception:  # noqa: BLE001 - a convenience only
        return ""
    return ""


def switch_annotator_to(viewer: Any, checkpoint: str | Path) -> bool:
    """Load ``checkpoint`` in every docked UltraTinySAM annotator of ``viewer``; True if one was found.

    An annotator is recognised by the controls this uses (its model source, path and load action), not by its
    class: the annotator imports this module, and this one stays free of it."""
    found = False
    for w in dict(getattr(viewer.window, "dock_widgets", {})).values():
        w = getattr(w, "native", w)
        combo = getattr(w, "source_combo", None)
        i = combo.findData("checkpoint") if hasattr(combo, "findData") else -1
        if i >= 0 and hasattr(w, "path_edit") and callable(getattr(w, "load_model", None)):
            combo.setCurrentIndex(i)
            w.path_edit.setText(str(checkpoint))
            w.load_model()
            found = True
    return found


try:  # the widget needs Qt; the functions above do not
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import (
        QComboBox,
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

    from napari_ultratinysam.widgets.qt_parts import with_browse_button
except Exception:  # pragma: no cover
    QWidget = object  # type: ignore


class FinetunePanel(QWidget):
    """Dock widget: dataset + checkpoint + steps + device -> background fine-tuning with a live loss curve."""

    def __init__(self, napari_viewer: Any = None):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.job: FinetuneJob | None = None
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.dataset_edit = QLineEdit(_last_export_of_annotator(napari_viewer) if napari_viewer is not None else "")
        self.dataset_edit.setPlaceholderText("folder of a CamVid-style export (Annotator > Project > Export "
                                             "dataset, or utsam export-dataset)")
        form.addRow("dataset", self._with_browse(self.dataset_edit, folder=True))
        self.ckpt_edit = QLineEdit()
        self.ckpt_edit.setPlaceholderText("empty: the shipped default weights")
        form.addRow("start from", self._with_browse(self.ckpt_edit, folder=False))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(10, 100000)
        self.steps_spin.setValue(300)
        form.addRow("steps", self.steps_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["cpu", "cuda", "auto"])
        form.addRow("device", self.device_combo)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start fine-tuning")
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.use_btn = QPushButton("Use in annotator")
        self.use_btn.setEnabled(False)
        self.use_btn.clicked.connect(self.use_in_annotator)
        for b in (self.start_btn, self.cancel_btn, self.use_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.progress = QProgressBar()
        lay.addWidget(self.progress)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.figure = Figure(figsize=(3.5, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        lay.addWidget(self.canvas)
        self.timer = QTimer(self)
        self.timer.setInterval(300)
        self.timer.timeout.connect(self.poll)

    def _with_browse(self, edit, folder: bool):
        def browse():
            path = (QFileDialog.getExistingDirectory(self, "Dataset folder") if folder else
                    QFileDialog.getOpenFileName(self, "Checkpoint", "", "Checkpoints (*.safetensors)")[0])
            if path:
                edit.setText(path)

        return with_browse_button(edit, browse)

    def start(self) -> bool:
        from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

        try:
            cfg = finetune_config(self.dataset_edit.text().strip(), self.ckpt_edit.text().strip() or DEFAULT_CHECKPOINT,
                                  steps=self.steps_spin.value(), device=self.device_combo.currentText())
        except (ValueError, FileNotFoundError) as e:
            self.status.setText(f"<span style='color:#e55'>{e}</span>")
            return False
        self.job = FinetuneJob(cfg).start()
        self.progress.setRange(0, cfg.steps)
        self.progress.setValue(0)
        self.status.setText(f"training in a background process -> {cfg.out_dir}")
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.use_btn.setEnabled(False)
        self.timer.start()
        return True

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("cancelling after the current step ...")

    def poll(self) -> None:
        job = self.job
        if job is None:
            return
        msgs = job.poll()
        total = self.progress.maximum()
        progress = [m[1] for m in msgs if m[0] == "progress"]
        for d in progress:
            value = progress_step(d, total)
            if value is not None:
                self.progress.setValue(value)
        shown = [d for d in progress if "step" in d]  # the final "done" record has totals, not a step
        if shown:
            last = shown[-1]
            bits = [f"step {int(last['step'])}"] + [f"{k} {last[k]:.4g}" for k in ("loss", "val_loss", "val_miou1")
                                                    if isinstance(last.get(k), (int, float))]
            self.status.setText(", ".join(bits))
        if progress:
            self._plot()
        if job.finished and job.summary is not None:
            self.progress.setValue(progress_step({"event": "done", **job.summary}, total))
        if job.finished:
            self.timer.stop()
            self.start_btn.setEnabled(True)
            self.cancel_btn.setEnabled(False)
            if job.error:
                self.status.setText(f"<span style='color:#e55'>training failed: {job.error}</span>")
            else:
                ck = job.best_checkpoint()
                self.use_btn.setEnabled(ck is not None)
                self.status.setText(f"done: {ck}")

    def _plot(self) -> None:
        h = self.job.history if self.job else []
        self.ax.clear()
        tr = [(d["step"], d["loss"]) for d in h if "loss" in d and "step" in d]
        va = [(d["step"], d["val_loss"]) for d in h if "val_loss" in d and "step" in d]
        if tr:
            self.ax.plot(*zip(*tr), label="train loss", lw=1)
        if va:
            self.ax.plot(*zip(*va), "o-", label="val loss", ms=3)
        self.ax.set_xlabel("step")
        self.ax.legend(fontsize=7)
        self.canvas.draw_idle()

    def use_in_annotator(self) -> bool:
        ck = self.job.best_checkpoint() if self.job else None
        if ck is None or self.viewer is None:
            return False
        ok = switch_annotator_to(self.viewer, ck)
        self.status.setText(f"annotator now uses {ck}" if ok else "open the Annotator first (Plugins > UltraTinySAM)")
        return ok

    def closeEvent(self, event):  # noqa: N802 (Qt)
        if self.job is not None and not self.job.finished:
            self.job.cancel()
        self.timer.stop()
        super().closeEvent(event)
