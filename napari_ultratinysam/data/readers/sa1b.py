"""SA-1B style: ``NAME.jpg`` + ``NAME.json`` with ``annotations[*].segmentation`` as COCO RLE {size, counts}.

Also home of the COCO RLE helpers shared with the COCO reader: pycocotools' codec plus the checks it lacks.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from napari_ultratinysam.data.readers._common import (
    Dataset,
    filter_area,
    image_size,
    list_images,
    read_rgb,
    stack_masks,
)
from napari_ultratinysam.data.types import AnnotatedImage

# pycocotools' compressed counts: characters '0'..'o' (48..111), bit 0x20 set on every character of a count but
# its last. Its C parser checks neither and reads past the end of a string cut inside a count, so check first.
_COMPRESSED = re.compile(rb"(?:[0-o]*[0-O])?")


def _decode_compressed(counts: bytes, h: int, w: int) -> np.ndarray:
    if not _COMPRESSED.fullmatch(counts):
        raise ValueError("RLE counts string is not pycocotools' compressed form (characters '0'..'o', the last "
                         "count complete)")
    try:
        mask = mask_utils.decode({"size": [h, w], "counts": counts})
    except ValueError:  # pycocotools refuses runs past h*w pixels ...
        raise ValueError(f"RLE counts sum to more than h*w = {h * w}") from None
    if h * w == 0:
        return mask.astype(bool)
    # ... but leaves the pixels after runs that stop short unwritten (uninitialised memory): runs that cover the
    # h*w pixels exactly overrun one pixel fewer.
    try:
        mask_utils.decode({"size": [1, h * w - 1], "counts": counts})
    except ValueError:
        return mask.astype(bool)
    raise ValueError(f"RLE counts sum to less than h*w = {h * w}")


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE ``{'size': [h, w], 'counts': list | str}`` -> (h, w) bool mask (column-major runs, 0s first)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("RLE must be a dict with 'size': [h, w] and 'counts'") from None
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE counts string is not pycocotools' compressed form (non-ASCII)") from None
    if isinstance(counts, bytes):
        return _decode_compressed(counts, h, w)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise ValueError("RLE counts must be a flat list of non-negative integers")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected h*w = {h * w}")
    if h * w == 0:  # pycocotools writes past its buffer when re-encoding an empty count list
        return np.zeros((h, w), dtype=bool)
    return mask_utils.decode(mask_utils.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)).astype(bool)


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """(h, w) bool mask -> COCO RLE dict; ``compressed`` gives the string form, else a list of counts."""
    m = np.asarray(mask, dtype=bool)
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
        return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}
    # the list form, which pycocotools does not write: run lengths of the column-major pixels, 0s first
    flat = m.T.ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": runs}


def detect(path: Path) -> bool:
    if not path.is_dir():
        return False
    for js in sorted(path.glob("*.json"))[:1]:
        if not any((path / f"{js.stem}{e}").is_file() for e in (".jpg", ".jpeg", ".png")):
            return False
        try:
            ann = json.loads(js.read_text(encoding="utf-8")).get("annotations")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(ann, list) and (not ann or isinstance(ann[0].get("segmentation"), dict))
    return False


def load_item(img_path: Path, json_path: Path, min_area: int) -> AnnotatedImage:
    image = read_rgb(img_path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        anns = doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: not an SA-1B annotation file ({type(e).__name__}: {e})") from None
    h, w = image.shape[:2]
    masks = []
    for k, ann in enumerate(anns):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict):
            raise ValueError(f"{json_path}: annotation {k} has no RLE segmentation")
        if [int(v) for v in seg.get("size", [])] != [h, w]:
            raise ValueError(f"{json_path}: size mismatch, annotation {k} is {seg.get('size')} (h, w) but image "
                             f"{img_path.name} is [{h}, {w}]")
        try:
            masks.append(rle_decode(seg))
        except ValueError as e:
            raise ValueError(f"{json_path}: annotation {k}: {e}") from None
    arr = stack_masks(masks, (h, w))
    arr, cls = filter_area(arr, np.full(len(arr), -1, dtype=np.int64), min_area)
    return AnnotatedImage(image, arr, cls, name=img_path.stem, source=str(img_path))


def read(path: Path, split: str | None = None, min_area: int = 0) -> Dataset:
    """Read a folder of SA-1B image/json pairs (``split`` selects a subfolder)."""
    root = path / split if split else path
    pairs = []
    for img in list_images(root):
        js = img.with_suffix(".json")
        if not js.is_file():
            raise ValueError(f"{img}: missing mask (expected {js})")
        pairs.append((img, js))
    return Dataset([p[0].stem for p in pairs], lambda i: load_item(*pairs[i], min_area), format="sa1b", root=root,
                   size_of=lambda i: image_size(pairs[i][0]))
