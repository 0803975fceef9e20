"""BSDS500 (compact copy): ``SPLIT/images/ID.jpg`` + ``SPLIT/segments/ID.png`` 16-bit region ids; regions = objects.

Each region id is one object (kept whole even if it is not connected); regions have no class (-1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.data.readers._common import (
    SPLITS,
    Dataset,
    check_size,
    image_size,
    pair_by_stem,
    read_label,
    read_rgb,
    regions,
    resolve_splits,
)
from napari_ultratinysam.data.types import AnnotatedImage


def available_splits(root: Path) -> list[str]:
    return [s for s in SPLITS if (root / s / "images").is_dir() and (root / s / "segments").is_dir()]


def detect(path: Path) -> bool:
    return path.is_dir() and bool(available_splits(path))


def load_pair(img_path: Path, seg_path: Path, min_area: int, split: str) -> AnnotatedImage:
    image = read_rgb(img_path)
    seg, _ = read_label(seg_path)
    if seg.ndim != 2:
        raise ValueError(f"{seg_path}: expected a single-channel region-id PNG, got shape {seg.shape}")
    check_size(image, seg, img_path, seg_path)
    masks, _ = regions(seg, [int(v) for v in np.unique(seg) if v != 0], min_area)
    return AnnotatedImage(image, masks, np.full(len(masks), -1, dtype=np.int64), name=img_path.stem,
                          source=str(img_path), extra={"split": split})


def read(path: Path, split: str | None = None, min_area: int = 0) -> Dataset:
    """Read BSDS500 (all splits, or one)."""
    items: list[tuple[Path, Path, str]] = []
    for s in resolve_splits(available_splits(path), split, path):
        items += [(i, m, s) for i, m in pair_by_stem(path / s / "images", path / s / "segments", (".png",))]

    def load(i: int) -> AnnotatedImage:
        return load_pair(*items[i][:2], min_area, items[i][2])

    return Dataset([it[0].stem for it in items], load, format="bsds500", root=path, splits=[it[2] for it in items],
                   size_of=lambda i: image_size(items[i][0]))
