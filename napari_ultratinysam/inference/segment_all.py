"""Segment everything: propose every object of an image as one (H, W) uint16 instance map.

    from napari_ultratinysam import Predictor
    from napari_ultratinysam.inference.segment_all import segment_all

    res = segment_all(Predictor.from_default(backend="onnx", precision="auto"), image)
    res.labels   # (H, W) uint16, 0 = no object, object i is res.scores[i - 1]

SAM's automatic mask generator, fitted to a 128-pixel model:

1. Views: the whole image, then (zoom-in, for images larger than the model input) overlapping tiles, 2 x 2, 4 x 4
   (``max_zoom_levels``) while a tile is still larger than half the model input, each encoded at the model
   resolution.
2. A grid of single positive clicks per view, decoded in batches (the backend's own decoder, one prompt per call,
   or a batched graph when one is given, see :class:`BatchedDecoder`); each click gives 3 candidates.
3. Filters on the low-resolution logits: predicted IoU, SAM's stability score (the IoU of the mask thresholded
   at +offset and at -offset), the object score where the model gates by it, empty and near-whole-image masks.
4. A rank per candidate (:func:`candidate_rank`): its stability, a bonus for a smaller mask (of two overlapping
   masks the object wins over the object with its neighbours), a bias per multimask token, and a penalty for a
   mask that a tile cuts at one of its inner edges (the object goes on outside it: a coarser view sees it whole).
5. Box non-maximum suppression by that rank within each view, then across views.
6. Painting best first: a proposal claims the pixels no better one holds, and is dropped unless at least
   ``min_visible`` of its own area is still free (a mask overlapping a better one is a variant of it); pieces
   smaller than ``min_area`` go.

Why best first and not SAM's largest first (smaller masks painted on top of larger ones): this model's candidates
are coarse (a 32 x 32 grid per view) and many are parts of an object; painted on top they cut every larger object
into pieces (recall of annotated objects 7-10 % on the COCO and BSDS500 training splits); best-first painting with
this rank finds about 3 x as many (18-29 %, docs/history.md). The model's predicted IoU does not tell an object
from its parts or its neighbours, so it only filters.

The predictor is only read (its backend and config): its current image and embedding cache are left alone, so
the annotator can keep using it between proposals.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from napari_ultratinysam.core.transforms import Geometry, logits_to_image, prepare_image, to_rgb_uint8
from napari_ultratinysam.inference.batched_decoder import BatchedDecoder, decode_prompts


@dataclass
class SegmentAllParams:
    """Settings of :func:`segment_all` (defaults tuned on the COCO and BSDS500 training splits and checked on the
    coins sample, see docs/history.md)."""

    points_per_side: int = 16  # click grid of the whole-image view
    tile_points_per_side: int = 4  # click grid of each zoom-in tile
    zoom_levels: int | None = None  # tile levels; None: while a tile is larger than half the model input
    max_zoom_levels: int = 2  # cap of the automatic choice (each level has 4x the tiles of the one before)
    tile_overlap: float = 512 / 1500  # SAM's crop overlap, as a fraction of the image's short side
    pred_iou_thresh: float = 0.3
    stability_thresh: float = 0.3
    stability_offset: float = 0.5  # the model's logits are small: SAM's 1.0 rejects most whole objects
    box_nms_thresh: float = 0.8
    min_area: int | None = None  # pixels; None: 1/4000 of the image, at least 16
    min_visible: float = 0.6  # fraction of its own area a proposal must find free when it is painted (best first)
    max_area_fraction: float = 0.9  # larger masks are not objects (the whole image with every object on it)
    area_weight: float = 0.1  # rank bonus per unit of -log(mask area / image area)
    token_bias: tuple[float, float, float] = (0.0, -1.0, -0.2)  # rank bias of multimask tokens 1, 2, 3
    cut_penalty: float = 1.0  # rank penalty of a mask cut by an inner edge of its tile
    batch_size: int = 64  # prompts per decoder call when a batched decoder is used
    fine_first: bool = False  # finest tiles first (matters with skip_covered only)
    skip_covered: bool = False  # a click inside an object already found is not decoded again (fewer clicks, fewer
    # objects: the views decoded first cover most of the image with masks that are not the objects)

    def check(self) -> "SegmentAllParams":
        """One clear line naming the field for a value out of range."""
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ValueError(f"segment-all parameter {name}: must be {what}, got {getattr(self, name)!r}")

        for name in ("points_per_side", "tile_points_per_side", "batch_size"):
            v = getattr(self, name)
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 256, name,
                 "an integer in 1..256")
        need(self.zoom_levels is None or (isinstance(self.zoom_levels, (int, np.integer)) and
                                          0 <= self.zoom_levels <= 4), "zoom_levels", "None or an integer in 0..4")
        need(isinstance(self.max_zoom_levels, (int, np.integer)) and 0 <= self.max_zoom_levels <= 4,
             "max_zoom_levels", "an integer in 0..4")
        for name in ("tile_overlap", "pred_iou_thresh", "stability_thresh", "box_nms_thresh", "min_visible"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, name, "a number in 0..1")
        need(isinstance(self.max_area_fraction, (int, float)) and 0.0 < self.max_area_fraction <= 1.0,
             "max_area_fraction", "a number in (0, 1]")
        need(isinstance(self.stability_offset, (int, float)) and 0.0 <= self.stability_offset <= 20.0,
             "stability_offset", "a number in 0..20")
        need(self.min_area is None or (isinstance(self.min_area, (int, np.integer)) and self.min_area >= 0),
             "min_area", "None or an integer >= 0")
        for name in ("area_weight", "cut_penalty"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and 0.0 <= v <= 10.0, name, "a number in 0..10")
        tb = self.token_bias
        need(isinstance(tb, (tuple, list)) and len(tb) == 3 and
             all(isinstance(v, (int, float)) and abs(v) <= 10.0 for v in tb), "token_bias", "3 numbers in -10..10")
        return self

    @classmethod
    def from_overrides(cls, overrides: dict) -> "SegmentAllParams":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"segment-all parameter {bad[0]}: unknown (known: {', '.join(sorted(known))})")
        return cls(**overrides).check()


@dataclass
class SegmentAllResult:
    """``labels`` (H, W) uint16 instance ids (0 = none), numbered best rank first; for object ``i`` (1-based)
    ``scores[i - 1]`` its predicted IoU, ``stability[i - 1]`` its stability score, ``boxes[i - 1]`` its
    (x0, y0, x1, y1) pixel box and ``levels[i - 1]`` the zoom level that found it (0 = the whole image).
    ``prompts``: clicks decoded."""

    labels: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    levels: np.ndarray
    prompts: int = 0
    num_views: int = 0
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def masks(self) -> list[np.ndarray]:
        return [self.labels == i for i in range(1, len(self) + 1)]


# ------------------------------------------------------------------ views and prompts


def tile_boxes(h: int, w: int, level: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """SAM's crop boxes (x0, y0, x1, y1) of zoom ``level`` (2^level tiles per side, overlapping)."""
    if level == 0:
        return [(0, 0, w, h)]
    n = 2 ** level
    ov = int(overlap * min(h, w) * (2 / n))
    cw = int(np.ceil((ov * (n - 1) + w) / n))
    ch = int(np.ceil((ov * (n - 1) + h) / n))
    xs = [int((cw - ov) * i) for i in range(n)]
    ys = [int((ch - ov) * i) for i in range(n)]
    return [(x0, y0, min(x0 + cw, w), min(y0 + ch, h)) for y0 in ys for x0 in xs]


def auto_zoom_levels(h: int, w: int, size: int, cap: int) -> int:
    """Levels whose tiles are still larger than half the model input (each adds detail the coarser view lost;
    overlapping tiles are larger than this nominal side)."""
    levels, side = 0, max(h, w)
    while levels < cap and side / 2 ** (levels + 1) > size / 2:
        levels += 1
    return levels


def grid_points(n: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(n * n, 2) click positions (x, y) at the centres of an n x n grid over the box, in image pixels."""
    off = (np.arange(n, dtype=np.float32) + 0.5) / n
    gx = x0 + off * (x1 - x0)
    gy = y0 + off * (y1 - y0)
    xx, yy = np.meshgrid(gx, gy)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32) - 0.5  # pixel-centre convention


# ------------------------------------------------------------------ candidates


@dataclass
class _Candidates:
    lowres: np.ndarray  # (K, l, l) logits, padding cells set very negative
    iou: np.ndarray  # (K,)
    stability: np.ndarray  # (K,)
    boxes: np.ndarray  # (K, 4) float image px (x0, y0, x1, y1)
    areas: np.ndarray  # (K,) image px, estimated from the low-res cells
    view: np.ndarray  # (K,) index into the list of views
    level: np.ndarray  # (K,)
    rank: np.ndarray  # (K,) candidate_rank: higher is better


def stability_scores(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """SAM's stability score per mask of (K, h, w) logits: |logits > t + offset| / |logits > t - offset|
    (1 for an empty mask)."""
    flat = logits.reshape(len(logits), -1)
    inter = (flat > threshold + offset).sum(1)
    union = (flat > threshold - offset).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def candidate_rank(stability: np.ndarray, area_fraction: np.ndarray, token: np.ndarray, cut: np.ndarray,
                   params: SegmentAllParams) -> np.ndarray:
    """How good a candidate is as a proposal, for NMS and best-first painting (higher is better): its stability,
    plus ``area_weight`` per unit of -log(area / image area) (of two overlapping candidates the object wins over the
    object with its neighbours or the background), plus ``token_bias`` of the multimask token (1-3) that made it,
    minus ``cut_penalty`` when a tile cuts it. Tuned on the COCO and BSDS500 training splits, where the predicted
    IoU did not rank the candidates of one object (it is a filter only)."""
    bias = np.asarray(params.token_bias, np.float32)[np.asarray(token) - 1]
    return (np.asarray(stability, np.float32) - params.area_weight * np.log(np.clip(area_fraction, 1e-9, 1.0))
            + bias - params.cut_penalty * np.asarray(cut, np.float32)).astype(np.float32)


def _cell_boxes(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, l, l) bool -> (K, 4) inclusive cell boxes (c0, r0, c1, r1) and (K,) whether the mask is non-empty."""
    rows, cols = pos.any(2), pos.any(1)
    nonempty = rows.any(1)
    l = pos.shape[-1]
    idx = np.arange(l)
    r0 = np.where(rows, idx, l).min(1)
    r1 = np.where(rows, idx, -1).max(1)
    c0 = np.where(cols, idx, l).min(1)
    c1 = np.where(cols, idx, -1).max(1)
    return np.stack([c0, r0, c1, r1], 1), nonempty


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes (x0, y0, x1, y1) -> (N, M) IoU."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy box NMS, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    iou = box_iou(boxes[order], boxes[order]) if len(boxes) else np.zeros((0, 0))
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= iou[i] > threshold
    return np.array(keep, dtype=np.int64)


def _view_candidates(logits, iou, obj, view_box, geo: Geometry, img_hw, params: SegmentAllParams, gate: bool,
                     view: int, level: int) -> _Candidates | None:
    """Filter one view's multimask candidates (tokens 1-3 of every click) on the low-res logits."""
    h_img, w_img = img_hw
    x0, y0, x1, y1 = view_box
    k = logits.shape[0]
    lg = np.ascontiguousarray(logits[:, 1:], dtype=np.float32).reshape(k * 3, *logits.shape[-2:])
    ious = np.asarray(iou, np.float32)[:, 1:].reshape(-1)
    objs = np.repeat(np.asarray(obj, np.float32), 3)
    l = lg.shape[-1]
    cell = geo.size / l  # model px per low-res cell
    nh, nw = geo.new_hw
    vh, vw = int(np.ceil(nh / cell)), int(np.ceil(nw / cell))  # cells that hold image, not padding
    lg[:, vh:, :] = -20.0
    lg[:, :, vw:] = -20.0
    keep = ious >= params.pred_iou_thresh
    if gate:
        keep &= objs > 0
    stab = stability_scores(lg, params.stability_offset)
    keep &= stab >= params.stability_thresh
    pos = lg > 0
    cb, nonempty = _cell_boxes(pos)
    keep &= nonempty
    sx, sy = cell * geo.orig_w / nw, cell * geo.orig_h / nh  # view px per cell
    boxes = np.stack([x0 + cb[:, 0] * sx, y0 + cb[:, 1] * sy, x0 + (cb[:, 2] + 1) * sx, y0 + (cb[:, 3] + 1) * sy],
                     1).astype(np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w_img)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h_img)
    areas = pos.reshape(len(pos), -1).sum(1) * sx * sy
    keep &= areas <= params.max_area_fraction * h_img * w_img
    # cut by an inner edge of the tile: the object goes on outside it (ranked down: a coarser view sees it whole)
    cut = ((cb[:, 0] <= 0) & (x0 > 0)) | ((cb[:, 1] <= 0) & (y0 > 0)) | \
        ((cb[:, 2] >= vw - 1) & (x1 < w_img)) | ((cb[:, 3] >= vh - 1) & (y1 < h_img))
    idx = np.flatnonzero(keep)
    if not len(idx):
        return None
    token = np.tile(np.arange(1, 4), k)
    rank = candidate_rank(stab[idx], areas[idx] / (h_img * w_img), token[idx], cut[idx], params)
    sel = box_nms(boxes[idx], rank, params.box_nms_thresh)
    idx, rank = idx[sel], rank[sel]
    return _Candidates(lg[idx], ious[idx], stab[idx], boxes[idx], areas[idx], np.full(len(idx), view),
                       np.full(len(idx), level), rank)


def _covered(found: list[_Candidates], views, geos, pts: np.ndarray) -> np.ndarray:
    """(P,) whether each point (x, y image px) lies inside a mask already found (its low-res logits > 0)."""
    out = np.zeros(len(pts), bool)
    for c in found:
        for v in np.unique(c.view):
            _, (x0, y0, x1, y1) = views[v]
            geo = geos[v]
            nh, nw = geo.new_hw
            l = c.lowres.shape[-1]
            cell = geo.size / l
            col = np.floor((pts[:, 0] - x0 + 0.5) * nw / geo.orig_w / cell).astype(np.int64)
            row = np.floor((pts[:, 1] - y0 + 0.5) * nh / geo.orig_h / cell).astype(np.int64)
            inside = (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
            inside &= (col >= 0) & (col < l) & (row >= 0) & (row < l)
            if not inside.any():
                continue
            sel = c.lowres[c.view == v][:, row[inside], col[inside]] > 0
            out[np.flatnonzero(inside)[sel.any(0)]] = True
    return out


def _concat(cands: list[_Candidates]) -> _Candidates:
    return _Candidates(*(np.concatenate([getattr(c, f.name) for c in cands]) for f in fields(_Candidates)))


def _take(c: _Candidates, idx: np.ndarray) -> _Candidates:
    return _Candidates(*(getattr(c, f.name)[idx] for f in fields(_Candidates)))


# ------------------------------------------------------------------ the whole pass


def segment_all(predictor, image: np.ndarray, params: SegmentAllParams | None = None,
                batched: BatchedDecoder | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> SegmentAllResult:
    """Propose every object of ``image`` (any 2-D gray / RGB / RGBA image) with ``predictor``'s model.

    ``batched``: a :class:`BatchedDecoder` (see :func:`batched_decoder`) to decode many clicks per call;
    ``progress(done_views, total_views)`` is called after each view; ``cancelled()`` returning True stops early
    (the objects found so far are returned)."""
    params = (params or SegmentAllParams()).check()
    rgb = to_rgb_uint8(image, name="image")
    h, w = rgb.shape[:2]
    backend = predictor.backend
    cfg = predictor.cfg
    size = cfg.image_size
    gate = bool(getattr(cfg, "gate_by_object_score", False))
    levels = params.zoom_levels if params.zoom_levels is not None else \
        auto_zoom_levels(h, w, size, params.max_zoom_levels)
    views: list[tuple[int, tuple[int, int, int, int]]] = []
    for lev in range(levels + 1):
        views += [(lev, b) for b in tile_boxes(h, w, lev, params.tile_overlap)]
    if params.fine_first:  # small objects first, at the resolution that shows them (with skip_covered)
        views.sort(key=lambda v: -v[0])
    geos: list[Geometry | None] = [None] * len(views)
    found: list[_Candidates] = []
    prompts = 0
    for vi, (lev, (x0, y0, x1, y1)) in enumerate(views):
        if cancelled is not None and cancelled():
            break
        n = params.points_per_side if lev == 0 else params.tile_points_per_side
        pts = grid_points(n, 0, 0, x1 - x0, y1 - y0)
        if params.skip_covered and found:
            pts = pts[~_covered(found, views, geos, pts + np.array([x0, y0], np.float32))]
        if len(pts):
            x, geo = prepare_image(rgb[y0:y1, x0:x1], size)
            geos[vi] = geo
            feats = backend.encode(x)
            coords = geo.to_model(pts)[:, None, :].astype(np.float32)
            labels = np.ones((len(coords), 1), np.float32)
            logits, iou, obj = decode_prompts(backend, feats, coords, labels, batched, params.batch_size)
            prompts += len(coords)
            c = _view_candidates(logits, iou, obj, (x0, y0, x1, y1), geo, (h, w), params, gate, vi, lev)
            if c is not None:
                found.append(c)
        if progress is not None:
            progress(vi + 1, len(views))
    stats = {"views": sum(g is not None for g in geos), "levels": levels}
    empty = SegmentAllResult(np.zeros((h, w), np.uint16), np.zeros(0, np.float32), np.zeros(0, np.float32),
                             np.zeros((0, 4), np.float32), np.zeros(0, np.int64), prompts, stats["views"], stats)
    if not found:
        return empty
    cand = _concat(found)
    stats["candidates"] = len(cand.iou)
    cand = _take(cand, box_nms(cand.boxes, cand.rank, params.box_nms_thresh))  # across views, the better rank
    stats["after_nms"] = len(cand.iou)
    return _paint(cand, views, geos, (h, w), params, empty, stats)


def _paint(cand: _Candidates, views, geos, hw, params: SegmentAllParams, empty: SegmentAllResult,
           stats: dict) -> SegmentAllResult:
    """Full-resolution masks painted best first: each claims the pixels still free, and is kept only if at least
    ``min_visible`` of its own area (and ``min_area`` pixels) was free; then pieces smaller than ``min_area`` go."""
    from scipy import ndimage

    h, w = hw
    min_area = params.min_area if params.min_area is not None else max(16, (h * w) // 4000)
    order = np.argsort(-cand.rank, kind="stable")
    labels = np.zeros((h, w), np.uint16)
    own = np.zeros(len(order) + 1, np.int64)
    boxes = np.zeros((len(order) + 1, 4), np.int64)
    for j, i in enumerate(order, start=1):
        _, (vx0, vy0, vx1, vy1) = views[cand.view[i]]
        geo = geos[cand.view[i]]
        bx0, by0, bx1, by1 = cand.boxes[i]
        # the mask's box within the view, one pixel of margin for the bilinear edge
        rx0, ry0 = max(0, int(np.floor(bx0)) - vx0 - 1), max(0, int(np.floor(by0)) - vy0 - 1)
        rx1, ry1 = min(vx1 - vx0, int(np.ceil(bx1)) - vx0 + 1), min(vy1 - vy0, int(np.ceil(by1)) - vy0 + 1)
        if rx1 <= rx0 or ry1 <= ry0:
            continue
        m = np.asarray(logits_to_image(cand.lowres[i], geo, (rx0, ry0, rx1, ry1)))[0] > 0
        own[j] = int(m.sum())
        if own[j] == 0:
            continue
        region = labels[vy0 + ry0:vy0 + ry1, vx0 + rx0:vx0 + rx1]
        free = m & (region == 0)
        if free.sum() < max(min_area, params.min_visible * own[j]):
            continue  # mostly a better proposal's pixels: a variant of it (or a group of objects found already)
        region[free] = j
        boxes[j] = (vx0 + rx0, vy0 + ry0, vx0 + rx1, vy0 + ry1)
    ok = np.bincount(labels.ravel(), minlength=len(own)) > 0  # painted
    ok[0] = False
    # small pieces: components of an object smaller than min_area go (its main part stays)
    for j in np.flatnonzero(ok):
        x0, y0, x1, y1 = boxes[j]
        sub = labels[y0:y1, x0:x1]
        m = sub == j
        comp, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            small = (sizes < min_area) & (np.arange(len(sizes)) != sizes.argmax())
            sub[small[comp] & m] = 0
    final = np.bincount(labels.ravel(), minlength=len(own))
    ok &= final >= max(1, min_area)
    kept = np.flatnonzero(ok)
    new = np.zeros(len(own), np.uint16)
    new[kept] = np.arange(1, len(kept) + 1)
    labels = new[labels]
    src = order[kept - 1]
    stats["objects"] = len(kept)
    out_boxes = np.zeros((len(kept), 4), np.float32)
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=len(kept))):
        if sl is not None:
            out_boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return SegmentAllResult(labels, cand.iou[src].astype(np.float32), cand.stability[src].astype(np.float32),
                            out_boxes, cand.level[src].astype(np.int64), empty.prompts, empty.num_views, stats)


# ------------------------------------------------------------------ evaluation helper


def recall_at(labels: np.ndarray, gt_masks, threshold: float = 0.5) -> tuple[int, int]:
    """(objects of ``gt_masks`` matched by some proposal of ``labels`` at IoU >= threshold, their number)."""
    n_prop = int(labels.max())
    found = 0
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n_prop + 1)
    total = 0
    for g in gt_masks:
        g = np.asarray(g, bool)
        if not g.any():
            continue
        total += 1
        inter = np.bincount(flat[g.ravel()], minlength=n_prop + 1)
        inter[0] = 0
        union = sizes + g.sum() - inter
        if n_prop and (inter[1:] / np.maximum(union[1:], 1)).max() >= threshold:
            found += 1
    return found, total
