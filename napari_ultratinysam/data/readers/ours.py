"""Our CamVid-style export: ``SPLIT/NAME.png|jpg``, ``SPLITannot/NAME.png`` (class index, void elsewhere),
``SPLITinst/NAME.png`` (uint16 instance ids), ``SPLIT.txt``, ``class_dict.csv`` and ``dataset.json``.

Each instance's class is read from the annot map under its pixels (void there = class -1); instance ids are kept
(``extra['instance_ids']``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..types import AnnotatedImage
from ._common import SPLITS, Dataset, check_size, read_label, read_rgb, resolve_splits
from ...io_utils import read_tagged_json

FORMAT_TAG = "napari-ultratinysam/camvid-instances"
DATASET_JSON = "dataset.json"


def annot_dir(split: str) -> str:
    return f"{split}annot"


def inst_dir(split: str) -> str:
    return f"{split}inst"


def load_meta(root: Path) -> dict:
    """Parse and check ``dataset.json`` of an export."""
    path = root / DATASET_JSON
    meta = read_tagged_json(path, "format", FORMAT_TAG,
                            f"a napari-ultratinysam export (format tag {FORMAT_TAG!r} missing)")
    for key in ("classes", "colors", "void_index", "images"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    return meta


def detect(path: Path) -> bool:
    if path.is_file() and path.name == DATASET_JSON:
        path = path.parent
    try:
        load_meta(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def instance_classes(inst: np.ndarray, annot: np.ndarray, num_classes: int, void_index: int, where: Path
                     ) -> dict[int, int]:
    """{instance id: class} from the class map under each instance (one class per instance, void -> -1)."""
    fg = inst > 0
    keys = np.unique(inst[fg].astype(np.int64) * 65536 + annot[fg].astype(np.int64))
    ids, cls = keys // 65536, keys % 65536
    if len(np.unique(ids)) != len(ids):
        bad = int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])
        raise ValueError(f"{where}: instance {bad} covers several classes in the annot map")
    unknown = [int(c) for c in cls if c >= num_classes and c != void_index]
    if unknown:
        raise ValueError(f"{where}: unknown class value {unknown[0]} (classes 0..{num_classes - 1}, void {void_index})")
    return {int(i): (-1 if c == void_index else int(c)) for i, c in zip(ids, cls)}


def load_item(root: Path, name: str, entry: dict, num_classes: int, void_index: int, min_area: int
              ) -> AnnotatedImage:
    split = entry["split"]
    img_path = root / entry["file"]
    inst_path = root / inst_dir(split) / f"{name}.png"
    annot_path = root / annot_dir(split) / f"{name}.png"
    for p in (inst_path, annot_path):
        if not p.is_file():
            raise ValueError(f"{img_path}: missing mask ({p} not found)")
    image = read_rgb(img_path)
    inst, _ = read_label(inst_path)
    annot, _ = read_label(annot_path)
    for arr, p in ((inst, inst_path), (annot, annot_path)):
        if arr.ndim != 2:
            raise ValueError(f"{p}: expected a single-channel PNG, got shape {arr.shape}")
        check_size(image, arr, img_path, p)
    classes = instance_classes(inst, annot, num_classes, void_index, annot_path)
    item = AnnotatedImage.from_id_map(image, inst, classes, name=name, source=str(img_path))
    if min_area > 0 and item.num_objects:
        keep = item.masks.reshape(item.num_objects, -1).sum(1) >= min_area
        ids = [i for i, k in zip(item.extra["instance_ids"], keep) if k]
        item = AnnotatedImage(image, item.masks[keep], item.class_ids[keep], name=name, source=str(img_path),
                              extra={"instance_ids": ids})
    item.extra["split"] = split
    return item


def _split_key(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def read(path: Path, split: str | None = None, min_area: int = 0) -> Dataset:
    """Read an export folder (all splits, or one); names are listed from dataset.json."""
    if path.is_file() and path.name == DATASET_JSON:
        path = path.parent
    meta = load_meta(path)
    images: dict[str, dict] = meta["images"]
    available = sorted({e["split"] for e in images.values()}, key=_split_key)
    wanted = set(resolve_splits(available, split, path)) if images else set()
    names = sorted((n for n, e in images.items() if e["split"] in wanted),
                   key=lambda n: (_split_key(images[n]["split"]), n))
    if not names:
        raise ValueError(f"{path / DATASET_JSON}: empty dataset (no images)")
    ncls, void = len(meta["classes"]), int(meta["void_index"])

    def load(i: int) -> AnnotatedImage:
        return load_item(path, names[i], images[names[i]], ncls, void, min_area)

    return Dataset(names, load, classes=meta["classes"], colors=[tuple(c) for c in meta["colors"]], format="ours",
                   root=path, splits=[images[n]["split"] for n in names], void_index=void,
                   size_of=lambda i: tuple(images[names[i]]["size"]))
