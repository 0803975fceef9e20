"""The ONE place for image preparation and image <-> model coordinate mapping.

Model input: the image's longest side is resized to ``size`` (default 128), the result is padded at the
bottom/right to ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean/std.
Prompt coordinates in the public API are image pixels (x = column, y = row); model coordinates are pixels of the
resized (unpadded) image. A pixel centre at image coordinate x maps to x * scale (SAM convention; the prompt
encoder adds 0.5 itself).

Everything here is numpy: the inference path (onnxruntime / OpenVINO) runs without torch. ``normalize`` and
``_bilinear_weights`` keep their torch results for training and the IMX500 code, and import torch only when called.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import sparse

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Images with more values than this are converted without a float copy of the whole image (a huge image must not
# need several times its own size in memory to make a 128-pixel model input; the resize never makes one).
LARGE_IMAGE_VALUES = 1 << 26
_CHUNK_VALUES = 1 << 22  # values per block of the blockwise conversion
_STRIP_VALUES = 1 << 19  # input values per strip of the resize's vertical pass


@dataclass(frozen=True)
class Geometry:
    """How an image of (orig_h, orig_w) sits inside the square model input of side ``size``."""

    orig_h: int
    orig_w: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.orig_h, self.orig_w)

    @property
    def new_hw(self) -> tuple[int, int]:
        s = self.scale
        return max(1, int(round(self.orig_h * s))), max(1, int(round(self.orig_w * s)))

    def to_model(self, points_xy: np.ndarray) -> np.ndarray:
        """Image pixel coordinates (..., 2) as (x, y) -> model input coordinates."""
        p = np.asarray(points_xy, dtype=np.float32)
        nh, nw = self.new_hw
        return p * np.array([nw / self.orig_w, nh / self.orig_h], dtype=np.float32)

    def to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Model input coordinates -> image pixel coordinates."""
        p = np.asarray(points_xy, dtype=np.float32)
        nh, nw = self.new_hw
        return p * np.array([self.orig_w / nw, self.orig_h / nh], dtype=np.float32)


def geometry_for(image_hw: tuple[int, int], size: int = 128) -> Geometry:
    return Geometry(int(image_hw[0]), int(image_hw[1]), int(size))


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any 2-D grayscale, RGB or RGBA image of dtype uint8/uint16/int/float -> (H, W, 3) uint8.

    Integer images wider than 8 bits and float images are scaled by their own min/max (float images already in
    [0, 1] are kept as they are). Raises ValueError with one clear line for anything else.
    """
    a = np.asarray(image)
    if a.dtype == bool or a.dtype.kind not in "uif":
        raise ValueError(f"{name}: unsupported dtype {a.dtype}; expected uint8, uint16, int or float")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{name}: expected a 2-D grayscale, RGB or RGBA image (H, W[, 1|3|4]), got shape {tuple(np.shape(image))}"
        )
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"{name}: image is too small ({a.shape[0]}x{a.shape[1]})")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        out = a
    else:
        out = _scale_to_uint8(a, name)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _scale_to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """(H, W, C) non-uint8 -> uint8 as :func:`to_rgb_uint8` describes, converted in blocks of rows so that no
    float copy of the whole image is held (the same float32 arithmetic per value as a whole-image conversion)."""
    rows = max(1, _CHUNK_VALUES // max(1, a.shape[1] * a.shape[2]))
    blocks = [slice(r, min(a.shape[0], r + rows)) for r in range(0, a.shape[0], rows)]
    lo = hi = None
    for b in blocks:  # float32 rounding is monotonic: the block extremes give the whole image's
        f = a[b].astype(np.float32)
        if not np.all(np.isfinite(f)):
            raise ValueError(f"{name}: image contains NaN or infinite values")
        flo, fhi = float(f.min()), float(f.max())
        lo, hi = (flo, fhi) if lo is None else (min(lo, flo), max(hi, fhi))
    out = np.empty(a.shape, dtype=np.uint8)
    unit = a.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0
    small_int = a.dtype.kind in "ui" and lo >= 0 and hi <= 255 and a.dtype.itemsize == 1
    rng = hi - lo if hi > lo else 1.0
    for b in blocks:
        f = a[b].astype(np.float32)
        if unit:
            out[b] = np.round(f * 255.0).astype(np.uint8)
        elif small_int:
            out[b] = f.astype(np.uint8)
        else:
            out[b] = np.round((f - lo) / rng * 255.0).astype(np.uint8)
    return out


def _aa_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's antialiased bilinear taps along one axis (``F.interpolate(mode="bilinear", align_corners=False,
    antialias=True)``, PIL's triangle filter, widened to the scale when shrinking) -> (rows, cols, weights) of the
    (n_out, n_in) weight matrix's non-zero entries."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5), n_in).astype(np.int64) - xmin, 0, k)
    j = np.arange(k)
    w = np.maximum(0.0, 1.0 - np.abs((j + xmin[:, None] - center[:, None] + 0.5) * invscale))
    w[j[None, :] >= xsize[:, None]] = 0.0
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    rows = np.repeat(np.arange(n_out), k)
    cols = (xmin[:, None] + j).reshape(-1)
    keep = (cols < n_in) & (w.reshape(-1) != 0)
    return rows[keep], cols[keep], w.reshape(-1)[keep].astype(np.float32)


@functools.lru_cache(maxsize=16)
def _aa_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """The (n_out, n_in) resampling matrix of :func:`_aa_taps`, sparse. Cached: the slices of a stack, the images
    of a folder have one size."""
    r, c, w = _aa_taps(n_in, n_out)
    return sparse.csr_matrix((w, (r, c)), shape=(n_out, n_in), dtype=np.float32)


_BAND = 16  # output pixels per dense product of the horizontal pass: only the band's input columns are multiplied


@functools.lru_cache(maxsize=16)
def _aa_bands(n_in: int, n_out: int) -> tuple:
    """:func:`_aa_matrix` as dense (input columns, outputs) blocks of ``_BAND`` outputs: ((j0, j1, a, b, weights
    (b - a, j1 - j0)), ...)."""
    m = _aa_matrix(n_in, n_out).toarray()
    out = []
    for j0 in range(0, n_out, _BAND):
        j1 = min(n_out, j0 + _BAND)
        cols = np.flatnonzero(m[j0:j1].any(axis=0))
        a, b = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        out.append((j0, j1, a, b, np.ascontiguousarray(m[j0:j1, a:b].T)))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _axis0_strips(n_in: int, n_out: int, max_rows: int) -> tuple:
    """:func:`_aa_matrix` cut into strips of output rows whose input rows number at most ``max_rows`` (or one
    output row's taps): ((j0, j1, lo, hi, csr block (j1 - j0, hi - lo)), ...)."""
    m = _aa_matrix(n_in, n_out)
    first = m.indices[m.indptr[:-1]]            # each output row's first and last input row (sorted, monotonic)
    last = m.indices[np.maximum(m.indptr[1:] - 1, 0)]
    out, j0 = [], 0
    while j0 < n_out:
        j1 = j0 + 1
        while j1 < n_out and last[j1] + 1 - first[j0] <= max_rows:
            j1 += 1
        lo, hi = int(first[j0]), int(last[j1 - 1]) + 1
        out.append((j0, j1, lo, hi, m[j0:j1, lo:hi]))
        j0 = j1
    return tuple(out)


def _resize_axis0(x: np.ndarray, n_out: int) -> np.ndarray:
    """(n_in, M) uint8/float32 -> (n_out, M) float32 along axis 0, as sparse products over strips of input rows:
    only a strip is converted to float (a huge image never is whole), and a strip stays in the CPU's cache (the
    encoder that runs next finds its weights there)."""
    out = np.empty((n_out, x.shape[1]), np.float32)
    for j0, j1, lo, hi, block in _axis0_strips(x.shape[0], n_out, max(1, _STRIP_VALUES // max(1, x.shape[1]))):
        out[j0:j1] = block @ x[lo:hi].astype(np.float32, copy=False)
    return out


def _resize_axis1(x: np.ndarray, n_out: int) -> np.ndarray:
    """(R, n_in, C) -> (R, n_out, C) float32 along axis 1: the channels made planar (a copy of the small, already
    resized intermediate), then banded dense products."""
    r, n_in, c = x.shape
    rows = np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float32).reshape(r * c, n_in)
    out = np.empty((r * c, n_out), np.float32)
    for j0, j1, a, b, wt in _aa_bands(n_in, n_out):
        np.matmul(rows[:, a:b], wt, out=out[:, j0:j1])
    return out.reshape(r, c, n_out).transpose(0, 2, 1)


def resize_uint8(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of an (H, W, C) or (H, W) uint8 image: torch's
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` on float32 then rounded, in numpy and
    scipy.sparse (the same taps; the vertical pass first, which is cheaper on the large input and needs no
    transposed copy; the same values within 1 grey level, nearly all equal). A huge image is read in strips of
    rows, never converted to float whole; a read-only input (np.asarray of a PIL image) is only read."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"resize: expected a uint8 image, got {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"resize: expected an (H, W[, C]) image, got shape {a.shape}")
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: output size must be positive, got {tuple(hw)}")
    x = a if a.ndim == 3 else a[..., None]
    H, W, C = x.shape
    if (h, w) == (H, W):
        return np.array(a)
    if h != H:
        x = _resize_axis0(x.reshape(H, W * C), h).reshape(h, W, C)
    if w != W:
        x = _resize_axis1(x, w)
    out = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return out if a.ndim == 3 else out[..., 0]


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) or (N, H, W) masks/labels (any integer or bool dtype): torch's
    ``mode="nearest-exact"`` (source index floor((i + 0.5) * in / out), in float32 like torch)."""
    m = np.asarray(mask)
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    iy = _nearest_exact_index(m.shape[1], int(hw[0]))
    ix = _nearest_exact_index(m.shape[2], int(hw[1]))
    out = m[:, iy][:, :, ix]
    return out[0] if squeeze else out


def _nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)
    src = ((np.arange(n_out, dtype=np.float64) + 0.5) * np.float64(scale)).astype(np.float32)
    return np.minimum(np.floor(src).astype(np.int64), n_in - 1)


def letterbox(image_rgb: np.ndarray, size: int = 128) -> tuple[np.ndarray, Geometry]:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 resized longest side + zero padding at bottom/right."""
    geo = geometry_for(image_rgb.shape[:2], size)
    nh, nw = geo.new_hw
    small = resize_uint8(image_rgb, (nh, nw)) if (nh, nw) != image_rgb.shape[:2] else image_rgb
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:nh, :nw] = small
    return out, geo


def letterbox_masks(masks: np.ndarray, size: int = 128) -> np.ndarray:
    """(N, H, W) bool -> (N, size, size) bool with the same geometry as :func:`letterbox`."""
    n, h, w = masks.shape
    geo = geometry_for((h, w), size)
    nh, nw = geo.new_hw
    out = np.zeros((n, size, size), dtype=bool)
    if n:
        out[:, :nh, :nw] = resize_mask(masks.astype(np.uint8), (nh, nw)).astype(bool)
    return out


def normalize_np(batch_uint8_hwc: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (B, H, W, 3) uint8 -> (B, 3, H, W) float32 ImageNet-normalised array (the same float32
    arithmetic as :func:`normalize`)."""
    a = np.asarray(batch_uint8_hwc)
    if a.ndim == 3:
        a = a[None]
    t = a.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(PIXEL_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(PIXEL_STD, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((t - mean) / std)


def normalize(batch_uint8_hwc):
    """(H, W, 3) or (B, H, W, 3) uint8 array or tensor -> (B, 3, H, W) float32 ImageNet-normalised torch tensor
    (on the input's device): the training and export side; inference uses :func:`normalize_np`."""
    import torch

    t = torch.as_tensor(batch_uint8_hwc)
    if t.ndim == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PIXEL_MEAN, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    return (t - mean) / std


def prepare_image(image: np.ndarray, size: int = 128) -> tuple[np.ndarray, Geometry]:
    """Any supported image -> ((1, 3, size, size) float32 normalised model input, Geometry)."""
    rgb = to_rgb_uint8(image)
    boxed, geo = letterbox(rgb, size)
    return normalize_np(boxed), geo


def bilinear_weights(n_out: int, start: int, scale: float, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 bilinear weights sampling output pixel centres start..start+n_out-1 from an input
    grid of n_in cells, where one output pixel is ``scale`` input cells (align_corners=False, border clamped)."""
    u = (np.arange(start, start + n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(scale) - np.float32(0.5)
    u = np.clip(u, 0, n_in - 1)
    i0 = np.minimum(np.floor(u).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = u - i0.astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1 - w1)
    np.add.at(w, (rows, i1), w1)
    return w


def _bilinear_weights(n_out: int, start: int, scale: float, n_in: int):
    """:func:`bilinear_weights` as a torch tensor (for the torch-side IMX500 code)."""
    import torch

    return torch.from_numpy(bilinear_weights(n_out, start, scale, n_in))


def logits_to_image(lowres, geo: Geometry, crop_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(K, h, w) low-res logits over the padded model square -> (K, H, W) float32 logits at image resolution.

    One bilinear sampling per output pixel: each image pixel centre is mapped to the low-res grid (the padding
    is never sampled as valid area), computed as two small matrix products (separable bilinear weights). With
    ``crop_box = (x0, y0, x1, y1)`` only that image region is produced, so the work is proportional to the
    region, not the image. ``lowres`` may be an array or a (CPU) torch tensor; the result is a numpy array.
    """
    t = np.asarray(lowres, dtype=np.float32)
    if t.ndim == 2:
        t = t[None]
    k, h, w = t.shape
    x0, y0, x1, y1 = crop_box if crop_box is not None else (0, 0, geo.orig_w, geo.orig_h)
    nh, nw = geo.new_hw
    wy = bilinear_weights(y1 - y0, y0, (nh / geo.orig_h) * h / geo.size, h)
    wx = bilinear_weights(x1 - x0, x0, (nw / geo.orig_w) * w / geo.size, w)
    return np.matmul(np.matmul(wy, t), wx.T)
