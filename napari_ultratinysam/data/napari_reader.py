"""npe2 reader: open a dataset folder (our export, shards, or any format the readers detect) in napari.

Gives three lazily loaded stacks (one slice per image, padded at the bottom/right to the largest image): the
images, the instance ids (Labels) and the class map (Labels coloured by class, value = class index + 1, with the
class names as features). Names, classes and colours are in each layer's metadata.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _gui_safety  # noqa: F401  (napari process: keep torch away from Triton)

from .readers import Dataset, detect_format, read_dataset
from .types import AnnotatedImage

LayerData = tuple[Any, dict, str]


def _resolve(path: str | list[str]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_file() and p.name in ("dataset.json", "index.json"):
        p = p.parent
    return p if p.is_dir() else None


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari reader hook: a reader function for a dataset folder, or None when this is not one."""
    p = _resolve(path)
    if p is None:
        return None
    try:
        fmt = detect_format(p)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return functools.partial(_read, fmt=fmt)


def _read(path: str | list[str], fmt: str = "auto") -> list[LayerData]:
    p = _resolve(path)
    if p is None:
        raise ValueError(f"{path}: not a dataset folder")
    return dataset_layers(read_dataset(p, format=fmt))


def instance_map(item: AnnotatedImage) -> np.ndarray:
    """(H, W) int32 instance ids, keeping stored ids (``extra['instance_ids']``) when the reader gives them."""
    ids = item.extra.get("instance_ids") or list(range(1, item.num_objects + 1))
    out = np.zeros(item.image.shape[:2], dtype=np.int32)
    for m, i in zip(item.masks, ids):
        out[m] = int(i)
    return out


def class_map(item: AnnotatedImage) -> np.ndarray:
    """(H, W) int32 class index + 1 of the top object at each pixel (0 = none or classless)."""
    out = np.zeros(item.image.shape[:2], dtype=np.int32)
    for m, c in zip(item.masks, item.class_ids):
        out[m] = int(c) + 1
    return out


def _pad(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = np.zeros(hw + a.shape[2:], dtype=a.dtype)
    out[:a.shape[0], :a.shape[1]] = a
    return out


def dataset_layers(ds: Dataset) -> list[LayerData]:
    """Layer data tuples (image, instances, classes) for a whole dataset, loaded one image at a time (dask)."""
    import dask
    import dask.array as da

    n = len(ds)
    sizes = [ds.image_size(i) for i in range(n)]
    hw = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    load = functools.lru_cache(maxsize=4)(ds.__getitem__)

    def part(i: int, what: str) -> np.ndarray:
        item = load(i)
        arr = item.image if what == "image" else instance_map(item) if what == "instances" else class_map(item)
        return _pad(arr, hw)

    def stack(what: str, shape: tuple[int, ...], dtype) -> Any:
        return da.stack([da.from_delayed(dask.delayed(part)(i, what), shape=shape, dtype=dtype) for i in range(n)])

    classes = list(ds.classes or [])
    colors = [tuple(c) for c in (ds.colors or [])]
    meta = {"dataset": str(ds.root), "format": ds.format, "names": list(ds.names), "splits": ds.splits,
            "classes": classes, "colors": colors, "void_index": ds.void_index, "image_sizes": sizes}
    cmap: dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    cmap.update({k + 1: tuple(v / 255 for v in c) + (1.0,) for k, c in enumerate(colors)})
    features = {"index": list(range(len(classes) + 1)), "class_index": list(range(-1, len(classes))),
                "class_name": ["none"] + classes}
    name = ds.root.name or "dataset"
    return [
        (stack("image", hw + (3,), np.uint8), {"name": f"{name} images", "rgb": True, "metadata": meta}, "image"),
        (stack("instances", hw, np.int32), {"name": f"{name} instances", "metadata": meta}, "labels"),
        (stack("classes", hw, np.int32), {"name": f"{name} classes", "metadata": meta, "colormap": cmap,
                                          "features": features, "visible": bool(classes), "opacity": 0.5},
         "labels"),
    ]
