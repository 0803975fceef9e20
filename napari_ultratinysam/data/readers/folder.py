"""Plain folders: ``[SPLIT/]images/NAME.*`` + ``[SPLIT/]masks/NAME.png`` paired by stem (Weizmann horses too).

Mask decoding: every distinct non-zero value is one object, so a binary 0/255 (or 0/1) mask gives one object and
a palette / instance-id / 16-bit mask gives one object per id; an RGB mask gives one object per non-black colour.
In an 8-bit grayscale mask the value 128 marks an ignore region (``extra['ignore']``), not an object.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.data.readers._common import (
    SPLITS,
    Dataset,
    check_size,
    components,
    image_size,
    pair_by_stem,
    read_label,
    read_rgb,
    regions,
    resolve_splits,
)
from napari_ultratinysam.data.types import AnnotatedImage

IMAGE_DIRS = ("images", "image", "imgs", "img", "rgb")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt", "groundtruth", "segments")
IGNORE_VALUE = 128


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _has_pair(root: Path) -> bool:
    return _find(root, IMAGE_DIRS) is not None and _find(root, MASK_DIRS) is not None


def available_splits(root: Path) -> list[str]:
    subs = [p.name for p in sorted(root.iterdir()) if p.is_dir() and _has_pair(p)] if root.is_dir() else []
    return [s for s in SPLITS if s in subs] + [s for s in subs if s not in SPLITS]


def detect(path: Path) -> bool:
    return path.is_dir() and (_has_pair(path) or bool(available_splits(path)))


def decode_mask(label: np.ndarray, mode: str, min_area: int = 0, split_components: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask array -> ((N, H, W) bool objects, ignore map or None)."""
    ignore = None
    if label.ndim == 3:  # RGB: one object per colour
        packed = (label[..., 0].astype(np.uint32) << 16) | (label[..., 1].astype(np.uint32) << 8) | label[..., 2]
        label = np.unique(packed, return_inverse=True)[1].reshape(packed.shape).astype(np.int64)
        if packed.min() != 0:  # no black anywhere: every colour is an object, shift ids above 0
            label = label + 1
    elif mode == "L" and (label == IGNORE_VALUE).any():
        ignore = label == IGNORE_VALUE
        label = np.where(ignore, 0, label)
    values = [int(v) for v in np.unique(label) if v != 0]
    split = components if split_components else regions
    masks, _ = split(label, values, min_area)
    return masks, ignore


def load_pair(img_path: Path, mask_path: Path, min_area: int, split_components: bool, split: str = ""
              ) -> AnnotatedImage:
    image = read_rgb(img_path)
    label, mode = read_label(mask_path)
    check_size(image, label, img_path, mask_path)
    masks, ignore = decode_mask(label, mode, min_area, split_components)
    extra: dict = {"split": split}
    if ignore is not None:
        extra["ignore"] = ignore
    return AnnotatedImage(image, masks, np.full(len(masks), -1, dtype=np.int64), name=img_path.stem,
                          source=str(img_path), extra=extra)


def read(path: Path, split: str | None = None, min_area: int = 0, split_components: bool = False) -> Dataset:
    """Read image/mask folders (one pair of folders, or one per split subfolder)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: folder not found")
    if not detect(path):
        raise ValueError(f"{path}: expected images/ and masks/ folders (or SPLIT/images and SPLIT/masks)")
    roots = [("", path)] if _has_pair(path) and split is None else \
        [(s, path / s) for s in resolve_splits(available_splits(path), split, path)]
    items: list[tuple[Path, Path, str]] = []
    for s, root in roots:
        items += [(i, m, s) for i, m in pair_by_stem(_find(root, IMAGE_DIRS), _find(root, MASK_DIRS))]

    def load(i: int) -> AnnotatedImage:
        img, mask, s = items[i]
        return load_pair(img, mask, min_area, split_components, s)

    return Dataset([it[0].stem for it in items], load, format="folder", root=path, splits=[it[2] for it in items],
                   size_of=lambda i: image_size(items[i][0]))
