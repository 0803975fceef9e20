"""Dataset readers behind one interface: ``read_dataset(path) -> Dataset`` of AnnotatedImage.

Formats: ours (our CamVid-style export), camvid (SegNet layout), bsds500, ccp, coco, sa1b, yolo, folder
(image + mask folders; Weizmann horses) and shards (our preprocessed training shards).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from napari_ultratinysam.data.readers._common import Dataset

# detection order matters: the more specific layouts first
FORMATS: tuple[str, ...] = ("ours", "shards", "camvid", "bsds500", "ccp", "coco", "sa1b", "yolo", "folder")
ALIASES = {"weizmann": "folder", "weizmann_horse": "folder", "segnet": "camvid", "sa-1b": "sa1b"}

__all__ = ["Dataset", "FORMATS", "detect_format", "read_dataset"]


def _module(fmt: str):
    return importlib.import_module(f"{__name__}.{fmt}")


def _detect(fmt: str, path: Path) -> bool:
    return _module(fmt).detect(path)


def _canonical(fmt: str) -> str:
    f = ALIASES.get(fmt.lower(), fmt.lower())
    if f not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r} (choose from auto, {', '.join(FORMATS)}, "
                         f"{', '.join(ALIASES)})")
    return f


def detect_format(path: str | Path) -> str:
    """Name of the format of the dataset at ``path`` (a folder, or a COCO JSON / dataset.json file)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found")
    if p.is_dir() and not any(c for c in p.iterdir() if not c.name.startswith(".")):
        raise ValueError(f"{p}: empty folder")
    for fmt in FORMATS:
        if _detect(fmt, p):
            return fmt
    raise ValueError(f"{p}: cannot detect the dataset format; pass format= one of {', '.join(FORMATS)}")


def read_dataset(path: str | Path, format: str = "auto", split: str | None = None, min_area: int = 0,
                 **kw) -> Dataset:
    """Open a dataset lazily: names are listed now, each image is read on ``dataset[i]``.

    ``min_area`` drops objects with fewer pixels (at the stored resolution); extra keywords go to the reader
    (e.g. ``void_index`` for camvid, ``include_crowd`` for coco, ``connected`` for ccp).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found")
    fmt = detect_format(p) if format == "auto" else _canonical(format)
    return _module(fmt).read(p, split=split, min_area=int(min_area), **kw)
