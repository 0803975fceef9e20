"""Clothing Co-Parsing: ``images/NNNN.jpg`` + ``masks/NNNN.png`` (label index per pixel) + ``labels.csv``.

Objects are the connected components of each non-background label (``connected=False``: one object per label
region). Class index = label value, so class names are the rows of labels.csv (0 = null/background).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.data.readers._common import (
    Dataset,
    check_size,
    components,
    image_size,
    pair_by_stem,
    read_class_csv,
    read_label,
    read_rgb,
    regions,
)
from napari_ultratinysam.data.types import AnnotatedImage


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "labels.csv").is_file() and (path / "images").is_dir() and \
        (path / "masks").is_dir()


def load_pair(img_path: Path, mask_path: Path, num_classes: int, min_area: int, connected: bool,
              background: int) -> AnnotatedImage:
    image = read_rgb(img_path)
    label, _ = read_label(mask_path)
    if label.ndim != 2:
        raise ValueError(f"{mask_path}: expected a single-channel label PNG, got shape {label.shape}")
    check_size(image, label, img_path, mask_path)
    values = [int(v) for v in np.unique(label) if v != background]
    bad = [v for v in values if v >= num_classes]
    if bad:
        raise ValueError(f"{mask_path}: unknown class value {bad[0]} (labels.csv has 0..{num_classes - 1})")
    masks, cls = (components if connected else regions)(label, values, min_area)
    return AnnotatedImage(image, masks, cls, name=img_path.stem, source=str(img_path), extra={"split": ""})


def read(path: Path, split: str | None = None, min_area: int = 0, connected: bool = True, background: int = 0
         ) -> Dataset:
    """Read the CCP folder (one split; ``split`` must be None)."""
    if split is not None:
        raise ValueError(f"{path}: CCP has a single split; got split={split!r}")
    indices, names, _ = read_class_csv(path / "labels.csv")
    if indices != list(range(len(indices))):
        raise ValueError(f"{path / 'labels.csv'}: label indices must run 0..N-1")
    pairs = pair_by_stem(path / "images", path / "masks", (".png",))

    def load(i: int) -> AnnotatedImage:
        return load_pair(*pairs[i], len(names), min_area, connected, background)

    return Dataset([p[0].stem for p in pairs], load, classes=names, format="ccp", root=path,
                   size_of=lambda i: image_size(pairs[i][0]))
