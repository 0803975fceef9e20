"""Import existing labels into a new annotation project, to correct them in the annotator (`utsam import`).

Any dataset the readers know (our CamVid-style export, SegNet CamVid class maps, COCO JSON, YOLO segmentation,
``images/`` + ``masks/`` folders, ...) or a folder of images plus a folder of masks made by another tool (paired by
file name) becomes a project whose objects are ordinary committed objects: selectable, re-classable, deletable,
editable with clicks or the brush.

- Images are referenced where they are (as ``Project.create`` does), or copied into ``PROJECT/images`` with
  ``copy_images``; images the reader does not take from a file (training shards) are always written there.
- Classes come from the source where it names them (with its colours); otherwise numbered classes ``class_K``
  for the class ids found, and objects without a class (plain masks) get the class ``object``. Where a source with
  class names has objects without a class (void instances of our export), they stay without one.
- A project holds one id per pixel: where source objects overlap (COCO), smaller objects are drawn over larger
  ones so that none disappears under a larger one; overlaps and objects that were still covered whole are counted
  in the summary.
- Instance ids of the source are kept where it has them (our export), else objects are numbered in source order.

Everything is read and checked before anything is written; the project is built in a hidden folder next to the
target and renamed into place at the end, so a bad file or a kill leaves no half-imported project.
"""
from __future__ import annotations

import os
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from napari_ultratinysam.data.project import Project
from napari_ultratinysam.data.project_files import MAX_ID
from napari_ultratinysam.data.project_meta import PROJECT_JSON
from napari_ultratinysam.data.readers._common import Color, Dataset, default_colors, find_by_stem, list_images
from napari_ultratinysam.data.types import AnnotatedImage

UNCLASSIFIED = "object"
IMAGES_DIR = "images"
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")


@dataclass
class ImportSummary:
    """What an import did; ``project`` is the new project, open for writing (close it, or hand it to the
    annotator)."""

    project_folder: str
    source: str
    format: str
    images: int = 0
    annotated: int = 0
    objects: int = 0
    classes: list[str] = field(default_factory=list)
    copied_images: int = 0
    overlapping: dict[str, int] = field(default_factory=dict)  # image -> overlap pixels given to smaller objects
    hidden: dict[str, int] = field(default_factory=dict)  # image -> objects covered whole by others (dropped)
    project: Project | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        lines = [f"imported {self.objects} objects on {self.annotated} of {self.images} images ({self.format}) "
                 f"from {self.source} into {self.project_folder}",
                 f"classes: {', '.join(self.classes) if self.classes else '(none)'}"]
        if self.copied_images:
            lines.append(f"{self.copied_images} images copied into {Path(self.project_folder) / IMAGES_DIR}")
        if self.overlapping:
            lines.append(f"{len(self.overlapping)} images had overlapping objects (the smaller object kept the "
                         f"{sum(self.overlapping.values())} shared pixels)")
        if self.hidden:
            lines.append(f"{sum(self.hidden.values())} objects were covered whole by others and dropped "
                         f"({', '.join(sorted(self.hidden)[:5])}{', ...' if len(self.hidden) > 5 else ''})")
        return "\n".join(lines)


@dataclass
class _Staged:
    """One image read and checked, waiting for the project: its id map kept compressed (id maps compress well),
    so a large dataset is not held in memory as full arrays."""

    name: str
    shape: tuple[int, int]
    packed: bytes
    classes: dict[int, int]  # instance id -> source class id (-1: none)
    path: Path | None = None  # the image file to reference where it is
    copy_from: Path | None = None  # the image file to copy into the project
    image: np.ndarray | None = None  # no file behind the image: these pixels are written into the project

    def id_map(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.packed), dtype=np.uint16).reshape(self.shape)


# ---------------------------------------------------------------- sources


def _paired_masks(images: Path, masks: Path, min_area: int) -> Dataset:
    """A folder of images and a folder of masks made by another tool, paired by file stem; an image without a
    mask simply has no objects yet (the folder reader decodes each mask)."""
    from napari_ultratinysam.data.readers.folder import load_pair

    if not masks.is_dir():
        raise FileNotFoundError(f"{masks}: masks folder not found")
    if masks.resolve() == Path(images).resolve():  # every image would be its own mask
        raise ValueError(f"{masks}: the masks folder is the images folder; keep the masks in their own folder")
    imgs = list_images(images)
    pairs = [(p, find_by_stem(masks, p.stem, MASK_EXTS)) for p in imgs]
    if not any(m is not None for _, m in pairs):
        raise ValueError(f"{masks}: no mask matches an image of {images} by name (expected e.g. "
                         f"{masks / (imgs[0].stem + '.png')})")

    def load(i: int) -> AnnotatedImage:
        img, mask = pairs[i]
        if mask is None:
            from napari_ultratinysam.data.readers._common import read_rgb

            image = read_rgb(img)
            return AnnotatedImage(image, np.zeros((0,) + image.shape[:2], bool), np.zeros(0, np.int64),
                                  name=img.stem, source=str(img))
        return load_pair(img, mask, min_area, split_components=False)

    return Dataset([p.stem for p, _ in pairs], load, format="masks", root=images)


def open_source(src: str | Path, format: str = "auto", masks: str | Path | None = None, split: str | None = None,
                min_area: int = 0, **reader_kw) -> Dataset:
    """The labelled images to import, through the dataset readers (``masks``: src is then a folder of images)."""
    src = Path(src)
    if masks is not None:
        if format not in ("auto", "folder"):
            raise ValueError(f"format: {format!r} does not take a separate masks folder (use auto or folder)")
        return _paired_masks(src, Path(masks), int(min_area))
    from napari_ultratinysam.data.readers import read_dataset

    return read_dataset(src, format=format, split=split, min_area=int(min_area), **reader_kw)


# ---------------------------------------------------------------- the project folder


def _check_target(folder: Path) -> None:
    if (folder / PROJECT_JSON).exists():
        raise ValueError(f"{folder / PROJECT_JSON}: a project already exists here; open it, or import into a new "
                         f"folder")
    if os.path.lexists(folder):
        if not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder")
        if any(folder.iterdir()):
            raise ValueError(f"{folder}: folder is not empty; import into a new or empty folder")


def _unique(stem: str, taken: set[str]) -> str:
    """A file stem for a copied image: no separators or control characters, not hidden, unique."""
    base, k = re.sub(r"[\x00-\x1f/\\:]", "_", stem).lstrip(".")[:150] or "image", 2
    name = base
    while name.casefold() in taken:  # case-insensitive disks
        name, k = f"{base}_{k}", k + 1
    taken.add(name.casefold())
    return name


def _source_ids(item: AnnotatedImage) -> list[int]:
    ids = item.extra.get("instance_ids")
    if ids is not None and len(ids) == item.num_objects and len(set(int(i) for i in ids)) == len(ids) and \
            all(0 < int(i) <= MAX_ID for i in ids):
        return [int(i) for i in ids]
    if item.num_objects > MAX_ID:
        raise ValueError(f"{item.source or item.name}: {item.num_objects} objects, a project image holds at most "
                         f"{MAX_ID}")
    return list(range(1, item.num_objects + 1))


def _stage_item(item: AnnotatedImage, copy_images: bool, summary: ImportSummary) -> _Staged:
    """The item's id map (smaller objects over larger ones) and its image file."""
    h, w = item.image.shape[:2]
    ids = _source_ids(item)
    id_map = np.zeros((h, w), dtype=np.uint16)
    areas = item.masks.reshape(item.num_objects, -1).sum(1) if item.num_objects else np.zeros(0, np.int64)
    covered = 0
    for k in np.argsort(-areas, kind="stable"):  # largest first, so smaller objects end up on top
        m = item.masks[k]
        covered += int(np.count_nonzero(id_map[m]))
        id_map[m] = ids[k]
    present = set(np.unique(id_map).tolist()) - {0}
    name = item.name or Path(item.source).stem or "image"
    hidden = sum(1 for i, a in zip(ids, areas) if a > 0 and i not in present)
    if covered:
        summary.overlapping[name] = covered
    if hidden:
        summary.hidden[name] = hidden
    classes = {i: int(c) for i, c in zip(ids, item.class_ids) if i in present}
    staged = _Staged(name, (h, w), zlib.compress(id_map.tobytes(), 1), classes)
    src = Path(item.source) if item.source else None
    if src is None or not src.is_file():
        staged.image = item.image
    elif copy_images:
        staged.copy_from = src
    else:
        staged.path = src
    return staged


def _class_table(ds: Dataset, staged: list[_Staged]) -> tuple[list[str], list[Color], dict[int, int]]:
    """(project class names, colours, {source class id: project class index})."""
    used = sorted({c for s in staged for c in s.classes.values()})
    names = list(ds.classes) if ds.classes else None
    if names is not None:
        bad = [c for c in used if c >= len(names)]
        if bad:
            raise ValueError(f"{ds.root}: class id {bad[0]} has no name (the source names {len(names)} classes)")
        # the project needs unique, non-empty names
        seen: set[str] = set()
        clean = []
        for k, n in enumerate(names):
            n = str(n).strip() or f"class_{k}"
            base, j = n, 2
            while n in seen:
                n, j = f"{base} ({j})", j + 1
            seen.add(n)
            clean.append(n)
        colors = list(ds.colors) if ds.colors is not None and len(ds.colors) == len(clean) else \
            default_colors(len(clean))
        return clean, [tuple(int(v) for v in c) for c in colors], {c: c for c in used}
    top = max(used, default=-1)
    clean = [f"class_{k}" for k in range(top + 1)]
    mapping = {c: c for c in used if c >= 0}
    if -1 in used or not clean:
        mapping[-1] = len(clean)
        clean.append(UNCLASSIFIED)
    return clean, default_colors(len(clean)), mapping


def import_labels(src: str | Path, project_folder: str | Path, format: str = "auto", *,
                  masks: str | Path | None = None, split: str | None = None, min_area: int = 0,
                  copy_images: bool = False, progress: bool = False,
                  on_progress: Callable[[int, int], None] | None = None, **reader_kw) -> ImportSummary:
    """Start a new project in ``project_folder`` (new or empty) from the labelled images at ``src``.

    ``src``: a dataset folder (or COCO JSON file) in any reader format (``format``: auto, ours, camvid, coco, yolo,
    folder, ...), or, with ``masks``, a folder of images whose masks (same file stems) are in ``masks``.
    ``split``: only this split of the dataset; ``min_area``: drop objects with fewer pixels; ``copy_images``: copy
    the images into the project instead of referencing them; extra keywords go to the reader (``void_index`` for
    camvid, ``images_dir`` for coco, ...). ``on_progress(done, total)`` is called after each image is read.

    Returns an :class:`ImportSummary` whose ``project`` is the new project, open for writing. Bad input raises one
    ValueError / OSError naming the file; nothing is written then.
    """
    from tqdm import tqdm

    from napari_ultratinysam.data.staging import staged_dir

    folder = Path(project_folder)
    _check_target(folder)
    ds = open_source(src, format, masks, split, min_area, **reader_kw)
    if not len(ds):
        raise ValueError(f"{src}: no images to import")
    summary = ImportSummary(str(folder), str(src), ds.format or format)

    staged: list[_Staged] = []
    for k, item in enumerate(tqdm(ds, total=len(ds), desc="import", unit="img", disable=not progress)):
        staged.append(_stage_item(item, copy_images, summary))
        if on_progress is not None:
            on_progress(k + 1, len(ds))
    names, colors, class_of = _class_table(ds, staged)
    _check_target(folder)  # still free after the (possibly long) read

    with staged_dir(folder, keep_existing=False) as stage:
        taken: set[str] = set()
        paths = []
        for s in staged:
            if s.path is not None:
                paths.append(s.path)
                continue
            (stage / IMAGES_DIR).mkdir(exist_ok=True)
            if s.copy_from is not None:  # the file as it is
                dst = stage / IMAGES_DIR / (_unique(s.name, taken) + s.copy_from.suffix.lower())
                shutil.copyfile(s.copy_from, dst)
            else:  # no file behind it (training shards): its decoded pixels
                from PIL import Image

                dst = stage / IMAGES_DIR / f"{_unique(s.name, taken)}.png"
                Image.fromarray(s.image).save(dst, format="PNG")
            summary.copied_images += 1
            paths.append(dst)
        project = Project.create(stage, paths, classes=names, colors=colors)
        try:
            for i, s in enumerate(staged):
                if not s.classes:
                    continue
                project.set_annotation(i, s.id_map(), {k: class_of[c] for k, c in s.classes.items()})
                summary.annotated += 1
                summary.objects += len(s.classes)
        finally:
            project.close()  # the final folder is opened again once it is in place
    summary.images = len(staged)
    summary.classes = names
    summary.project = Project.open(folder)
    return summary
