"""Predictor: clicks and boxes in image pixels -> masks at image resolution.

    p = Predictor.from_default()
    p.set_image(image)                                   # encoder once per image (LRU-cached)
    r = p.predict(points=[[x, y]], labels=[1])           # decoder only
    r.masks (K, H, W) bool, best first; r.scores (K,); r.lowres (K, l, l) logits; r.object_score

Zoom-in refinement (on by default for images larger than twice the model input): after the first pass, the
region around the object is cropped, encoded at the model resolution, predicted again with the same prompts and
pasted back, so small objects in big images get the model's full resolution.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from .transforms import Geometry, logits_to_image, prepare_image, to_rgb_uint8


@dataclass
class Prediction:
    masks: np.ndarray          # (K, H, W) bool, best-scored first
    scores: np.ndarray         # (K,) predicted IoU
    lowres: np.ndarray         # (K, l, l) float32 logits over the padded model square (feed back as mask_input)
    object_score: float        # object-score logit (> 0: an object is present)
    zoomed: bool = False       # True when zoom-in refinement produced the masks


@dataclass
class _Entry:
    feats: object
    geo: Geometry


def _as_points(points, labels, name="points") -> tuple[np.ndarray, np.ndarray]:
    if points is None:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
    p = np.asarray(points, dtype=np.float32)
    if p.ndim == 1 and p.size == 2:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{name}: expected an (N, 2) array of (x, y) pixels, got shape {p.shape}")
    if labels is None:
        lab = np.ones(len(p), np.float32)
    else:
        lab = np.asarray(labels, dtype=np.float32).reshape(-1)
        if len(lab) != len(p):
            raise ValueError(f"labels: {len(lab)} labels for {len(p)} points")
        if not np.all(np.isin(lab, (0, 1))):
            raise ValueError("labels: each label must be 1 (positive) or 0 (negative)")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: coordinates must be finite")
    return p, lab


class Predictor:
    def __init__(self, backend, zoom_refine: bool = True, cache_size: int = 16):
        self.backend = backend
        self.cfg = backend.cfg
        self.zoom_refine = zoom_refine
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._image: np.ndarray | None = None
        self._key: Hashable | None = None

    # ------------------------------------------------------------------ factories
    @classmethod
    def from_model(cls, model, backend: str = "torch", threads: int = 1, **kw) -> "Predictor":
        if backend == "torch":
            from .runtime import TorchBackend

            return cls(TorchBackend(model, threads=threads), **kw)
        if backend == "onnx":
            import tempfile

            from .runtime import OnnxBackend, export_onnx

            folder = Path(tempfile.mkdtemp(prefix="utsam-onnx-"))
            export_onnx(model, folder)
            return cls(OnnxBackend(folder, threads=threads), **kw)
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", **kw) -> "Predictor":
        from .checkpoints import load_model

        return cls.from_model(load_model(path), backend=backend, **kw)

    @classmethod
    def from_default(cls, backend: str = "torch", **kw) -> "Predictor":
        """The shipped default weights (model/ultratinysam.safetensors)."""
        from .checkpoints import DEFAULT_CHECKPOINT

        return cls.from_checkpoint(DEFAULT_CHECKPOINT, backend=backend, **kw)

    @classmethod
    def from_onnx(cls, folder: str | Path, threads: int = 1, **kw) -> "Predictor":
        from .runtime import OnnxBackend

        return cls(OnnxBackend(folder, threads=threads), **kw)

    # ------------------------------------------------------------------ image
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        a = np.ascontiguousarray(image)
        h = hashlib.blake2b(a.view(np.uint8).reshape(-1).data, digest_size=16)
        h.update(str((a.shape, a.dtype.str)).encode())
        return h.hexdigest()

    def has_image(self, key: Hashable) -> bool:
        return key in self._cache

    def _embed(self, rgb: np.ndarray, key: Hashable) -> _Entry:
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            return entry
        x, geo = prepare_image(rgb, self.image_size)
        entry = _Entry(self.backend.encode(x), geo)
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def set_image(self, image: np.ndarray, key: Hashable | None = None) -> None:
        """Compute (or fetch from the cache) the embedding of ``image`` and make it current."""
        rgb = to_rgb_uint8(image, name="image")
        key = self.image_key(rgb) if key is None else key
        self._embed(rgb, key)
        self._image, self._key = rgb, key

    def clear_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------ prediction
    def predict(self, points=None, labels=None, box=None, mask_input: np.ndarray | None = None,
                multimask: bool | None = None, zoom_refine: bool | None = None) -> Prediction:
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict()")
        pts, lab = _as_points(points, labels)
        bx = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float32).reshape(-1)
            if bx.size != 4 or not np.all(np.isfinite(bx)):
                raise ValueError(f"box: expected (x0, y0, x1, y1), got {box!r}")
            bx = np.array([min(bx[0], bx[2]), min(bx[1], bx[3]), max(bx[0], bx[2]), max(bx[1], bx[3])], np.float32)
        if len(pts) == 0 and bx is None:
            raise ValueError("predict needs at least one point or a box")
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            l = self.backend.lowres_size
            if mask_input.shape[-2:] != (l, l):
                raise ValueError(f"mask_input: expected low-res logits of shape ({l}, {l}), got {mask_input.shape}")
        if multimask is None:
            multimask = bx is None and len(pts) <= self.cfg.multimask_max_points
        entry = self._cache.get(self._key) or self._embed(self._image, self._key)
        res = self._predict_entry(entry, pts, lab, bx, mask_input, multimask)
        zoom = self.zoom_refine if zoom_refine is None else zoom_refine
        h, w = self._image.shape[:2]
        if zoom and max(h, w) > 2 * self.image_size and res.masks[0].any():
            refined = self._zoom(res, pts, lab, bx, multimask)
            if refined is not None:
                return refined
        return res

    def _encode_prompt(self, geo: Geometry, pts, lab, bx):
        coords = [geo.to_model(pts)] if len(pts) else []
        labels = [lab] if len(pts) else []
        if bx is not None:
            coords.append(geo.to_model(bx.reshape(2, 2)))
            labels.append(np.array([2, 3], np.float32))
        return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.float32)

    def _predict_entry(self, entry: _Entry, pts, lab, bx, mask_input, multimask: bool,
                       out_hw: tuple[int, int] | None = None) -> Prediction:
        geo = entry.geo
        coords, labels = self._encode_prompt(geo, pts, lab, bx)
        logits, iou, obj = self.backend.decode(entry.feats, coords, labels, mask_input)
        if multimask:
            logits, iou = logits[1:], iou[1:]
        else:
            logits, iou = logits[:1], iou[:1]
        order = np.argsort(-iou, kind="stable")
        logits, iou = np.ascontiguousarray(logits[order], dtype=np.float32), iou[order].astype(np.float32)
        masks = self.upsample_masks(logits, geo)
        if self.cfg.gate_by_object_score and obj <= 0:
            masks[:] = False
        return Prediction(masks=masks, scores=iou, lowres=logits, object_score=obj)

    @staticmethod
    def upsample_masks(lowres: np.ndarray, geo: Geometry) -> np.ndarray:
        """(K, l, l) logits -> (K, H, W) bool, computed only inside the region where the logits are positive."""
        k, lh, lw = lowres.shape
        out = np.zeros((k, geo.orig_h, geo.orig_w), dtype=bool)
        pos = lowres > 0
        if not pos.any():
            return out
        ys, xs = np.nonzero(pos.any(axis=0))
        cell = geo.size / lh  # model px per low-res cell
        nh, nw = geo.new_hw
        sy, sx = geo.orig_h / nh, geo.orig_w / nw  # image px per model px
        x0 = int(max(0, np.floor((xs.min() - 1) * cell * sx)))
        y0 = int(max(0, np.floor((ys.min() - 1) * cell * sy)))
        x1 = int(min(geo.orig_w, np.ceil((xs.max() + 2) * cell * sx)))
        y1 = int(min(geo.orig_h, np.ceil((ys.max() + 2) * cell * sy)))
        if x1 <= x0 or y1 <= y0:
            return out
        region = logits_to_image(lowres, geo, (x0, y0, x1, y1)).numpy()
        out[:, y0:y1, x0:x1] = region > 0
        return out

    def _zoom(self, first: Prediction, pts, lab, bx, multimask: bool) -> Prediction | None:
        img = self._image
        h, w = img.shape[:2]
        ys, xs = np.nonzero(first.masks[0])
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        if len(pts):
            x0, x1 = min(x0, pts[:, 0].min()), max(x1, pts[:, 0].max() + 1)
            y0, y1 = min(y0, pts[:, 1].min()), max(y1, pts[:, 1].max() + 1)
        if bx is not None:
            x0, y0, x1, y1 = min(x0, bx[0]), min(y0, bx[1]), max(x1, bx[2]), max(y1, bx[3])
        side = max(x1 - x0, y1 - y0)
        side = max(side * 1.5, self.image_size)  # context margin; never upsample beyond the model input
        if side > 0.6 * max(h, w):
            return None  # the object is already large in the full view: zooming gains nothing
        grid = 16  # snap the crop so that nearby prompts reuse the cached crop embedding
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = int(np.ceil(side / grid) * grid)
        cx0 = int(np.clip(np.round((cx - side / 2) / grid) * grid, 0, max(0, w - side)))
        cy0 = int(np.clip(np.round((cy - side / 2) / grid) * grid, 0, max(0, h - side)))
        cx1, cy1 = min(w, cx0 + side), min(h, cy0 + side)
        key = (self._key, "crop", cx0, cy0, cx1, cy1)
        entry = self._embed(img[cy0:cy1, cx0:cx1], key)
        off = np.array([cx0, cy0], np.float32)
        cb = None if bx is None else bx - np.concatenate([off, off])
        sub = self._predict_entry(entry, pts - off if len(pts) else pts, lab, cb, None, multimask)
        masks = np.zeros((len(sub.masks), h, w), dtype=bool)
        masks[:, cy0:cy1, cx0:cx1] = sub.masks
        # keep the full-view low-res logits for feeding back: they describe the whole image
        return Prediction(masks=masks, scores=sub.scores, lowres=first.lowres, object_score=sub.object_score,
                          zoomed=True)
