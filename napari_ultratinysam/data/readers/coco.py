"""COCO instances JSON (polygons and RLE). Crowd objects (``iscrowd=1``) are skipped unless ``include_crowd``.

``path`` is either a JSON file (images next to it, in ``images_dir``) or a folder with ``annotations/*.json``
and images in ``SPLIT/images``, ``SPLIT``, ``images/SPLIT``, ``SPLIT2017`` or ``images``.
Class index = position of the category in the categories list sorted by id.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_ultratinysam.data.readers._common import Dataset, filter_area, read_rgb, stack_masks
from napari_ultratinysam.data.readers.sa1b import rle_decode
from napari_ultratinysam.data.types import AnnotatedImage


def _load_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot parse JSON ({e})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO instances file (needs images, annotations, categories)")
    return doc


def _is_coco_json(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"images"' in head or '"annotations"' in head or '"info"' in head or '"licenses"' in head


def _json_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    ann_dir = path / "annotations"
    files = sorted(p for p in ann_dir.glob("*.json") if _is_coco_json(p)) if ann_dir.is_dir() else []
    if not files:
        raise ValueError(f"{path}: no COCO annotation JSON in {ann_dir}")
    if split is not None:
        files = [p for p in files if _split_of(p) == split]
        if not files:
            raise ValueError(f"{path}: no annotation file for split {split!r} in {ann_dir}")
    return files


def _split_of(json_path: Path) -> str:
    stem = json_path.stem
    return stem.split("_", 1)[1] if stem.startswith("instances_") else stem


def _images_dir(json_path: Path, images_dir: Path | None) -> Path:
    if images_dir is not None:
        return images_dir
    split = _split_of(json_path)
    root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    for cand in (root / split / "images", root / split, root / "images" / split, root / f"{split}2017",
                 root / "images", json_path.parent):
        if cand.is_dir() and any(cand.glob("*.jp*g")) or cand.is_dir() and any(cand.glob("*.png")):
            return cand
    raise ValueError(f"{json_path}: cannot find its image folder (tried {root / split / 'images'}, ...); "
                     f"pass images_dir")


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json" and _is_coco_json(path)
    ann = path / "annotations"
    return ann.is_dir() and any(_is_coco_json(p) for p in ann.glob("*.json"))


def polygon_mask(polys: list, h: int, w: int) -> np.ndarray:
    """COCO polygons (lists of x, y in pixel-edge coordinates) -> (h, w) bool mask."""
    # Not pycocotools' frPyObjects: it rasterises another way (its masks match COCO's ``area`` where this one,
    # outline included, is ~2 % larger), so every COCO polygon mask, the training data made from them and the
    # published coco_subsets_val figures would change.
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polys:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) - 0.5  # pixel edges -> pixel centres
        if len(xy) >= 3:
            draw.polygon([tuple(p) for p in xy], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _ann_mask(ann: dict, h: int, w: int, json_path: Path) -> np.ndarray:
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            return polygon_mask(seg, h, w)
        if isinstance(seg, dict):
            if [int(v) for v in seg.get("size", [])] != [h, w]:
                raise ValueError(f"size mismatch, RLE is {seg.get('size')} (h, w) but the image is [{h}, {w}]")
            return rle_decode(seg)
    except ValueError as e:
        raise ValueError(f"{json_path}: annotation {ann.get('id')}: {e}") from None
    raise ValueError(f"{json_path}: annotation {ann.get('id')} has no polygon or RLE segmentation")


class _CocoFile:
    """One COCO JSON, indexed by image."""

    def __init__(self, json_path: Path, images_dir: Path | None, cat_index: dict[int, int], include_crowd: bool):
        doc = _load_json(json_path)
        self.json_path = json_path
        self.dir = _images_dir(json_path, images_dir)
        self.images = sorted(doc["images"], key=lambda im: im["file_name"])
        self.by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in doc["annotations"]:
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if ann.get("category_id") not in cat_index:
                raise ValueError(f"{json_path}: annotation {ann.get('id')} has unknown class "
                                 f"(category_id {ann.get('category_id')})")
            if ann.get("image_id") not in self.by_image:
                raise ValueError(f"{json_path}: annotation {ann.get('id')} refers to unknown image_id "
                                 f"{ann.get('image_id')}")
            self.by_image[ann["image_id"]].append(ann)
        self.cat_index = cat_index

    def load(self, k: int, min_area: int, split: str) -> AnnotatedImage:
        entry = self.images[k]
        img_path = self.dir / entry["file_name"]
        if not img_path.is_file():
            raise ValueError(f"{self.json_path}: image file {img_path} not found")
        image = read_rgb(img_path)
        h, w = image.shape[:2]
        if (int(entry.get("height", h)), int(entry.get("width", w))) != (h, w):
            raise ValueError(f"{img_path}: size mismatch, image is {w}x{h} but {self.json_path.name} says "
                             f"{entry.get('width')}x{entry.get('height')}")
        anns = self.by_image[entry["id"]]
        masks = stack_masks([_ann_mask(a, h, w, self.json_path) for a in anns], (h, w))
        cls = np.array([self.cat_index[a["category_id"]] for a in anns], dtype=np.int64)
        masks, cls = filter_area(masks, cls, min_area)
        return AnnotatedImage(image, masks, cls, name=Path(entry["file_name"]).stem, source=str(img_path),
                              extra={"split": split, "image_id": entry["id"]})


def read(path: Path, split: str | None = None, min_area: int = 0, include_crowd: bool = False,
         images_dir: str | Path | None = None) -> Dataset:
    """Read one COCO JSON or a folder of them (one per split)."""
    files = _json_files(path, split)
    cats = sorted(_load_categories(files[0]), key=lambda c: c["id"])
    cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
    cocos = [_CocoFile(f, Path(images_dir) if images_dir else None, cat_index, include_crowd) for f in files]
    refs = [(ci, k) for ci, c in enumerate(cocos) for k in range(len(c.images))]
    if not refs:
        raise ValueError(f"{path}: empty dataset (no images listed)")
    splits = [_split_of(cocos[ci].json_path) for ci, _ in refs]
    names = [Path(cocos[ci].images[k]["file_name"]).stem for ci, k in refs]

    def load(i: int) -> AnnotatedImage:
        ci, k = refs[i]
        return cocos[ci].load(k, min_area, splits[i])

    return Dataset(names, load, classes=[c["name"] for c in cats], format="coco", root=path, splits=splits,
                   size_of=lambda i: (int(cocos[refs[i][0]].images[refs[i][1]]["height"]),
                                      int(cocos[refs[i][0]].images[refs[i][1]]["width"])))


def _load_categories(path: Path) -> list[dict]:
    cats = _load_json(path)["categories"]
    if not cats:
        raise ValueError(f"{path}: no categories")
    return cats
