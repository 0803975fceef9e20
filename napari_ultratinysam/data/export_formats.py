"""COCO and YOLO dataset writers, driven by ``export.export_dataset(..., format="coco" | "yolo")``.

COCO instances layout of ``out_dir``::

    images/SPLIT/NAME.png|jpg             images (name kept)
    annotations/instances_SPLIT.json      images, categories (id = class index + 1), annotations with RLE masks
                                          (pycocotools), area, bbox, iscrowd 0; overlapping objects kept whole

YOLO segmentation layout (Ultralytics)::

    images/SPLIT/NAME.png|jpg
    labels/SPLIT/NAME.txt                 one line per object: class x1 y1 x2 y2 ... normalised to [0, 1]
    data.yaml                             train / val / test image folders (relative to the yaml), names

A YOLO object is one polygon: an object in several pieces becomes one outline joined by zero-width bridges (as
Ultralytics' converters do), and holes are filled, which the format cannot express. Objects without a class
(class -1) go to an extra class "object". Splits are assigned as in the CamVid export (a hash of the name), and
both exports are written whole (an existing export of the same format in ``out_dir`` is replaced).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from napari_ultratinysam.data.types import AnnotatedImage

COCO_TAG = "napari-ultratinysam/coco-instances"
YOLO_TAG = "napari-ultratinysam/yolo-segmentation"
UNCLASSIFIED = "object"
SIMPLIFY = 0.5  # pixels: polygon simplification

ImageWriter = Callable[[Path, np.ndarray], None]


def _has_tag(path: Path, tag: str) -> bool:
    """Whether ``tag`` is in the head of ``path``: both writers put their tag first, so a big file is not read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return tag in f.read(4096)
    except OSError:
        return False


def detect_export(out_dir: Path) -> str | None:
    """'coco' or 'yolo' when ``out_dir`` holds such an export written by this tool, else None."""
    ann = out_dir / "annotations"
    if ann.is_dir() and any(_has_tag(p, COCO_TAG) for p in sorted(ann.glob("instances_*.json"))):
        return "coco"
    yaml_path = out_dir / "data.yaml"
    if yaml_path.is_file() and _has_tag(yaml_path, YOLO_TAG):
        return "yolo"
    return None


class _Classes:
    """The source's classes, plus "object" for class -1, appended when first needed (earlier ids never move)."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.known = len(self.names)
        self.unclassified: int | None = None

    def index(self, c: int, where: str) -> int:
        if c >= self.known:
            raise ValueError(f"{where}: unknown class {c} (classes 0..{self.known - 1})")
        if c >= 0:
            return c
        if self.unclassified is None:
            self.unclassified = len(self.names)
            name = UNCLASSIFIED
            while name in self.names:
                name = f"_{name}"
            self.names.append(name)
        return self.unclassified


# ---------------------------------------------------------------- COCO


class _CocoWriter:
    def __init__(self, stage: Path, classes: _Classes, image_format: str, description: str,
                 write_image: ImageWriter):
        try:
            from pycocotools import mask as mask_utils
        except ImportError:  # pragma: no cover - a dependency
            raise ValueError("format coco: needs pycocotools (pip install pycocotools)") from None
        self.mask_utils = mask_utils
        self.stage, self.classes, self.ext, self.description = stage, classes, image_format, description
        self.write_image = write_image
        self.images: dict[str, list[dict]] = {}
        self.annotations: dict[str, list[dict]] = {}
        self.next_image, self.next_ann = 1, 1

    def add(self, item: AnnotatedImage, name: str, split: str) -> int:
        file = f"{name}.{self.ext}"
        self.write_image(self.stage / "images" / split / file, item.image)
        h, w = item.image.shape[:2]
        image_id = self.next_image
        self.next_image += 1
        self.images.setdefault(split, []).append({"id": image_id, "file_name": file, "height": h, "width": w})
        anns = self.annotations.setdefault(split, [])
        n = 0
        for m, c in zip(item.masks, item.class_ids):
            if not m.any():
                continue
            cat = self.classes.index(int(c), item.source or item.name)
            rle = self.mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": self.next_ann, "image_id": image_id, "category_id": cat + 1,
                         "segmentation": {"size": [int(v) for v in rle["size"]],
                                          "counts": rle["counts"].decode("ascii")},
                         "area": int(self.mask_utils.area(rle)),
                         "bbox": [float(v) for v in self.mask_utils.toBbox(rle)], "iscrowd": 0})
            self.next_ann += 1
            n += 1
        return n

    def finish(self, splits: Sequence[str]) -> None:
        from napari_ultratinysam._version import __version__

        cats = [{"id": k + 1, "name": n, "supercategory": "object"} for k, n in enumerate(self.classes.names)]
        info = {"format": COCO_TAG, "description": f"exported by napari-ultratinysam from {self.description}",
                "version": __version__, "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (self.stage / "annotations").mkdir(parents=True, exist_ok=True)
        for s in splits:
            doc = {"info": info, "licenses": [], "images": self.images.get(s, []),
                   "annotations": self.annotations.get(s, []), "categories": cats}
            (self.stage / "annotations" / f"instances_{s}.json").write_text(json.dumps(doc) + "\n",
                                                                            encoding="utf-8")


# ---------------------------------------------------------------- YOLO


def _outer_ring(component: np.ndarray) -> np.ndarray:
    """(K, 2) x, y centres of the boundary pixels of one 4-connected component without holes, in order."""
    from skimage import measure

    padded = np.pad(component, 1).astype(np.uint8)
    # a level just under 1 runs the contour next to the foreground pixel centres: rounded, they are the boundary
    # pixels (as cv2.findContours gives); find_contours keeps the foreground 4-connected, as ndimage.label does
    ring = np.round(max(measure.find_contours(padded, 0.999), key=len))
    keep = np.any(ring != np.roll(ring, 1, axis=0), axis=1)
    ring = ring[keep] if keep.any() else ring[:1]
    closed = np.concatenate([ring, ring[:1]])
    simple = measure.approximate_polygon(closed, tolerance=SIMPLIFY)
    if len(simple) >= 4:
        ring = simple[:-1]
    return ring[:, ::-1] - 1.0


def _bridge(rings: list[np.ndarray]) -> np.ndarray:
    """Join rings into one closed path through zero-width bridges between their nearest points."""
    from scipy.spatial import cKDTree

    path = rings[0]
    for r in rings[1:]:
        dist, idx = cKDTree(path).query(r)
        j = int(np.argmin(dist))
        i = int(idx[j])
        r = np.roll(r, -j, axis=0)
        path = np.concatenate([path[:i + 1], r, r[:1], path[i:]])
    return path


def mask_polygon(mask: np.ndarray) -> np.ndarray | None:
    """(K, 2) x, y pixel-centre polygon of a mask (pieces bridged, holes filled); None for an empty mask."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    boxes = ndimage.find_objects(labels)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    rings = []
    for k in np.argsort(-sizes, kind="stable"):
        sl = boxes[k]
        comp = ndimage.binary_fill_holes(labels[sl] == k + 1)
        rings.append(_outer_ring(comp) + (sl[1].start, sl[0].start))
    path = _bridge(rings)
    while len(path) < 3:  # a pixel or a 2-pixel piece: a degenerate polygon that still draws it
        path = np.concatenate([path, path[:1]])
    return path


def normalise(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixel centres -> [0, 1] image coordinates, rounded up at 6 decimals: readers that truncate (PIL, the
    Ultralytics rasteriser) then land on the pixel itself, not on its left or upper neighbour."""
    xy = (poly + 0.5) / (w, h) + 1e-7
    return np.clip(np.ceil(xy * 1e6) / 1e6, 0.0, 1.0)


class _YoloWriter:
    def __init__(self, stage: Path, classes: _Classes, image_format: str, description: str,
                 write_image: ImageWriter):
        self.stage, self.classes, self.ext, self.description = stage, classes, image_format, description
        self.write_image = write_image

    def add(self, item: AnnotatedImage, name: str, split: str) -> int:
        self.write_image(self.stage / "images" / split / f"{name}.{self.ext}", item.image)
        h, w = item.image.shape[:2]
        lines = []
        for m, c in zip(item.masks, item.class_ids):
            poly = mask_polygon(m)
            if poly is None:
                continue
            cat = self.classes.index(int(c), item.source or item.name)
            xy = normalise(poly, h, w)
            lines.append(" ".join([str(cat)] + [f"{v:.6f}" for v in xy.ravel()]))
        label = self.stage / "labels" / split / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
        return len(lines)

    def finish(self, splits: Sequence[str]) -> None:
        import yaml

        doc = {"format": YOLO_TAG, "description": f"exported by napari-ultratinysam from {self.description}"}
        for s in splits:
            (self.stage / "images" / s).mkdir(parents=True, exist_ok=True)
            (self.stage / "labels" / s).mkdir(parents=True, exist_ok=True)
            doc[s] = f"images/{s}"
        doc["nc"] = len(self.classes.names)
        doc["names"] = dict(enumerate(self.classes.names))
        (self.stage / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                                              encoding="utf-8")


# ---------------------------------------------------------------- the writers, for export.export_dataset


def format_writer(fmt: str, stage: Path, classes: Sequence[str], image_format: str, description: str,
                  write_image: ImageWriter):
    """The COCO or YOLO writer of one staged export: ``add(item, name, split) -> objects written`` per image,
    then ``finish(used_splits)``; ``.classes.names`` are the classes written (``classes`` plus "object" for
    objects without a class, when there are some). Images go through ``write_image(path, rgb)``."""
    kinds = {"coco": _CocoWriter, "yolo": _YoloWriter}
    if fmt not in kinds:
        raise ValueError(f"format: expected one of {', '.join(kinds)}, got {fmt!r}")
    return kinds[fmt](stage, _Classes(classes), image_format, description, write_image)
