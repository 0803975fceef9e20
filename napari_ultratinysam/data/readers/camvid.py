"""SegNet-layout CamVid: ``SPLIT/NAME.*`` images, ``SPLITannot/NAME.png`` class-index labels, ``SPLIT.txt`` lists.

Instances are the connected components of each class (void skipped), filtered by ``min_area`` pixels at the
original resolution. The void region is kept as ``extra['ignore']``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.data.classes import CAMVID_CLASSES, CAMVID_COLORS  # the one table; re-exported here
from napari_ultratinysam.data.readers._common import (
    SPLITS,
    Color,
    Dataset,
    check_size,
    components,
    find_by_stem,
    image_size,
    list_images,
    read_class_csv,
    read_label,
    read_rgb,
    resolve_splits,
)
from napari_ultratinysam.data.types import AnnotatedImage

CAMVID_VOID = 11


def available_splits(root: Path) -> list[str]:
    """Splits that have both an image folder and an ``annot`` folder, standard ones first."""
    found = [p.name[:-5] for p in sorted(root.iterdir()) if p.is_dir() and p.name.endswith("annot")
             and (root / p.name[:-5]).is_dir()] if root.is_dir() else []
    return [s for s in SPLITS if s in found] + [s for s in found if s not in SPLITS]


def detect(path: Path) -> bool:
    return path.is_dir() and bool(available_splits(path)) and not (path / "dataset.json").is_file()


def _classes(root: Path, void_index: int) -> tuple[list[str], list[Color]]:
    csv_path = root / "class_dict.csv"
    if not csv_path.is_file():
        return list(CAMVID_CLASSES), list(CAMVID_COLORS)
    indices, names, colors = read_class_csv(csv_path)
    table = {i: (n, c) for i, n, c in zip(indices, names, colors) if i != void_index}
    if sorted(table) != list(range(len(table))):
        raise ValueError(f"{csv_path}: class indices must run 0..N-1 apart from the void index {void_index}")
    return [table[i][0] for i in range(len(table))], [table[i][1] or (0, 0, 0) for i in range(len(table))]


def _pairs_for_split(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths in list-file order when ``SPLIT.txt`` exists, else by listing the folder."""
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        pairs = []
        for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{list_file}: line {n} should hold 'image label', got {line!r}")
            # SegNet lists may hold absolute paths (/SegNet/CamVid/train/x.png): keep the last two parts
            img, lab = (root / Path(p).parent.name / Path(p).name for p in parts)
            pairs.append((img, lab))
        return pairs
    pairs = []
    for img in list_images(root / split):
        lab = find_by_stem(root / f"{split}annot", img.stem, (".png",))
        if lab is None:
            raise ValueError(f"{img}: missing mask (expected {root / f'{split}annot' / (img.stem + '.png')})")
        pairs.append((img, lab))
    return pairs


def load_pair(img_path: Path, lab_path: Path, num_classes: int, void_index: int, min_area: int,
              connectivity: int = 2, split: str = "") -> AnnotatedImage:
    if not lab_path.is_file():
        raise ValueError(f"{img_path}: missing mask ({lab_path} not found)")
    image = read_rgb(img_path)
    label, _ = read_label(lab_path)
    if label.ndim != 2:
        raise ValueError(f"{lab_path}: expected a single-channel class-index PNG, got shape {label.shape}")
    check_size(image, label, img_path, lab_path)
    values = np.flatnonzero(np.bincount(label.ravel()))
    bad = [int(v) for v in values if v >= num_classes and v != void_index]
    if bad:
        raise ValueError(f"{lab_path}: unknown class value {bad[0]} (classes 0..{num_classes - 1}, void {void_index})")
    masks, cls = components(label, [int(v) for v in values if v != void_index], min_area, connectivity)
    extra: dict = {"split": split}
    if (label == void_index).any():
        extra["ignore"] = label == void_index
    return AnnotatedImage(image, masks, cls, name=img_path.stem, source=str(img_path), extra=extra)


def read(path: Path, split: str | None = None, min_area: int = 0, void_index: int = CAMVID_VOID,
         connectivity: int = 2) -> Dataset:
    """Read a SegNet-layout CamVid folder (all splits, or one)."""
    splits = resolve_splits(available_splits(path), split, path)
    classes, colors = _classes(path, void_index)
    pairs: list[tuple[Path, Path]] = []
    split_of: list[str] = []
    for s in splits:
        p = _pairs_for_split(path, s)
        pairs += p
        split_of += [s] * len(p)
    if not pairs:
        raise ValueError(f"{path}: empty dataset (no images in {', '.join(splits)})")

    def load(i: int) -> AnnotatedImage:
        img, lab = pairs[i]
        return load_pair(img, lab, len(classes), void_index, min_area, connectivity, split_of[i])

    return Dataset([p[0].stem for p in pairs], load, classes=classes, colors=colors, format="camvid", root=path,
                   splits=split_of, void_index=void_index,
                   size_of=lambda i: image_size(pairs[i][0]))
