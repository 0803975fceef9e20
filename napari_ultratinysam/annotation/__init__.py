"""Pure annotation logic behind the napari annotator: no Qt, no napari, testable with plain numpy.

- prompt: napari (row, col) -> the predictor's (x, y), and ``Prompt``;
- candidates: a prediction's masks (``Candidates``) and the in-place ``PreviewBuffer``;
- classes: class lists, presets (CamVid's from data) and colour maps;
- edits: ``AnnotationModel``, the instance map with its undo/redo history;
- session: which model (``PredictorSpec``), loading it, and the worker thread's ``PredictorSession``;
- export_request: the "Export dataset" form (``DatasetExportRequest``);
- proposals: segment-all proposals (imported from its module).

The names below are re-exported so that the widgets import them from the package, whatever module holds them.
"""
from napari_ultratinysam.annotation.candidates import Candidates, PreviewBuffer, mask_bbox, union_bbox
from napari_ultratinysam.annotation.classes import (
    CAMVID_CLASSES,
    CLASS_PRESETS,
    DEFAULT_CLASSES,
    UNCLASSIFIED_RGBA,
    ClassSpec,
    class_color_dict,
    instance_color,
    instance_color_dict,
    preset_classes,
    random_class_color,
)
from napari_ultratinysam.annotation.edits import AnnotationModel, Edit
from napari_ultratinysam.annotation.export_request import DatasetExportRequest, dataset_export_formats
from napari_ultratinysam.annotation.prompt import Prompt, box_from_rect, clip_box, inside, rc_to_xy
from napari_ultratinysam.annotation.session import (
    BACKEND_PRECISION,
    BACKENDS,
    PredictorSession,
    PredictorSpec,
    default_backend,
    load_device_predictor,
    load_predictor,
    model_status_text,
)

__all__ = [
    "AnnotationModel",
    "BACKENDS",
    "BACKEND_PRECISION",
    "CAMVID_CLASSES",
    "CLASS_PRESETS",
    "Candidates",
    "ClassSpec",
    "DEFAULT_CLASSES",
    "DatasetExportRequest",
    "Edit",
    "PredictorSession",
    "PredictorSpec",
    "PreviewBuffer",
    "Prompt",
    "UNCLASSIFIED_RGBA",
    "box_from_rect",
    "class_color_dict",
    "clip_box",
    "dataset_export_formats",
    "default_backend",
    "inside",
    "instance_color",
    "instance_color_dict",
    "load_device_predictor",
    "load_predictor",
    "mask_bbox",
    "model_status_text",
    "preset_classes",
    "random_class_color",
    "rc_to_xy",
    "union_bbox",
]
