"""The annotator's "Export dataset" form, checked, and its call of the dataset export (data.export)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


def dataset_export_formats(export_fn: Callable | None = None) -> tuple[str, ...]:
    """The formats the dataset export offers: CamVid-style always; COCO and YOLO once it takes ``format``."""
    import inspect

    if export_fn is None:
        from napari_ultratinysam.data.export import export_dataset as export_fn
    if "format" not in inspect.signature(export_fn).parameters:
        return ("camvid",)
    import sys

    mod = sys.modules.get(getattr(export_fn, "__module__", ""), None)
    for name in ("EXPORT_FORMATS", "FORMATS"):
        known = getattr(mod, name, None)
        if isinstance(known, (tuple, list)) and "camvid" in known:
            return tuple(known)
    return ("camvid", "coco", "yolo")


@dataclass(frozen=True)
class DatasetExportRequest:
    """The "Export dataset" form, checked: where, how the images split, which format, replace or add."""

    out: str
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    format: str = "camvid"
    overwrite: bool = False

    @classmethod
    def from_form(cls, out: str, ratios: str, fmt: str = "camvid", overwrite: bool = False,
                  formats: Sequence[str] = ("camvid",)) -> "DatasetExportRequest":
        from napari_ultratinysam.data.export import parse_ratios

        if not out.strip():
            raise ValueError("output folder: choose where to write the dataset")
        try:
            r = parse_ratios(ratios)
        except ValueError as exc:
            raise ValueError(f"split ratios (train,val,test): {exc}") from None
        if fmt not in formats:
            raise ValueError(f"format: expected one of {', '.join(formats)}, got {fmt!r}")
        return cls(out.strip(), r, fmt, bool(overwrite))

    def run(self, project_folder, export_fn: Callable | None = None):
        """Export the project saved in ``project_folder`` (opened afresh and read-only: the annotator's own Project
        holds the writer's lock and keeps autosaving on another thread); returns the export's summary."""
        import inspect

        from napari_ultratinysam.data.project import Project

        if export_fn is None:
            from napari_ultratinysam.data.export import export_dataset as export_fn
        params = inspect.signature(export_fn).parameters
        kw: dict[str, Any] = {"ratios": self.ratios, "overwrite": self.overwrite}
        if "format" in params:
            kw["format"] = self.format
        elif self.format != "camvid":
            raise ValueError(f"format: this version exports CamVid-style datasets only, not {self.format!r}")
        void = params.get("void_index")
        if void is not None and isinstance(void.default, int) and void.default != 255:
            kw["void_index"] = 255  # valid for any number of classes (the default 11 breaks after an added class)
        ro = {"read_only": True} if "read_only" in inspect.signature(Project.open).parameters else {}
        return export_fn(Project.open(project_folder, **ro), self.out, **kw)
