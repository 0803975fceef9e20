"""npe2 reader and writer: our own files only.

The reader claims an annotation project (``project.json``, or a folder holding one) and an exported dataset
(``dataset.json`` with our format tag, or a folder holding one); any other file or folder is left to napari and other
plugins (get_reader returns None). A project docks the annotator on it; a dataset gives three lazily loaded stacks
(one slice per image, padded at the bottom/right to the largest image): the images, the instance ids (Labels) and the
class map (Labels coloured by class, value = class index + 1, with the class names as features). Names, classes and
colours are in each layer's metadata.

The writer saves a 2-D Labels layer as a CamVid-style label PNG (8-bit when the ids fit, else 16-bit).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from napari_ultratinysam import _gui_safety  # noqa: F401  (napari process: keep torch away from Triton)
from napari_ultratinysam.data.project_meta import PROJECT_FORMAT, PROJECT_JSON
from napari_ultratinysam.data.readers import Dataset, ours, read_dataset
from napari_ultratinysam.data.readers.ours import DATASET_JSON
from napari_ultratinysam.data.types import AnnotatedImage

LayerData = tuple[Any, dict, str]
PLUGIN = "napari-ultratinysam"


def _single(path: str | list[str]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def _is_project(folder: Path) -> bool:
    from napari_ultratinysam.core.io import read_tagged_json

    try:
        read_tagged_json(folder / PROJECT_JSON, "format", PROJECT_FORMAT, "a napari-ultratinysam project file")
    except (OSError, ValueError):
        return False
    return True


def _is_dataset(folder: Path) -> bool:
    return (folder / DATASET_JSON).is_file() and ours.detect(folder)


def claim(path: str | list[str]) -> tuple[str, Path] | None:
    """("project" | "dataset", its folder) when ``path`` is one of our files or a folder holding one, else None."""
    p = _single(path)
    if p is None:
        return None
    if p.is_file():
        kinds = {PROJECT_JSON: ("project", _is_project), DATASET_JSON: ("dataset", _is_dataset)}
        kind, test = kinds.get(p.name, (None, None))
        return (kind, p.parent) if test is not None and test(p.parent) else None
    if p.is_dir():
        if _is_project(p):
            return "project", p
        if _is_dataset(p):
            return "dataset", p
    return None


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari reader hook: a reader function for our project / dataset files and folders, else None."""
    found = claim(path)
    if found is None:
        return None
    return _read_project if found[0] == "project" else _read_dataset


def _read_dataset(path: str | list[str]) -> list[LayerData]:
    found = claim(path)
    if found is None or found[0] != "dataset":
        raise ValueError(f"{path}: not a napari-ultratinysam dataset export (dataset.json)")
    return dataset_layers(read_dataset(found[1], format="ours"))


def _read_project(path: str | list[str]) -> list[LayerData]:
    """Dock the annotator (or reuse the one docked) and open the project in it; no layers of its own."""
    import napari

    found = claim(path)
    if found is None or found[0] != "project":
        raise ValueError(f"{path}: not a napari-ultratinysam project (project.json)")
    folder = found[1]
    viewer = napari.current_viewer()
    if viewer is None:
        raise ValueError(f"{folder}: a project opens in the annotator of a napari viewer; none is open")
    open_project_in_viewer(viewer, folder)
    return [(None,)]  # napari's sentinel: read, nothing to add (the annotator adds the project's layers)


def open_project_in_viewer(viewer: Any, folder: str | Path) -> Any:
    """The viewer's annotator (docked now if needed) annotating the project at ``folder``; ValueError / OSError
    (one line) when the project cannot be opened."""
    from napari_ultratinysam.data.project import Project

    folder = Path(folder)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotator")
    current = getattr(widget, "project", None)
    if current is not None and Path(current.folder).resolve() == folder.resolve():
        return widget  # already open here: opening it twice would contend with its own project
    widget.set_project(Project.open(folder))
    return widget


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: one 2-D Labels layer -> a label PNG (ids as pixel values; 8-bit if they fit, else 16-bit)."""
    from PIL import Image

    from napari_ultratinysam.core.io import atomic_path

    arr = np.asarray(data)
    name = meta.get("name", "labels")
    if arr.ndim != 2:
        raise ValueError(f"{path}: layer {name!r}: a label PNG holds one 2-D image; this layer is {arr.ndim}-D "
                         f"(save it as .tif instead)")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"{path}: layer {name!r}: label values must be 0..65535 for a PNG, "
                         f"got {arr.min()}..{arr.max()}")
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    dtype = np.uint8 if not arr.size or arr.max() <= 255 else np.uint16
    with atomic_path(out) as tmp:
        Image.fromarray(np.ascontiguousarray(arr.astype(dtype))).save(tmp, format="PNG")
    return [str(out)]


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
