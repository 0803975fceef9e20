"""SA-1B style: ``NAME.jpg`` + ``NAME.json`` with ``annotations[*].segmentation`` as COCO RLE {size, counts}.

Also home of the numpy COCO RLE codec (uncompressed list counts and the compressed string form), shared with
the COCO reader. No pycocotools.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_ultratinysam.data.readers._common import (
    Dataset,
    filter_area,
    image_size,
    list_images,
    read_rgb,
    stack_masks,
)
from napari_ultratinysam.data.types import AnnotatedImage


def _string_to_counts(s: str | bytes) -> list[int]:
    """Decode pycocotools' compressed counts string (6-bit chunks, 5 data bits, delta-coded after the 2nd)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(data[p])!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _counts_to_string(counts: list[int]) -> str:
    """Inverse of :func:`_string_to_counts` (pycocotools ``rleToString``)."""
    out = bytearray()
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10) == 0 and x == 0 or (ch & 0x10) != 0 and x == -1)
            if more:
                ch |= 0x20
            out.append(ch + 48)
    return out.decode("ascii")


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE ``{'size': [h, w], 'counts': list | str}`` -> (h, w) bool mask (column-major runs, 0s first)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ValueError("RLE must be a dict with 'size': [h, w] and 'counts'") from None
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise ValueError("RLE counts must be a flat list of non-negative integers")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected h*w = {h * w}")
    flat = np.repeat((np.arange(len(runs)) % 2).astype(bool), runs)
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """(h, w) bool mask -> COCO RLE dict; ``compressed`` gives the string form, else a list of counts."""
    m = np.asarray(mask, dtype=bool)
    flat = m.T.ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    counts: list[int] | str = _counts_to_string(runs) if compressed else runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


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
