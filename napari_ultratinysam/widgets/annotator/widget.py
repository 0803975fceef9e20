"""The annotator dock widget itself: its signals and state, the form assembled from the parts' boxes, and its
cleanup. The behaviour lives in the mixins (one per part of the form); they are listed before QWidget so that their
methods are found first, as when they were defined on this class."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QGroupBox, QLabel, QScrollArea, QVBoxLayout, QWidget

from napari_ultratinysam.annotation import (
    DEFAULT_CLASSES,
    AnnotationModel,
    Candidates,
    PredictorSession,
    PredictorSpec,
    PreviewBuffer,
    default_backend,
    load_device_predictor,
    load_predictor,
)
from napari_ultratinysam.annotation.proposals import ProposalSet
from napari_ultratinysam.widgets.annotator.classes_box import ClassesMixin
from napari_ultratinysam.widgets.annotator.device_preview import DevicePreviewMixin
from napari_ultratinysam.widgets.annotator.input import SHORTCUT_HELP, InputMixin
from napari_ultratinysam.widgets.annotator.layers import LayersMixin
from napari_ultratinysam.widgets.annotator.model_picker import SLOW_NOTICE_MS, ModelPickerMixin
from napari_ultratinysam.widgets.annotator.objects import ObjectsMixin
from napari_ultratinysam.widgets.annotator.preview import PreviewMixin
from napari_ultratinysam.widgets.annotator.project_nav import ProjectMixin
from napari_ultratinysam.widgets.annotator.proposals import ProposalsMixin
from napari_ultratinysam.widgets.napari_compat import canvas_draw_event
from napari_ultratinysam.widgets.workers import LatestRequestWorker

if TYPE_CHECKING:
    import napari

# the logger of the module this widget was split from: log configurations naming it keep working
log = logging.getLogger(__package__)


class AnnotatorWidget(ModelPickerMixin, DevicePreviewMixin, LayersMixin, InputMixin, PreviewMixin, ObjectsMixin,
                      ProposalsMixin, ClassesMixin, ProjectMixin, QWidget):
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
        for box in (self._build_model_box, self._build_image_box, self._build_prompt_box, self._build_classes_box,
                    self._build_objects_box, self._build_project_box):
            lay.addWidget(box())

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

    # ========================================================================================== widget-wide
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
        if self.project is not None:  # release its lock: another window may open it now
            self.project.close()
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
