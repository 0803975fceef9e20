"""Our CamVid-style export: ``SPLIT/NAME.png|jpg``, ``SPLITannot/NAME.png`` (class index, void elsewhere),
``SPLITinst/NAME.png`` (uint16 instance ids), ``SPLIT.txt``, ``class_dict.csv`` and ``dataset.json``.

Each instance's class is read from the annot map under its pixels (void there = class -1); instance ids are kept
(``extra['instance_ids']``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.core.io import read_tagged_json
from napari_ultratinysam.data.readers._common import SPLITS, Dataset, check_size, read_label, read_rgb, resolve_splits
from napari_ultratinysam.data.types import AnnotatedImage

FORMAT_TAG = "napari-ultratinysam/camvid-instances"
DATASET_JSON = "dataset.json"


def annot_dir(split: str) -> str:
    return f"{split}annot"


def inst_dir(split: str) -> str:
    return f"{split}inst"


def _read_tagged(path: Path) -> dict:
    return read_tagged_json(path, "format", FORMAT_TAG,
                            f"a napari-ultratinysam export (format tag {FORMAT_TAG!r} missing)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_component(value, what: str, path: Path) -> None:
    """A name that becomes one path component: no separators, no '..', not hidden."""
    if not isinstance(value, str) or not value or value.startswith(".") or any(
            c in value for c in "/\\\0") or any(c.isspace() for c in value):
        raise ValueError(f"{path}: {what}: expected a plain name (no path separators, spaces or leading dot), "
                         f"got {value!r}")


def _check_file(root: Path, value, what: str, path: Path) -> None:
    """A file path that stays inside the dataset: relative, no '..', no symlink leading out."""
    bad = not isinstance(value, str) or not value or "\\" in value or "\0" in value or value.startswith("/")
    if not bad:
        parts = value.split("/")
        bad = any(p in ("", ".", "..") for p in parts) or Path(value).is_absolute()
    if not bad:
        try:
            (root / value).resolve().relative_to(root.resolve())
        except (ValueError, OSError):
            bad = True
    if bad:
        raise ValueError(f"{path}: {what}: expected a relative path inside the dataset, got {value!r}")


def validate_meta(meta: dict, root: Path) -> dict:
    """Check the schema of a parsed ``dataset.json`` (untrusted: its paths are read and, on re-export, deleted)."""
    path = root / DATASET_JSON
    for key in ("classes", "colors", "void_index", "images"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    classes, colors, void, images = meta["classes"], meta["colors"], meta["void_index"], meta["images"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(classes) > 255:
        raise ValueError(f"{path}: classes: expected a list of at most 255 names")
    if not isinstance(colors, list) or len(colors) != len(classes) or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c) for c in colors):
        raise ValueError(f"{path}: colors: expected one [r, g, b] (0..255) per class")
    if not _is_int(void) or not len(classes) <= void <= 255:
        raise ValueError(f"{path}: void_index: expected an integer in {len(classes)}..255, got {void!r}")
    if not isinstance(images, dict):
        raise ValueError(f"{path}: images: expected an object of name -> entry")
    for name, e in images.items():
        _check_component(name, f"images[{name!r}]", path)
        if not isinstance(e, dict):
            raise ValueError(f"{path}: images[{name!r}]: expected an object")
        for key in ("split", "file", "size", "objects", "class_counts"):
            if key not in e:
                raise ValueError(f"{path}: images[{name!r}]: missing key {key!r}")
        _check_component(e["split"], f"images[{name!r}].split", path)
        _check_file(root, e["file"], f"images[{name!r}].file", path)
        size = e["size"]
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            raise ValueError(f"{path}: images[{name!r}].size: expected [height, width], got {size!r}")
        if not _is_int(e["objects"]) or e["objects"] < 0:
            raise ValueError(f"{path}: images[{name!r}].objects: expected a count, got {e['objects']!r}")
        counts = e["class_counts"]
        if not isinstance(counts, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in counts.items()):
            raise ValueError(f"{path}: images[{name!r}].class_counts: expected an object of class -> count")
    return meta


def load_meta(root: Path) -> dict:
    """Parse and check ``dataset.json`` of an export."""
    return validate_meta(_read_tagged(root / DATASET_JSON), root)


def detect(path: Path) -> bool:
    if path.is_file() and path.name == DATASET_JSON:
        path = path.parent
    try:
        _read_tagged(path / DATASET_JSON)  # tagged but invalid still reads as ours: read() names the problem
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
