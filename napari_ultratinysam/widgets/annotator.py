"""The UltraTinySAM annotator dock widget (``Plugins > UltraTinySAM > Annotator``).

Thin by design: it turns mouse/keyboard/widget events into calls on the pure helpers in ``annotation_state`` and on
the predictor, which runs only on the ``LatestRequestWorker`` thread. Layers it manages (created once per chosen
image, then updated in place): ``prompts`` (Points), ``box`` (Shapes), ``preview`` (Labels), ``annotations``
(Labels), and ``proposals`` (Labels) while "Propose objects" proposals are open.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_ultratinysam.annotation.proposals import ProposalSet
from napari_ultratinysam.annotation.state import (
    BACKENDS,
    CLASS_PRESETS,
    DEFAULT_CLASSES,
    AnnotationModel,
    Candidates,
    ClassSpec,
    PredictorSession,
    PredictorSpec,
    PreviewBuffer,
    Prompt,
    default_backend,
    inside,
    load_device_predictor,
    load_predictor,
    model_status_text,
    preset_classes,
)
from napari_ultratinysam.evaluation.metrics import agreement_iou
from napari_ultratinysam.widgets.napari_compat import canvas_draw_event, refresh_labels_region
from napari_ultratinysam.widgets.workers import LatestRequestWorker

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

PROMPTS, BOX, PREVIEW, ANNOTATIONS = "prompts", "box", "preview", "annotations"
PROPOSALS = "proposals"
POSITIVE_COLOR = (0.1, 0.9, 0.2, 1.0)
NEGATIVE_COLOR = (1.0, 0.15, 0.15, 1.0)
PREVIEW_RGBA = (1.0, 0.85, 0.0, 1.0)
DEVICE_PREVIEW = "preview (IMX500)"
DEVICE_RGBA = (0.0, 0.9, 1.0, 1.0)
POINT_FLUSH_MS = 120  # a clicked point reaches the prompts layer after its preview is drawn, or after this at most
DRAG_PIXELS = 4  # a press that moves further than this (canvas pixels) is a pan, not a click
SLOW_NOTICE_MS = 1000  # a model build still running after this gets a message (the first int8 build is long)

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


def _swatch(rgb) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*[int(c) for c in rgb[:3]]))
    return QIcon(pm)


class AnnotatorWidget(QWidget):
    """Click or box -> live mask preview -> commit objects with classes."""

    preview_updated = Signal(int)  # seq of the request now shown in the preview layer (0: cleared)
    device_updated = Signal(int)  # pixels of the IMX500 preview mask now shown
    embedding_ready = Signal(object)  # the embedding key that became current
    committed = Signal(int)  # new object id
    propagated = Signal(int)  # object id carried to other slices (emitted after the labels changed)
    propagation_progress = Signal(int, int)  # slices done, slices in all (from the worker thread: queued)
    proposals_updated = Signal(int)  # open proposals now shown (0: none)
    proposal_progress = Signal(int, int)  # views done, views in all (from the worker thread: queued)

    def __init__(self, napari_viewer: "napari.viewer.Viewer", predictor: Any = None,
                 loader: Callable[[PredictorSpec], Any] = load_predictor,
                 device_loader: Callable[[str], Any] = load_device_predictor):
        super().__init__()
        # napari hands plugin widgets a public-only proxy; layer identity checks (`layer is self.prompts`) need
        # the objects themselves, so work on the viewer behind it
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.session = PredictorSession(predictor, PredictorSpec(backend=default_backend()), loader=loader)
        self.session.zoom_refine = True
        # IMX500 device-faithful preview: the quantized graph's mask beside the float one (None while off)
        self.device_loader = device_loader
        self.device_session: PredictorSession | None = None
        self.device_preview = None
        self.device_buffer: PreviewBuffer | None = None
        self.worker = LatestRequestWorker(parent=self)
        self.worker.busy_changed.connect(self._on_busy)

        self.image_layer = None
        self.prompts = self.box = self.preview = self.annotations = None
        self.model: AnnotationModel | None = None
        self.preview_buffer: PreviewBuffer | None = None
        self.candidates: Candidates | None = None
        self.candidates_plane: tuple = ()
        self.selected_id = 0
        self._classes = list(DEFAULT_CLASSES)
        self._image_token = 0
        self._key_base = None  # a stable embedding key for project images (else a per-layer token)
        self.project = None
        self.project_index = -1
        self._project_annotations = None  # the one annotations layer a project reuses for all its images
        self.proposal_layer = None  # "Propose objects": the open proposals of one plane, and their layer
        self.proposal_set: ProposalSet | None = None
        self.export_dialog = None
        self.last_dataset_export: str | None = None  # read by a Fine-tune panel opened later
        self.slow_notice_ms = SLOW_NOTICE_MS
        self._slow_progress = None  # napari's activity-dock progress of a slow model build
        self.saver = LatestRequestWorker(name="utsam-autosave", parent=self)  # project writes, off the GUI thread
        self._plane: tuple = ()
        self._data_version = 0  # bumped when the image layer's data is replaced: part of the embedding keys
        self._data_layer = None  # the layer whose data events bump it
        self._suspend = 0  # > 0 while we change layers ourselves (ignore their events)
        # clicked points not yet in the prompts layer: (coord, positive). A click's prediction is submitted at once
        # and the point is added to the layer right after its preview is shown (or after POINT_FLUSH_MS at most):
        # napari's Points.add costs tens of milliseconds of Python on the GUI thread and would delay the mask
        self._pending_points: list[tuple[np.ndarray, bool]] = []
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self.flush_points)
        self._flush_on_draw = None  # the one-shot canvas-draw callback that adds pending points, when connected
        self._last_hover_px: tuple | None = None
        self._timing: dict[str, float] = {}
        self._bound_keys: list[str] = []
        self._closed = False

        self._build_ui()
        self._bind_keys()
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_dims_step)
        self.propagation_progress.connect(self._on_propagation_progress)
        self.proposal_progress.connect(self._on_proposal_progress)
        self._refresh_layer_choices()

    # ================================================================================================ UI
    def _build_ui(self) -> None:
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(4, 4, 4, 4)

        # ---- model
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
        self._given_predictor = self.session.predictor is not None
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        f.addRow(self.model_label)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self._on_source_changed()
        self.backend_combo.currentIndexChanged.connect(self._on_backend_changed)
        self.path_edit.textChanged.connect(lambda _t: self._update_model_label())
        self._update_model_label()
        lay.addWidget(g)

        # ---- image
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
        lay.addWidget(g)

        # ---- prompt
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
        lay.addWidget(g)

        # ---- classes
        g = QGroupBox("Classes")
        v = QVBoxLayout(g)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(170)
        self.class_list.itemChanged.connect(self._on_class_item_changed)
        v.addWidget(self.class_list)
        row = QHBoxLayout()
        self.add_class_btn = QPushButton("Add")
        self.add_class_btn.clicked.connect(lambda: self.add_class())
        self.remove_class_btn = QPushButton("Remove")
        self.remove_class_btn.clicked.connect(lambda: self.remove_class(self.current_class()))
        self.color_class_btn = QPushButton("Colour...")
        self.color_class_btn.clicked.connect(self._pick_class_color)
        for b in (self.add_class_btn, self.remove_class_btn, self.color_class_btn):
            row.addWidget(b)
        v.addLayout(row)
        row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(CLASS_PRESETS))
        self.preset_combo.setToolTip("replace the class list by a preset (refused while an object uses a class "
                                     "the preset lacks)")
        self.preset_btn = QPushButton("Use preset")
        self.preset_btn.clicked.connect(lambda: self.apply_class_preset(self.preset_combo.currentText()))
        row.addWidget(QLabel("Preset"))
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.preset_btn)
        v.addLayout(row)
        self.by_class_check = QCheckBox("show annotations in class colours (off: instance colours)")
        self.by_class_check.setChecked(True)
        self.by_class_check.toggled.connect(lambda _: self._update_annotation_colors())
        v.addWidget(self.by_class_check)
        lay.addWidget(g)

        # ---- objects
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
        self.objects_label = QLabel("")
        v.addWidget(self.objects_label)
        lay.addWidget(g)

        # ---- project
        g = QGroupBox("Project")
        v = QVBoxLayout(g)
        row = QHBoxLayout()
        self.open_project_btn = QPushButton("Open...")
        self.open_project_btn.setToolTip("open an annotation project folder")
        self.open_project_btn.clicked.connect(self._open_project_dialog)
        self.new_project_btn = QPushButton("New from images...")
        self.new_project_btn.setToolTip("choose a folder of images, then where to keep the project")
        self.new_project_btn.clicked.connect(self._new_project_dialog)
        self.prev_btn = QPushButton("< Prev")
        self.prev_btn.clicked.connect(lambda: self.go_to_image(self.project_index - 1))
        self.next_btn = QPushButton("Next >")
        self.next_btn.clicked.connect(lambda: self.go_to_image(self.project_index + 1))
        for b in (self.open_project_btn, self.new_project_btn, self.prev_btn, self.next_btn):
            row.addWidget(b)
        self.prev_btn.setEnabled(False)
        self.next_btn.setEnabled(False)
        v.addLayout(row)
        self.export_dataset_btn = QPushButton("Export dataset...")
        self.export_dataset_btn.setToolTip("the project's annotations -> a training dataset (CamVid-style for "
                                           "Fine-tune; COCO / YOLO where offered), split into train / val / test")
        self.export_dataset_btn.clicked.connect(lambda: self.open_export_dialog())
        self.export_dataset_btn.setEnabled(False)
        v.addWidget(self.export_dataset_btn)
        self.import_labels_btn = QPushButton("Import labels...")
        self.import_labels_btn.setToolTip("a new project from existing labels to correct them: CamVid-style, COCO, "
                                          "YOLO, images/ + masks/, or a folder of images and one of masks")
        self.import_labels_btn.clicked.connect(self._import_labels_dialog)
        v.addWidget(self.import_labels_btn)
        self.project_label = QLabel("no project: annotations live in the 'annotations' layer only")
        self.project_label.setWordWrap(True)
        v.addWidget(self.project_label)
        lay.addWidget(g)

        # ---- help
        self.help_label = QLabel(SHORTCUT_HELP)
        self.help_label.setWordWrap(True)
        self.help_label.setTextFormat(Qt.RichText)
        g = QGroupBox("Help")
        QVBoxLayout(g).addWidget(self.help_label)
        lay.addWidget(g)
        lay.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setToolTip("")
        self._rebuild_class_list()
        self._update_buttons()

    # ========================================================================================= model picker
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

    # ================================================================================= IMX500 device preview
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

    def _on_flip_toggled(self, on: bool):
        self.session.flip_tta = bool(on)  # read by the worker before its next use of the predictor
        if not self._prompt().empty:
            self._request_preview(refine=False)

    def _on_zoom_toggled(self, on: bool):
        self.session.zoom_refine = bool(on)  # a plain attribute, read by the worker before each prediction
        if not self._prompt().empty:
            self._request_preview(refine=False)

    # ============================================================================================= layers
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
        self._ensure_layers()
        self._clear_prompt_layers()
        self._clear_preview()
        self.viewer.layers.selection.active = self.prompts
        self._request_embedding()

    def _layer_kwargs(self):
        il = self.image_layer
        return {"scale": il.scale, "translate": il.translate}

    def _ensure_layers(self) -> None:
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
                    self.annotations = found or self.viewer.add_labels(
                        np.zeros(shape, np.uint32), name=ANNOTATIONS, opacity=0.55, **kw)
                for emitter, slot in ((self.annotations.events.selected_label, self._on_labels_selected),
                                      (self.annotations.events.paint, self._on_labels_painted)):
                    emitter.disconnect(slot)  # connected once, however often the layer is adopted again
                    emitter.connect(slot)
                self.model = AnnotationModel(self.annotations.data, self._classes)
            if self.preview is not None and self.preview.data.shape != shape and self.preview.ndim == ndim:
                self.preview.data = np.zeros(shape, np.uint8)  # resized in place: no layer churn between images
                self.preview.scale, self.preview.translate = kw["scale"], kw["translate"]
                self.preview_buffer = PreviewBuffer(self.preview.data)
            if self.preview is None or self.preview.data.shape != shape:
                if self.preview is not None:
                    self.viewer.layers.remove(self.preview)
                from napari.utils.colormaps import DirectLabelColormap

                self.preview = self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=PREVIEW, opacity=0.55, blending="translucent",
                    colormap=DirectLabelColormap(color_dict={0: (0, 0, 0, 0), 1: PREVIEW_RGBA, None: PREVIEW_RGBA}),
                    **kw)
                self.preview.editable = False
                self.preview_buffer = PreviewBuffer(self.preview.data)
            if self.box is None or self.box.ndim != ndim:
                if self.box is not None:
                    self.viewer.layers.remove(self.box)
                self.box = self.viewer.add_shapes(
                    ndim=ndim, name=BOX, edge_color="#00e5ff", face_color="transparent",
                    edge_width=max(1.0, max(shape[-2:]) / 300), **kw)
                self.box.events.data.connect(self._on_box_data)
            if self.prompts is None or self.prompts.ndim != ndim:
                if self.prompts is not None:
                    self.viewer.layers.remove(self.prompts)
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

    # ============================================================================================= commit
    def current_class(self) -> int:
        return max(0, self.class_list.currentRow())

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

    # ========================================================================================== proposals
    def propose_objects(self) -> int | None:
        """Propose objects: segment_all on the current image (slice) on the worker; the result opens as the
        ``proposals`` layer (objects already annotated are left out). Returns the request, None without an image."""
        if self.image_layer is None or self.model is None:
            self.status_label.setText("propose: choose an image layer first")
            return None
        from napari_ultratinysam.inference.segment_all import batched_decoder, segment_all

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

    # ============================================================================================ classes
    @property
    def classes(self):
        return self.model.classes if self.model is not None else self._classes

    def _rebuild_class_list(self):
        row = self.class_list.currentRow()
        self.class_list.blockSignals(True)
        self.class_list.clear()
        for c in self.classes:
            it = QListWidgetItem(_swatch(c.color), c.name)
            it.setFlags(it.flags() | Qt.ItemIsEditable)
            self.class_list.addItem(it)
        self.class_list.setCurrentRow(min(max(row, 0), len(self.classes) - 1))
        self.class_list.blockSignals(False)

    def _classes_target(self) -> AnnotationModel:
        """Class edits go to the model; before an image is chosen, to a detached model over a dummy array."""
        if self.model is not None:
            return self.model
        return AnnotationModel(np.zeros((1, 1), np.uint8), self._classes)

    def add_class(self, name: str | None = None, color=None) -> int | None:
        target = self._classes_target()
        name = name or f"class {len(target.classes) + 1}"
        try:
            idx = target.add_class(name, color)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return None
        self._classes = target.classes
        self._rebuild_class_list()
        self.class_list.setCurrentRow(idx)
        self._sync_project_classes()
        return idx

    def remove_class(self, index: int) -> bool:
        target = self._classes_target()
        try:
            target.remove_class(index)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return False
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_annotation_colors()
        self._update_objects_label()
        self._sync_project_classes()
        return True

    def rename_class(self, index: int, name: str) -> bool:
        target = self._classes_target()
        try:
            target.rename_class(index, name)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            self._rebuild_class_list()
            return False
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_objects_label()
        self._sync_project_classes()
        return True

    def recolor_class(self, index: int, rgb) -> None:
        target = self._classes_target()
        target.recolor_class(index, rgb)
        self._classes = target.classes
        self._rebuild_class_list()
        self._update_annotation_colors()
        self._sync_project_classes()

    def apply_class_preset(self, name: str) -> bool:
        """Replace the class list by a preset (``CLASS_PRESETS``: the neutral "object", CamVid's 11 classes);
        refused, with one line, while an object of this image or of the project uses a class the preset lacks."""
        try:
            classes = preset_classes(name)
        except ValueError as exc:
            self.status_label.setText(str(exc))
            return False
        target = self._classes_target()
        old = list(target.classes)
        try:
            target.set_classes(classes)
            if self.project is not None:
                self.project.set_classes([c.name for c in classes], [c.color for c in classes])
        except ValueError as exc:
            target.classes = old
            self.status_label.setText(str(exc))
            return False
        self._classes = list(target.classes)
        self._rebuild_class_list()
        self.class_list.setCurrentRow(0)
        self._update_annotation_colors()
        self._update_objects_label()
        self.status_label.setText(f"classes: {name}")
        return True

    def _on_class_item_changed(self, item: QListWidgetItem):
        self.rename_class(self.class_list.row(item), item.text())

    def _pick_class_color(self):
        i = self.current_class()
        col = QColorDialog.getColor(QColor(*self.classes[i].color), self, f"Colour of {self.classes[i].name}")
        if col.isValid():
            self.recolor_class(i, (col.red(), col.green(), col.blue()))

    # ============================================================================================ project
    def _open_project_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Annotation project folder")
        if folder:
            self.open_project(folder)

    def _new_project_dialog(self):
        images = QFileDialog.getExistingDirectory(self, "Folder of images to annotate")
        if not images:
            return
        folder = QFileDialog.getExistingDirectory(self, "Where to keep the project (an empty folder)")
        if folder:
            self.new_project(folder, images)

    def open_project(self, folder) -> bool:
        from napari_ultratinysam.data.project import Project

        try:
            project = Project.open(folder)
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return False
        self.set_project(project)
        return True

    def new_project(self, folder, images) -> bool:
        from napari_ultratinysam.data.project import Project

        try:
            project = Project.create(folder, images, classes=[c.name for c in self.classes],
                                     colors=[c.color for c in self.classes])
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return False
        self.set_project(project)
        return True

    def _import_labels_dialog(self):
        from napari_ultratinysam.data.readers import detect_format

        src = QFileDialog.getExistingDirectory(self, "Labelled images (CamVid, COCO, YOLO, images/ + masks/)")
        if not src:
            return
        masks = None
        try:
            detect_format(src)
        except (OSError, ValueError):  # no dataset layout: a folder of images whose masks are elsewhere
            masks = QFileDialog.getExistingDirectory(self, "Folder of masks for these images (same file names)")
            if not masks:
                return
        folder = QFileDialog.getExistingDirectory(self, "Where to keep the project (a new or empty folder)")
        if folder:
            self.import_labels(src, folder, masks=masks)

    def import_labels(self, source, folder, masks=None):
        """Project > Import labels: a new project from existing labels, built off the GUI thread, then opened here
        with the labels as committed objects. Returns the napari worker (None while an import runs)."""
        from napari.qt.threading import create_worker

        from napari_ultratinysam.data.importer import import_labels

        if not self.import_labels_btn.isEnabled():
            return None

        def done(summary):
            self.import_labels_btn.setEnabled(True)
            if self._closed:
                summary.project.close()
                return
            self.set_project(summary.project)
            self._notify(f"UltraTinySAM: {str(summary).splitlines()[0]}", warning=False)

        def failed(exc):
            self.import_labels_btn.setEnabled(True)
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.project_label.setText(f"<span style='color:#e55'>import failed: {msg}</span>")

        self.import_labels_btn.setEnabled(False)
        self.project_label.setText(f"importing labels from {source} ...")
        worker = create_worker(import_labels, source, folder, masks=masks,
                               _progress={"total": 0, "desc": "Importing labels"}, _ignore_errors=True)
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
        return worker

    def set_project(self, project) -> None:
        """Annotate a Project: its classes, its current image; every change is saved (off the GUI thread)."""
        self.flush_autosave()
        self.project = project
        self._classes = [ClassSpec(n, tuple(int(v) for v in c)) for n, c in zip(project.classes, project.colors)]
        if not self._classes:  # a project without classes starts with the neutral one
            self._classes = list(DEFAULT_CLASSES)
            self._sync_project_classes()
        if self.model is not None:
            self.model.classes = list(self._classes)
        self._rebuild_class_list()
        self.export_dataset_btn.setEnabled(True)
        self.go_to_image(project.cursor)

    def go_to_image(self, i: int) -> None:
        p = self.project
        if p is None or not len(p):
            return
        i = int(np.clip(i, 0, len(p) - 1))
        self.flush_autosave()
        try:
            img = p.image(i)
            id_map, classes, _order = p.get_annotation(i)
        except (OSError, ValueError) as exc:
            self.project_label.setText(f"<span style='color:#e55'>{exc}</span>")
            return
        p.go_to(i)
        self.project_index = i
        name = "project image"
        layer = next((l for l in self._image_layers() if l.name == name), None)
        if layer is None:
            layer = self.viewer.add_image(img, name=name, rgb=True)
        else:
            layer.data = img
            layer.reset_contrast_limits()
        self.set_image_layer(layer, key_base=("project", str(p.folder), i))
        self._project_annotations = self.annotations
        self.annotations.data[...] = id_map
        self.model = AnnotationModel(self.annotations.data, self._classes,
                                     {int(k): int(v) for k, v in classes.items() if int(v) >= 0})
        self.selected_id = 0
        self.annotations.refresh()
        self._update_annotation_colors()
        self._update_objects_label()
        self._update_project_label()
        self.viewer.reset_view()
        if i + 1 < len(p):  # the next image's embedding, computed ahead (lenient: never delays a click)
            key, session, nxt = (("project", str(p.folder), i + 1), (), ()), self.session, i + 1
            self.worker.submit("prefetch", lambda: session.prefetch(key, lambda: p.image(nxt)), strict=False)

    def _update_project_label(self):
        p = self.project
        if p is None:
            return
        self.project_label.setText(f"{p.folder.name}: image {self.project_index + 1}/{len(p)} "
                                   f"({p.names[self.project_index]}) - {p.progress_text()}")
        self.prev_btn.setEnabled(self.project_index > 0)
        self.next_btn.setEnabled(self.project_index < len(p) - 1)

    def _autosave(self):
        p, i = self.project, self.project_index
        if p is None or self.model is None or i < 0 or self.annotations is None:
            return
        if self.annotations is not self._project_annotations or not self._in_project():
            return  # another image layer is being annotated: not the project's image i
        snapshot = np.array(self.annotations.data, copy=True)
        object_class = dict(self.model.object_class)

        def save():
            ids = np.unique(snapshot)
            p.set_annotation(i, snapshot, {int(k): object_class.get(int(k), -1) for k in ids if k})

        self.saver.submit("save", save, on_done=lambda _: self._update_project_label(),
                          on_error=lambda exc: self.project_label.setText(
                              f"<span style='color:#e55'>autosave failed: {exc}</span>"))

    def flush_autosave(self, timeout: float = 10.0) -> None:
        """Wait (processing events) until pending project writes are done: before switching images or closing."""
        from qtpy.QtWidgets import QApplication

        t_end = time.perf_counter() + timeout
        while self.saver.is_busy() and time.perf_counter() < t_end:
            QApplication.processEvents()
            time.sleep(0.002)

    # ====================================================================================== dataset export
    def default_export_folder(self) -> str:
        p = self.project
        return "" if p is None else str(p.folder.parent / f"{p.folder.name}_dataset")

    def open_export_dialog(self, export_fn=None):
        """Project > Export dataset: the dialog (non-modal) for the open project; None without a project."""
        if self.project is None:
            self.project_label.setText("open or create a project first: the export reads its saved annotations")
            return None
        from napari_ultratinysam.widgets.export_panel import DatasetExportDialog

        folder = self.project.folder
        d = self.export_dialog
        if d is None or d.project_folder != folder or (export_fn is not None and d._export_fn is not export_fn):
            if d is not None:
                d.close()
            d = DatasetExportDialog(folder, parent=self, default_out=self.default_export_folder(),
                                    export_fn=export_fn, before_export=self.flush_autosave)
            d.exported.connect(self._on_dataset_exported)
            self.export_dialog = d
        d.show()
        d.raise_()
        return d

    def _on_dataset_exported(self, out: str, summary) -> None:
        from pathlib import Path

        from napari_ultratinysam.widgets.finetune_panel import set_finetune_dataset

        trainable = (Path(out) / "dataset.json").is_file() or (Path(out) / "train.txt").is_file()
        if trainable:  # what Fine-tune reads (COCO / YOLO exports are for other tools)
            self.last_dataset_export = out
        filled = trainable and set_finetune_dataset(self.viewer, out)
        note = " (the Fine-tune panel's dataset is set to it)" if filled else ""
        self.project_label.setText(f"dataset exported to {out}{note}")
        self._notify(f"UltraTinySAM: dataset exported to {out}{note}", warning=False)

    def _sync_project_classes(self):
        if self.project is None:
            return
        try:
            self.project.set_classes([c.name for c in self.classes], [c.color for c in self.classes])
        except ValueError as exc:
            self.status_label.setText(str(exc))

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

    def _on_busy(self, group: str, busy: bool):
        loading = self.worker.is_busy("embed") or self.worker.is_busy("model")
        self.busy_bar.setVisible(loading)
        if not loading:
            self._end_slow_progress()
        if group == "propose":
            self._update_buttons()

    def _notify(self, msg: str, warning: bool = True):
        try:
            from napari.utils.notifications import show_info, show_warning

            (show_warning if warning else show_info)(msg)
        except Exception:  # noqa: BLE001 - a notification must never break the widget
            log.warning(msg)

    # ========================================================================================== cleanup
    def cleanup(self):
        """Stop the worker and detach from the viewer (called when the widget closes)."""
        if self._closed:
            return
        self._closed = True
        self.flush_autosave()
        draw = canvas_draw_event(self.viewer)
        if draw is not None and self._flush_on_draw is not None:
            draw.disconnect(self._flush_on_draw)
            self._flush_on_draw = None
        self.worker.close()
        self.saver.close()
        self._end_slow_progress()
        if self.export_dialog is not None:
            self.export_dialog.close()
        for k in self._bound_keys:
            try:
                self.viewer.bind_key(k, None)
            except Exception:  # noqa: BLE001 - the viewer may already be gone
                pass
        if self._data_layer is not None:
            self._data_layer.events.data.disconnect(self._on_image_data)
        for sig, slot in ((self.viewer.layers.events.inserted, self._refresh_layer_choices),
                          (self.viewer.layers.events.removed, self._on_layer_removed),
                          (self.viewer.dims.events.current_step, self._on_dims_step)):
            try:
                sig.disconnect(slot)
            except Exception:  # noqa: BLE001
                pass
        if self.prompts is not None:
            for lst, cb in ((self.prompts.mouse_drag_callbacks, self._on_mouse_drag),
                            (self.prompts.mouse_move_callbacks, self._on_mouse_move)):
                if cb in lst:
                    lst.remove(cb)

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self.cleanup()
        super().closeEvent(event)

    @property
    def timing(self) -> dict[str, float]:
        """Last measured seconds: embed and predict (on the worker), preview_update (writing the mask into the
        preview layer + its refresh, GUI thread), click_to_preview / hover_to_preview (request -> first preview
        shown), refine and click_to_refined / hover_to_refined (the zoom-in stage on large images)."""
        return dict(self._timing)


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


def _dtype(layer):
    data = layer.data[0] if layer.multiscale else layer.data
    return np.dtype(data.dtype)

