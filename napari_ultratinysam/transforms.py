"""The ONE place for image preparation and image <-> model coordinate mapping.

Model input: the image's longest side is resized to ``size`` (default 128), the result is padded at the
bottom/right to ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean/std.
Prompt coordinates in the public API are image pixels (x = column, y = row); model coordinates are pixels of the
resized (unpadded) image. A pixel centre at image coordinate x maps to x * scale (SAM convention; the prompt
encoder adds 0.5 itself).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Images with more values than this are converted and resized without a float copy of the whole image (a huge
# image must not need several times its own size in memory to make a 128-pixel model input).
LARGE_IMAGE_VALUES = 1 << 26
_CHUNK_VALUES = 1 << 22  # values per block of the blockwise conversion


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


def resize_uint8(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of an (H, W, C) uint8 image with torch."""
    if image.size > LARGE_IMAGE_VALUES and image.dtype == np.uint8:
        # torch resizes uint8 directly (fixed point, within 1 of the float result): no float copy of a huge image,
        # and a read-only array (np.asarray of a PIL image) is only read, so it is not copied either
        src = image if image.flags.c_contiguous else np.ascontiguousarray(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": it is never written here
            t = torch.from_numpy(src).permute(2, 0, 1)[None]
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)
        return t[0].permute(1, 2, 0).contiguous().numpy()
    a = image if (image.flags.writeable and image.flags.c_contiguous) else np.array(image)
    t = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) or (N, H, W) masks/labels (any integer or bool dtype)."""
    m = np.asarray(mask)
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    dtype = m.dtype
    t = torch.from_numpy(m.astype(np.float32))[None]
    t = F.interpolate(t, size=hw, mode="nearest-exact")
    out = t[0].numpy().astype(dtype)
    return out[0] if squeeze else out


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


def normalize(batch_uint8_hwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 -> (B, 3, H, W) float32 ImageNet-normalised tensor."""
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
    return normalize(boxed).numpy(), geo


def _bilinear_weights(n_out: int, start: int, scale: float, n_in: int) -> torch.Tensor:
    """(n_out, n_in) bilinear weights sampling output pixel centres start..start+n_out-1 from an input grid of
    n_in cells, where one output pixel is ``scale`` input cells (align_corners=False, border clamped)."""
    u = (torch.arange(start, start + n_out, dtype=torch.float32) + 0.5) * scale - 0.5
    u = u.clamp(0, n_in - 1)
    i0 = u.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = u - i0.float()
    w = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    w.index_put_((rows, i0), 1 - w1, accumulate=True)
    w.index_put_((rows, i1), w1, accumulate=True)
    return w


def logits_to_image(lowres: np.ndarray | torch.Tensor, geo: Geometry,
                    crop_box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """(K, h, w) low-res logits over the padded model square -> (K, H, W) logits at image resolution.

    One bilinear sampling per output pixel: each image pixel centre is mapped to the low-res grid (the padding
    is never sampled as valid area), computed as two small matrix products (separable bilinear weights). With
    ``crop_box = (x0, y0, x1, y1)`` only that image region is produced, so the work is proportional to the
    region, not the image.
    """
    t = torch.as_tensor(lowres, dtype=torch.float32)
    if t.ndim == 2:
        t = t[None]
    k, h, w = t.shape
    x0, y0, x1, y1 = crop_box if crop_box is not None else (0, 0, geo.orig_w, geo.orig_h)
    nh, nw = geo.new_hw
    wy = _bilinear_weights(y1 - y0, y0, (nh / geo.orig_h) * h / geo.size, h)
    wx = _bilinear_weights(x1 - x0, x0, (nw / geo.orig_w) * w / geo.size, w)
    return wy @ t @ wx.T
