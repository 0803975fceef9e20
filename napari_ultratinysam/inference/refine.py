"""Full-resolution refinement of a mask from the model's logits and the user's clicks.

The model predicts 32 x 32 logits over a 128-px view, so its boundary is coarse at the image's own resolution and
a click in a thin error region is often not reflected in its output. This step keeps the model's confident inside
and outside, makes every click a hard seed (a positive click's disc is always in the mask, a negative click's
always out) and lets a marker-controlled watershed on the image gradient decide the uncertain band between them,
at the image's resolution, inside the region the mask and the clicks cover.

Where a click contradicts the model (a negative click inside its mask, a positive one outside), the model's seeds
of the other label are dropped around the click, out to the click's distance from the model's boundary plus the
band, so the watershed can move the boundary there (the documented local correction of "a click is always obeyed").
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RefineConfig:
    band: float = 1.5            # half-width of the undecided band around the model's boundary, in low-res cells
    min_band_px: int = 5         # ... and at least this many image pixels
    click_radius_px: int = 5     # the disc around a click that is always obeyed
    prior: float = 0.0           # weight of the model's boundary (logit 0) as a ridge, next to the image gradient
    smooth: float = 1.0          # Gaussian sigma (px) of the image before its gradient
    first_click: bool = True     # also refine a prompt without mask_input (a first click) at full resolution
    reach: float = 2.0           # a correction changes the mask within this many times the click's depth (its
                                 # distance to the shown mask's boundary, plus the band) of the click
    max_side: int = 512          # a region larger than this (px) is decided at an integer fraction of the image's
                                 # resolution (block means), then upsampled: the cost stays bounded on big images


def image_gradient(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """(H, W) float32 gradient magnitude of an RGB image, the largest over the channels, scaled to [0, 1]."""
    a = rgb.astype(np.float32)
    if sigma > 0:
        a = ndimage.gaussian_filter(a, sigma=(sigma, sigma, 0))
    gy = np.abs(np.diff(a, axis=0, append=a[-1:]))
    gx = np.abs(np.diff(a, axis=1, append=a[:, -1:]))
    g = np.maximum(gy, gx).max(axis=2)
    top = float(np.percentile(g, 99)) or 1.0
    return np.minimum(g / top, 1.0, dtype=np.float32)


def click_disc(shape: tuple[int, int], point, radius: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """(slices, disc) of the pixels within ``radius`` of ``point`` (x, y), clipped to ``shape``."""
    h, w = shape
    cx, cy = int(np.clip(np.floor(point[0]), 0, w - 1)), int(np.clip(np.floor(point[1]), 0, h - 1))
    r = int(np.ceil(radius))
    y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius


def _disc_seeds(shape: tuple[int, int], pts: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: discs of ``radius`` around each (x, y) point."""
    out = np.zeros(shape, dtype=bool)
    for p in np.asarray(pts).reshape(-1, 2):
        sl, disc = click_disc(shape, p, radius)
        out[sl] |= disc
    return out


def refine(rgb: np.ndarray, logits: np.ndarray, points: np.ndarray, labels: np.ndarray, cell_px: float,
           cfg: RefineConfig = RefineConfig()) -> np.ndarray:
    """(H, W) bool mask from (H, W) full-resolution ``logits`` of a region, its (H, W, 3) ``rgb`` pixels and the
    clicks ((N, 2) (x, y) in the region's pixels, (N,) labels 1/0). ``cell_px``: image pixels per low-res cell."""
    from skimage.segmentation import watershed

    h, w = logits.shape
    model = logits > 0
    band = band_px(cfg, cell_px)
    # chessboard distances: the band's exact shape does not matter, its cost does
    far = np.full((h, w), h + w, dtype=np.int32)  # no boundary in the region: everything is far from it
    d_in = ndimage.distance_transform_cdt(model, metric="chessboard") if not model.all() else far
    d_out = ndimage.distance_transform_cdt(~model, metric="chessboard") if model.any() else far
    fg = d_in > band
    bg = d_out > band
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    lab = np.asarray(labels).reshape(-1)
    for (x, y), l in zip(pts, lab):
        cx, cy = int(np.clip(np.floor(x), 0, w - 1)), int(np.clip(np.floor(y), 0, h - 1))
        if bool(l) != bool(model[cy, cx]):  # the click contradicts the model: free the other label's seeds around it
            depth = float((d_out if l else d_in)[cy, cx])
            reach = (depth if depth < h + w else band) + band  # no boundary at all: a neighbourhood of the click
            sl, disc = click_disc((h, w), (x, y), reach)
            (bg if l else fg)[sl] &= ~disc
    pos, neg = pts[lab == 1], pts[lab != 1]
    pos_disc = _disc_seeds((h, w), pos, cfg.click_radius_px)
    neg_disc = _disc_seeds((h, w), neg, cfg.click_radius_px)
    markers = np.zeros((h, w), dtype=np.int32)
    markers[bg | neg_disc] = 1
    markers[(fg & ~neg_disc) | pos_disc] = 2
    has_fg, has_bg = (markers == 2).any(), (markers == 1).any()
    if not has_fg:
        return np.zeros((h, w), dtype=bool)
    if not has_bg:
        return model | pos_disc
    undecided = markers == 0
    if not undecided.any():
        return markers == 2
    # flood only the band (and the seed pixels that touch it): the cost follows the boundary, not the area
    work = ndimage.binary_dilation(undecided, structure=np.ones((3, 3), dtype=bool))
    g = image_gradient(rgb, cfg.smooth)
    elev = g + cfg.prior * np.exp(-np.square(logits / 2.0)).astype(np.float32) if cfg.prior else g
    seg = markers == 2
    ys, xs = np.nonzero(work)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub = watershed(elev[y0:y1, x0:x1], markers[y0:y1, x0:x1] * work[y0:y1, x0:x1], mask=work[y0:y1, x0:x1])
    seg[y0:y1, x0:x1] = np.where(work[y0:y1, x0:x1], sub == 2, seg[y0:y1, x0:x1])
    return seg


def obey_clicks(mask: np.ndarray, points: np.ndarray, labels: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` with a disc around every positive click set and around every negative click cleared (later
    clicks win). Returns ``mask`` itself when it already obeys them all, else a copy."""
    out = mask
    for p, l in zip(np.asarray(points).reshape(-1, 2), np.asarray(labels).reshape(-1)):
        sl, disc = click_disc(mask.shape, p, radius)
        if np.array_equal(out[sl] & disc, disc if l else np.zeros_like(disc)):
            continue
        if out is mask:
            out = mask.copy()
        out[sl] = (out[sl] | disc) if l else (out[sl] & ~disc)
    return out


def merge_at_click(previous: np.ndarray, new: np.ndarray, point, radius: float) -> np.ndarray:
    """``previous`` with the one region where ``new`` differs from it that holds ``point`` (x, y), within
    ``radius`` of it, taken from ``new``: a correction click changes the mask where the user clicked, never
    somewhere else, and a model that drops the whole object after a negative click cannot take the mask with it."""
    x, y = int(np.floor(point[0])), int(np.floor(point[1]))
    diff = previous ^ new
    if not (0 <= y < diff.shape[0] and 0 <= x < diff.shape[1]) or not diff[y, x]:
        return previous
    sl, disc = click_disc(diff.shape, (x, y), radius)
    near = np.zeros_like(diff)
    near[sl] = diff[sl] & disc
    lbl, _ = ndimage.label(near, structure=np.ones((3, 3), dtype=bool))
    region = lbl == lbl[y, x]
    out = previous.copy()
    out[region] = new[region]
    return out


class Refiner:
    """The full-resolution refinement a :class:`~.predictor.Predictor` applies to its results.

    It remembers the full-resolution masks it returned, keyed by the low-res logits returned with them, so that a
    caller that feeds a result's ``lowres`` back as ``mask_input`` (as SAM-style tools and the evaluation do) gets
    the newest click merged into the mask it was shown, with no extra call.
    """

    def __init__(self, cfg: RefineConfig = RefineConfig(), memory: int = 32):
        self.cfg = cfg
        self.memory = memory
        self._shown: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _key(image_key, lowres: np.ndarray) -> tuple:
        return image_key, np.ascontiguousarray(lowres, dtype=np.float32).tobytes()

    def remember(self, image_key, lowres: np.ndarray, mask: np.ndarray) -> None:
        self._shown[self._key(image_key, lowres)] = mask
        while len(self._shown) > self.memory:
            self._shown.pop(next(iter(self._shown)))

    def shown(self, image_key, mask_input: np.ndarray | None) -> np.ndarray | None:
        """The mask returned with the low-res logits ``mask_input`` on this image, if remembered."""
        if mask_input is None:
            return None
        return self._shown.get(self._key(image_key, np.asarray(mask_input).reshape(mask_input.shape[-2:])))

    def clear(self) -> None:
        self._shown.clear()

    def correct(self, image_key, image: np.ndarray, region: tuple | None, points: np.ndarray, labels: np.ndarray,
                cell_px: float, previous: np.ndarray | None) -> np.ndarray:
        """The refined (H, W) bool mask after a correction click. ``region``: (box (x0, y0, x1, y1), logits of
        that box at image resolution) of the model's mask, or None for an empty one; ``previous``: the mask shown
        before this click (None: unknown, the refined mask is returned whole).

        Only the region the model's mask, the shown mask and the clicks cover (plus the band) is looked at; its
        image gradient is computed there, on the region's own contrast. A region wider than ``cfg.max_side`` is
        decided on block means of ``f`` x ``f`` pixels and upsampled; clicks are obeyed at full resolution."""
        h, w = image.shape[:2]
        cfg = self.cfg
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        boxes = [(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1)]
        if region is not None:
            boxes.append(region[0])
        if previous is not None and previous.any():
            rows, cols = np.flatnonzero(previous.any(1)), np.flatnonzero(previous.any(0))
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        band = band_px(cfg, cell_px)
        pad = int(np.ceil(band)) + cfg.click_radius_px + 2
        b = np.array(boxes, dtype=np.float64)
        x0, y0 = max(0, int(b[:, 0].min()) - pad), max(0, int(b[:, 1].min()) - pad)
        x1, y1 = min(w, int(np.ceil(b[:, 2].max())) + pad), min(h, int(np.ceil(b[:, 3].max())) + pad)
        logits = np.full((y1 - y0, x1 - x0), -20.0, dtype=np.float32)
        if region is not None:
            (rx0, ry0, rx1, ry1), rl = region
            logits[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] = rl
        off = np.array([x0, y0], np.float32)
        f = max(1, int(np.ceil(max(y1 - y0, x1 - x0) / max(1, cfg.max_side))))
        rgb = image[y0:y1, x0:x1]
        if f == 1:
            seg = refine(rgb, logits, pts - off, labels, cell_px, cfg)
        else:  # decided at 1/f of the resolution, in image-pixel units scaled alike
            small = replace(cfg, min_band_px=max(1, round(cfg.min_band_px / f)),
                            click_radius_px=max(1, round(cfg.click_radius_px / f)))
            seg = refine(block_mean(rgb, f), block_mean(logits, f), (pts - off) / f, labels, cell_px / f, small)
            seg = np.repeat(np.repeat(seg, f, axis=0), f, axis=1)[:y1 - y0, :x1 - x0]
        if previous is not None:
            prev = previous[y0:y1, x0:x1]
            px, py = int(np.clip(pts[-1][0] - x0, 0, x1 - x0 - 1)), int(np.clip(pts[-1][1] - y0, 0, y1 - y0 - 1))
            depth = click_depth(prev, px, py)
            seg = merge_at_click(prev, seg, pts[-1] - off, cfg.reach * (float(depth) + band))
        out = np.zeros((h, w), dtype=bool)
        out[y0:y1, x0:x1] = seg
        return obey_clicks(out, pts, labels, cfg.click_radius_px)


def band_px(cfg: RefineConfig, cell_px: float) -> float:
    """Half-width (image px) of the undecided band around the model's boundary."""
    return max(float(cfg.min_band_px), cfg.band * cell_px)


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """``a`` (H, W[, C]) averaged over f x f blocks (edge-padded to a multiple of f), float32. Summed as f * f
    strided slices (numpy reduces the axes of a blocked reshape an order of magnitude slower); exact for integer
    images."""
    h, w = a.shape[:2]
    ph, pw = -h % f, -w % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    acc = np.uint32 if a.dtype.kind in "ub" else np.float32
    s = np.zeros((a.shape[0] // f, a.shape[1] // f) + a.shape[2:], acc)
    for i in range(f):
        for j in range(f):
            s += a[i::f, j::f]
    return s.astype(np.float32) / np.float32(f * f)


def click_depth(mask: np.ndarray, x: int, y: int) -> int:
    """Chessboard distance (px) from (x, y) to the nearest pixel of the other label of ``mask``; a large number
    when there is none. Grows a window around the click instead of transforming the whole region."""
    inside = bool(mask[y, x])
    h, w = mask.shape
    r = 1
    while True:
        top, left = max(0, y - r), max(0, x - r)
        ys, xs = np.nonzero(mask[top:y + r + 1, left:x + r + 1] != inside)
        if len(ys):
            return int(np.maximum(np.abs(ys + top - y), np.abs(xs + left - x)).min())
        if r > max(h, w):
            return h + w
        r *= 2
