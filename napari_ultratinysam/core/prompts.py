"""The ONE prompt simulator, shared by training and evaluation.

Every function takes (H, W) masks (anything ``!= 0`` is foreground) and returns image-pixel coordinates as
float32 ``(x, y)`` = (column, row) of a pixel, the convention of the public predictor API and of ``transforms.py``.
Boxes are ``(x0, y0, x1, y1)`` with x1/y1 the last foreground column/row (SAM's training convention).

Evaluation uses the deterministic functions (``interior_point``, ``click_from_error``, ``tight_box``);
training uses the sampled ones (``random_point``, ``random_points``, ``noisy_box``, ``correction_click``).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

ClickMode = Literal["area", "depth"]
_EIGHT = np.ones((3, 3), dtype=bool)


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) mask, got shape {m.shape}")
    return m if m.dtype == bool else m != 0


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {b.shape} does not match {name_a} shape {a.shape}")


def _xy(row: int, col: int) -> np.ndarray:
    return np.array([col, row], dtype=np.float32)


def border_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel, where the image border
    counts as background (the mask is padded with one background pixel on every side). Background -> 0."""
    m = _as_mask(mask, "mask")
    return ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]


def _peak(dist: np.ndarray, rng: np.random.Generator | None) -> tuple[int, int]:
    """(row, col) of the maximum of ``dist``. Ties: uniform if ``rng`` is given, else the tied pixel nearest
    to the centroid of all tied pixels (first in raster order if still tied) - central and deterministic."""
    ys, xs = np.nonzero(dist == dist.max())
    if rng is not None:
        i = int(rng.integers(len(ys)))
    else:
        d2 = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
        i = int(np.argmin(d2))
    return int(ys[i]), int(xs[i])


def interior_point(mask: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The pixel of ``mask`` farthest from its boundary (distance-transform maximum; the image border counts
    as boundary). Always inside the mask, unlike the centre of mass. Returns (2,) float32 (x, y)."""
    m = _as_mask(mask, "mask")
    box = ndimage.find_objects(m.astype(np.uint8))
    if not box:
        raise ValueError("mask: empty mask has no interior point")
    sl = box[0]
    crop = m[sl]
    dist = border_distance(crop)  # cropping is exact: outside the crop is background anyway
    r, c = _peak(dist, rng)
    return _xy(r + sl[0].start, c + sl[1].start)


def centre_of_mass(mask: np.ndarray) -> np.ndarray:
    """Mean pixel coordinate (x, y) of the mask: the ORIGINAL paper's 1-click prompt. It can fall outside
    non-convex or thin objects; use :func:`interior_point` for a click that is guaranteed to be inside."""
    m = _as_mask(mask, "mask")
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("mask: empty mask has no centre of mass")
    return np.array([xs.mean(), ys.mean()], dtype=np.float32)


def error_masks(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(false negatives, false positives) of ``pred`` against ``gt``, both excluding ``ignore`` pixels."""
    g, p = _as_mask(gt, "gt"), _as_mask(pred, "pred")
    _same_shape(g, p, "gt", "pred")
    fn, fp = g & ~p, p & ~g
    if ignore is not None:
        ig = _as_mask(ignore, "ignore")
        _same_shape(g, ig, "gt", "ignore")
        fn &= ~ig
        fp &= ~ig
    return fn, fp


def has_error(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> bool:
    fn, fp = error_masks(gt, pred, ignore)
    return bool(fn.any() or fp.any())


def _largest_component(err: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask of the largest 8-connected component, its area); (empty, 0) when ``err`` is empty."""
    lab, n = ndimage.label(err, structure=_EIGHT)
    if n == 0:
        return np.zeros_like(err), 0
    sizes = np.bincount(lab.ravel())[1:]
    k = int(np.argmax(sizes))
    return lab == (k + 1), int(sizes[k])


def click_from_error(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
                     mode: ClickMode = "area") -> tuple[np.ndarray, int]:
    """Next evaluation click: ((x, y) float32, label), label 1 in a false negative, 0 in a false positive.

    mode="area" (default): the click goes to the interior point of the largest (by pixel count, 8-connected)
    error region; ties between a false-negative and a false-positive region go to the false negative.
    mode="depth": exactly RITM/SimpleClick's clicker - the error pixel farthest from any non-error pixel
    over all false negatives vs all false positives (positive only if strictly deeper).
    ``ignore`` pixels are never errors. Raises ValueError if ``pred`` has no error.
    """
    fn, fp = error_masks(gt, pred, ignore)
    if not (fn.any() or fp.any()):
        raise ValueError("pred: no error region left (pred equals gt outside the ignore region)")
    if mode == "area":
        fn_c, fn_a = _largest_component(fn)
        fp_c, fp_a = _largest_component(fp)
        positive = fn_a >= fp_a
        return interior_point(fn_c if positive else fp_c), int(positive)
    if mode == "depth":
        d_fn, d_fp = border_distance(fn), border_distance(fp)
        positive = d_fn.max() > d_fp.max()
        r, c = _peak(d_fn if positive else d_fp, None)
        return _xy(r, c), int(positive)
    raise ValueError(f"mode: expected 'area' or 'depth', got {mode!r}")


def random_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One pixel drawn uniformly from the mask. Returns (2,) float32 (x, y)."""
    return random_points(mask, 1, rng)[0]


def random_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` pixels drawn uniformly from the mask, without replacement when the mask has at least ``k``
    pixels (with replacement otherwise). Returns (k, 2) float32 (x, y)."""
    m = _as_mask(mask, "mask")
    if k < 0:
        raise ValueError(f"k: must be >= 0, got {k}")
    idx = np.flatnonzero(m)
    if len(idx) == 0:
        raise ValueError("mask: empty mask, cannot sample a point")
    pick = rng.choice(idx, size=k, replace=len(idx) < k)
    rows, cols = np.divmod(pick, m.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) float32: first/last foreground column and row (inclusive pixel indices)."""
    m = _as_mask(mask, "mask")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) == 0:
        raise ValueError("mask: empty mask has no bounding box")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def noisy_box(mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """SAM-style training box: the tight box, each coordinate moved by U(-1, 1) * min(noise * side, max_px)
    (side = box width for x, height for y), then clamped to the image [0, W-1] x [0, H-1]."""
    m = _as_mask(mask, "mask")
    box = tight_box(m)
    w, h = box[2] - box[0], box[3] - box[1]
    bound = np.minimum(np.array([w, h, w, h], dtype=np.float32) * noise, max_px)
    box = box + rng.uniform(-1.0, 1.0, size=4).astype(np.float32) * bound
    hi = np.array([m.shape[1] - 1, m.shape[0] - 1] * 2, dtype=np.float32)
    return np.clip(box, 0.0, hi).astype(np.float32)


def correction_click(gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, prob_from_gt: float = 0.1,
                     ignore: np.ndarray | None = None, p_error_interior: float = 0.0) -> tuple[np.ndarray, int]:
    """Training correction click (SAM2 ``sample_random_points_from_errors``): one pixel drawn uniformly from
    the union of errors, labelled 1 in a false negative and 0 in a false positive. With probability
    ``p_error_interior`` the click is placed as the evaluation clicker places it instead (``click_from_error``:
    the interior of the largest error region), so that training sees the clicks a user makes. With probability
    ``prob_from_gt`` the prediction is ignored and a positive click is drawn uniformly from ``gt``. When there
    is no error, a negative click is drawn from the background outside ``ignore`` (a positive one from ``gt``
    if there is no such background).
    Returns ((x, y) float32, label)."""
    g, p = _as_mask(gt, "gt"), _as_mask(pred, "pred")
    if g.any() and rng.random() < prob_from_gt:
        p = np.zeros_like(g)
    fn, fp = error_masks(g, p, ignore)
    err = fn | fp
    if not err.any():
        bg = ~g if ignore is None else ~g & ~_as_mask(ignore, "ignore")
        if bg.any():
            return random_point(bg, rng), 0
        return random_point(g if g.any() else np.ones_like(g), rng), int(g.any())
    if p_error_interior > 0 and rng.random() < p_error_interior:
        return click_from_error(g, p, ignore)
    pt = random_point(err, rng)
    return pt, int(fn[int(pt[1]), int(pt[0])])
