"""Predictor: clicks and boxes in image pixels -> masks at image resolution.

(One module of ~530 lines: prediction, zoom-in and the refinement hook share the embedding cache and the current
image; what a prediction returns lives in prediction.py.)

    p = Predictor.from_default()
    p.set_image(image)                                   # encoder once per image (LRU-cached)
    r = p.predict(points=[[x, y]], labels=[1])           # decoder only
    r.masks (K, H, W) bool, best first; r.scores (K,); r.lowres (K, l, l) logits; r.object_score

Best first: by predicted IoU, except for a single positive click when the model carries a learned candidate pick
(``cfg.candidate_pick``, see pick.py): then by that pick, and ``scores`` (still predicted IoUs) need not descend.

Zoom-in refinement (on by default for images larger than twice the model input): after the first pass, the
region around the object is cropped, encoded at the model resolution, predicted again with the same prompts and
pasted back, so small objects in big images get the model's full resolution.

Full-resolution refinement (on by default, refine.py): every click is obeyed (a disc around it is in, or out of,
every mask); a correction (a prompt with ``mask_input``, the previous result's ``lowres``) is decided at the image's
own resolution from the model's logits, the image's edges and all clicks, and merged into the mask shown before
only where the newest click is.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from napari_ultratinysam.core.transforms import Geometry, logits_to_image, prepare_image, to_rgb_uint8
from napari_ultratinysam.inference.prediction import Prediction, ZoomRequest, as_points
from napari_ultratinysam.inference.refine import RefineConfig, Refiner, obey_clicks

# A single click whose full-view mask is too large to zoom on (e.g. a whole table of coins) is also tried on a crop
# of the model's input size around the click; that mask is kept when it stays inside the crop and its predicted IoU
# is at least this, chosen on validation data (the tuning table is in docs/history.md).
CLICK_ZOOM_MIN_SCORE = 0.4


@dataclass
class _Entry:
    feats: object
    geo: Geometry


class Predictor:
    def __init__(self, backend, zoom_refine: bool = True, cache_size: int = 16, flip_tta: bool = False,
                 use_pick: bool = True, refine: bool | RefineConfig = True):
        """``flip_tta``: average every prediction over the image and its mirror image (twice the time; see
        runtime.FlipAveragedBackend); a property that can be switched later (cached embeddings are dropped).
        ``use_pick``: a single click shows the candidate the model's learned pick prefers (when it has one).
        ``refine``: full-resolution refinement (refine.py; a RefineConfig sets its parameters); False gives the
        model's masks as they are."""
        self.backend = backend
        self.cfg = backend.cfg
        self.zoom_refine = zoom_refine
        self.use_pick = use_pick
        self.refiner: Refiner | None = None
        if refine:
            self.refiner = Refiner(refine if isinstance(refine, RefineConfig) else RefineConfig())
        if self.cfg.candidate_pick is not None:
            from napari_ultratinysam.core.config import check_pick

            check_pick(self.cfg.candidate_pick)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._image: np.ndarray | None = None
        self._key: Hashable | None = None
        self.flip_tta = flip_tta

    @property
    def flip_tta(self) -> bool:
        from napari_ultratinysam.inference.backends.flip import FlipAveragedBackend

        return isinstance(self.backend, FlipAveragedBackend)

    @flip_tta.setter
    def flip_tta(self, on: bool) -> None:
        from napari_ultratinysam.inference.backends.flip import FlipAveragedBackend

        if bool(on) == self.flip_tta:
            return
        self.backend = FlipAveragedBackend(self.backend) if on else self.backend.inner
        self._cache.clear()  # embeddings of the other kind; the current image is encoded again on next use

    # ------------------------------------------------------------------ factories
    @classmethod
    def from_model(cls, model, backend: str = "torch", threads: int = 1, precision: str = "float",
                   _onnx_folder=None, **kw) -> "Predictor":
        """``precision`` ("float", "int8", "bf16", "auto"; onnx backend only): see int8.choose_precision.
        The ONNX graphs (float, int8) are made once per model and cached (int8.cached_onnx_folder); bf16
        runs the float graphs on OpenVINO (backends.openvino). If int8 or bf16 fails to load, a warning is logged
        and onnxruntime float is used. ``_onnx_folder(precision)``: the cached folder (from_checkpoint keys it by
        the checkpoint file's hash)."""
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend == "torch":
            if precision != "float":
                raise ValueError(f"precision {precision!r} needs backend='onnx' (the torch backend runs float only)")
            from napari_ultratinysam.inference.backends.pytorch import TorchBackend

            return cls(TorchBackend(model, threads=threads), **kw)

        def cached(prec: str) -> Path:
            from napari_ultratinysam.inference.int8 import onnx_folder_for_model

            return _onnx_folder(prec) if _onnx_folder is not None else onnx_folder_for_model(model, prec)

        return cls._from_onnx_folders(cached, lambda: model, threads, precision, **kw)

    @classmethod
    def _from_onnx_folders(cls, folder_for: Callable[[str], Path], model_fn: Callable[[], object], threads: int,
                           precision: str, **kw) -> "Predictor":
        """The onnx backend on ``folder_for(precision)`` ("float" or "int8"); ``model_fn()`` gives the model to
        export for this session only when the float folder cannot be cached (it is called only then: torch)."""
        import logging

        from napari_ultratinysam.inference.backends.onnx import OnnxBackend
        from napari_ultratinysam.inference.int8 import choose_precision
        from napari_ultratinysam.inference.onnx_export import export_onnx

        def fallback(what: str, e: Exception) -> None:  # reduced precision is an optimisation: never fail a load
            logging.getLogger(__name__).warning("%s (%s); using float ONNX", what,
                                                str(e).splitlines()[0] if str(e) else type(e).__name__)

        chosen = choose_precision(precision)
        if chosen == "int8":
            try:
                return cls(OnnxBackend(folder_for("int8"), threads=threads), **kw)
            except Exception as e:  # noqa: BLE001
                fallback("int8 quantization failed", e)
        try:
            folder = folder_for("float")
        except OSError as e:  # e.g. no writable cache folder: export for this session only
            import tempfile

            logging.getLogger(__name__).warning("ONNX cache not usable (%s); exporting to a temporary folder", e)
            folder = export_onnx(model_fn(), Path(tempfile.mkdtemp(prefix="utsam-onnx-")))
        if chosen == "bf16":  # the float graphs, run by OpenVINO in bf16
            from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend

            try:
                return cls(OpenVinoBackend(folder, threads=threads, precision="bf16"), **kw)
            except Exception as e:  # noqa: BLE001
                fallback("OpenVINO bf16 failed to load", e)
        return cls(OnnxBackend(folder, threads=threads), **kw)

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", precision: str = "float",
                        **kw) -> "Predictor":
        """A .safetensors checkpoint. With ``backend="onnx"`` the checkpoint is loaded (torch) only when its ONNX
        folder is not cached yet (int8.onnx_folder_for_checkpoint, keyed by the file's hash; the shipped
        weights' folder ships with them)."""
        from napari_ultratinysam.model.checkpoints import CheckpointError, load_model

        if backend != "onnx":
            return cls.from_model(load_model(path), backend=backend, precision=precision, **kw)
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint {path}: file not found")
        threads = kw.pop("threads", 1)

        def onnx_folder(prec: str) -> Path:  # cached by the checkpoint file's hash
            from napari_ultratinysam.inference.int8 import onnx_folder_for_checkpoint

            return onnx_folder_for_checkpoint(path, prec)

        return cls._from_onnx_folders(onnx_folder, lambda: load_model(path), threads, precision, **kw)

    @classmethod
    def from_default(cls, backend: str = "torch", precision: str = "float", **kw) -> "Predictor":
        """The shipped default weights (napari_ultratinysam/weights/ultratinysam.safetensors). The onnx backend
        runs their shipped float graphs (weights/onnx; int8 is quantized from them once and cached), so neither
        needs torch; ``backend="torch"`` without torch installed runs those graphs on onnxruntime (same masks)."""
        from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

        if backend == "torch" and precision == "float":
            from napari_ultratinysam.core.extras import available
            from napari_ultratinysam.inference.int8 import shipped_onnx_folder

            if not available("torch") and shipped_onnx_folder() is not None:
                backend = "onnx"
        return cls.from_checkpoint(DEFAULT_CHECKPOINT, backend=backend, precision=precision, **kw)

    @classmethod
    def from_onnx(cls, folder: str | Path, threads: int = 1, precision: str = "float", **kw) -> "Predictor":
        """An ``utsam export-onnx`` folder on onnxruntime, or (``precision="bf16"``, a float folder) on OpenVINO."""
        if precision == "bf16":
            from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend
            from napari_ultratinysam.inference.int8 import choose_precision

            choose_precision("bf16")  # a clear error where the CPU or the openvino package cannot run it
            return cls(OpenVinoBackend(folder, threads=threads, precision="bf16"), **kw)
        if precision != "float":
            raise ValueError(f"precision {precision!r}: an ONNX folder runs as exported ('float') or in 'bf16'")
        from napari_ultratinysam.inference.backends.onnx import OnnxBackend

        return cls(OnnxBackend(folder, threads=threads), **kw)

    # ------------------------------------------------------------------ image
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        a = np.ascontiguousarray(image)
        h = hashlib.sha1(a.view(np.uint8).reshape(-1).data, usedforsecurity=False)  # a cache key: the fastest here
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
        if self.refiner is not None:
            self.refiner.clear()

    # ------------------------------------------------------------------ prediction
    def predict(self, points=None, labels=None, box=None, mask_input: np.ndarray | None = None,
                multimask: bool | None = None, zoom_refine: bool | None = None,
                use_pick: bool | None = None, refine: bool | None = None) -> Prediction:
        """``refine``: None = the predictor's setting; False = the model's masks for this call only (a hover
        preview that must be fast)."""
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict()")
        pts, lab = as_points(points, labels)
        bx = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float32).reshape(-1)
            if bx.size != 4 or not np.all(np.isfinite(bx)):
                raise ValueError(f"box: expected (x0, y0, x1, y1), got {box!r}")
            bx = np.array([min(bx[0], bx[2]), min(bx[1], bx[3]), max(bx[0], bx[2]), max(bx[1], bx[3])], np.float32)
        pts, bx = self._inside_image(pts, bx)
        if len(pts) == 0 and bx is None:
            raise ValueError("predict needs at least one point or a box")
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            l = self.backend.lowres_size
            if mask_input.shape[-2:] != (l, l):
                raise ValueError(f"mask_input: expected low-res logits of shape ({l}, {l}), got {mask_input.shape}")
        if multimask is None:
            multimask = bx is None and len(pts) <= self.cfg.multimask_max_points
        pick = self.use_pick if use_pick is None else bool(use_pick)
        entry = self._embed(self._image, self._key)  # cached (and kept as the most recent: crops do not evict it)
        res = self._predict_entry(entry, pts, lab, bx, mask_input, multimask, pick=pick)
        zoom = self.zoom_refine if zoom_refine is None else zoom_refine
        h, w = self._image.shape[:2]
        if max(h, w) > 2 * self.image_size:
            bbox = self._positive_bbox(res, entry.geo)
            crop = None if bbox is None else self._zoom_crop(bbox, pts, bx)
            click = False
            if crop is None and bbox is not None and bx is None and len(pts) == 1 and lab[0] == 1:
                crop, click = self._click_crop(pts[0]), True  # the object may be small: look closer at the click
            res.zoomable = crop is not None  # zoom-in refinement would apply (a caller may ask for it later)
            if crop is not None:
                res.zoom_from = ZoomRequest(self._key, crop, pts, lab, bx, multimask, click, pick, mask_input)
            if zoom and crop is not None:
                z = self._zoom(res, res.zoom_from)
                res = res if z is None else z
        return res if refine is False else self._refined(res, pts, lab, mask_input)

    def _inside_image(self, pts: np.ndarray, bx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The one rule for prompts outside the image (the API, the CLI and the annotator all come through here):
        a point outside it, or a box wholly outside it, is refused with one line; a box partly outside is clipped
        to the image."""
        h, w = self._image.shape[:2]
        out = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if out.any():
            x, y = pts[np.flatnonzero(out)[0]]
            raise ValueError(f"points: ({x:g}, {y:g}) lies outside the image ({w} x {h} pixels)")
        if bx is not None:
            clipped = np.clip(bx, 0, [w, h, w, h]).astype(np.float32)
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise ValueError(f"box: ({', '.join(f'{v:g}' for v in bx)}) lies outside the image ({w} x {h} "
                                 "pixels)")
            if not np.array_equal(clipped, bx):
                import logging

                logging.getLogger(__name__).warning("box clipped to the image: %s -> %s", bx.tolist(),
                                                    clipped.tolist())
            bx = clipped
        return pts, bx

    def zoom_in(self, first: Prediction, refine: bool | None = None) -> Prediction | None:
        """Zoom-in refinement of a full-view result (``predict(..., zoom_refine=False)`` with ``zoomable`` True):
        only the crop is encoded and decoded, the full-view decode is not repeated. None when ``first`` is not
        zoomable or its image is no longer the current one."""
        z = first.zoom_from
        if z is None or z.image_key != self._key or self._image is None:
            return None
        res = self._zoom(first, z)
        if res is None or refine is False:
            return res
        return self._refined(res, z.points, z.labels, z.mask_input)

    def _refined(self, res: Prediction, pts: np.ndarray, lab: np.ndarray, mask_input) -> Prediction:
        """``res`` with the full-resolution refinement (refine.py): each mask obeys every click; a correction (a
        prompt with ``mask_input``) is decided at the image's resolution and merged into the mask shown before."""
        refiner = self.refiner
        if refiner is None or not len(pts):
            return res
        key, image = self._key, self._image
        previous = refiner.shown(key, mask_input)
        radius = refiner.cfg.click_radius_px

        def render(i: int) -> np.ndarray:
            correcting = mask_input is not None or refiner.cfg.first_click
            region = res.region(i) if (correcting and res.region is not None) else False
            if region is not False:
                cell = region[2] if region is not None else max(image.shape[:2]) / res.lowres.shape[-1]
                m = refiner.correct(key, image, None if region is None else region[:2], pts, lab, cell, previous)
            else:
                m = obey_clicks(res.mask(i), pts, lab, radius)
            refiner.remember(key, res.lowres[i], m)
            return m

        out = Prediction(res.scores, res.lowres, res.object_score, render=render, zoomed=res.zoomed,
                         features=lambda: res.features)
        out.zoomable, out.zoom_from, out.region = res.zoomable, res.zoom_from, res.region
        out.unrefined = res  # the model's own masks, for callers that judge the model (e.g. propagation's stops)
        return out

    def _encode_prompt(self, geo: Geometry, pts, lab, bx):
        coords = [geo.to_model(pts)] if len(pts) else []
        labels = [lab] if len(pts) else []
        if bx is not None:
            coords.append(geo.to_model(bx.reshape(2, 2)))
            labels.append(np.array([2, 3], np.float32))
        return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.float32)

    def _predict_entry(self, entry: _Entry, pts, lab, bx, mask_input, multimask: bool, zoomed: bool = False,
                       pick: bool = True) -> Prediction:
        geo = entry.geo
        coords, labels = self._encode_prompt(geo, pts, lab, bx)
        logits, iou, obj = self.backend.decode(entry.feats, coords, labels, mask_input)
        if multimask:
            logits, iou = logits[1:], iou[1:]
        else:
            logits, iou = logits[:1], iou[:1]
        iou = np.asarray(iou, dtype=np.float32).reshape(-1)
        rank, feats = iou, None
        if multimask and len(pts) == 1 and lab[0] == 1 and bx is None and mask_input is None and len(iou) > 1:
            from napari_ultratinysam.inference.pick import candidate_features, pick_scores

            cell = geo.size / logits.shape[-1]
            args = (logits, iou, coords[0] / cell, tuple(int(np.ceil(v / cell)) for v in geo.new_hw), float(obj),
                    zoomed)
            memo: list[np.ndarray] = []

            def feats() -> np.ndarray:  # token order; computed once, and only when the pick or a caller needs them
                if not memo:
                    memo.append(candidate_features(*args))
                return memo[0]

            if pick and self.cfg.candidate_pick is not None:
                rank = pick_scores(self.cfg.candidate_pick, feats())
        order = np.argsort(-rank, kind="stable")
        logits, iou = np.ascontiguousarray(logits[order], dtype=np.float32), iou[order]
        empty = self.cfg.gate_by_object_score and obj <= 0

        def render(i: int) -> np.ndarray:
            if empty:
                return np.zeros((geo.orig_h, geo.orig_w), dtype=bool)
            return self.upsample_masks(logits[i:i + 1], geo)[0]

        def region(i: int) -> tuple | None:
            box = None if empty else self._lowres_bbox(logits[i] > 0, geo, margin=1)
            if box is None:
                return None
            cell = geo.size / logits.shape[-1] / geo.scale  # image px per low-res cell
            return box, np.asarray(logits_to_image(logits[i:i + 1], geo, box))[0], cell

        out = Prediction(iou, logits, obj, render=render,
                         features=None if feats is None else (lambda: feats()[order]))
        out.region = region
        return out

    @staticmethod
    def _lowres_bbox(pos: np.ndarray, geo: Geometry, margin: int = 1) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) image pixels covering the low-res cells in ``pos`` (l, l) bool, plus ``margin`` cells."""
        if not pos.any():
            return None
        lh = pos.shape[-2]
        ys, xs = np.nonzero(pos)
        cell = geo.size / lh  # model px per low-res cell
        nh, nw = geo.new_hw
        sy, sx = geo.orig_h / nh, geo.orig_w / nw  # image px per model px
        x0 = int(max(0, np.floor((xs.min() - margin) * cell * sx)))
        y0 = int(max(0, np.floor((ys.min() - margin) * cell * sy)))
        x1 = int(min(geo.orig_w, np.ceil((xs.max() + 1 + margin) * cell * sx)))
        y1 = int(min(geo.orig_h, np.ceil((ys.max() + 1 + margin) * cell * sy)))
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def _positive_bbox(self, res: Prediction, geo: Geometry) -> tuple[int, int, int, int] | None:
        """Image-pixel box of the best candidate's positive logits (no full-resolution mask needed)."""
        if self.cfg.gate_by_object_score and res.object_score <= 0:
            return None
        return self._lowres_bbox(res.lowres[0] > 0, geo, margin=0)

    @staticmethod
    def upsample_masks(lowres: np.ndarray, geo: Geometry) -> np.ndarray:
        """(K, l, l) logits -> (K, H, W) bool, computed only inside the region where the logits are positive."""
        k = lowres.shape[0]
        out = np.zeros((k, geo.orig_h, geo.orig_w), dtype=bool)
        box = Predictor._lowres_bbox((lowres > 0).any(axis=0), geo, margin=1)
        if box is None:
            return out
        x0, y0, x1, y1 = box
        region = np.asarray(logits_to_image(lowres, geo, box))
        out[:, y0:y1, x0:x1] = region > 0
        return out

    def _zoom_crop(self, bbox, pts, bx) -> tuple[int, int, int, int] | None:
        """The square crop (x0, y0, x1, y1) that zoom-in refinement would encode, or None when the object is
        already large in the full view."""
        h, w = self._image.shape[:2]
        x0, y0, x1, y1 = bbox
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
        return cx0, cy0, min(w, cx0 + side), min(h, cy0 + side)

    def _click_crop(self, pt: np.ndarray) -> tuple[int, int, int, int]:
        """The square crop of the model's input size centred on a click (x, y), inside the image."""
        h, w = self._image.shape[:2]
        side = self.image_size
        cx0 = int(np.clip(np.round(pt[0] - side / 2), 0, max(0, w - side)))
        cy0 = int(np.clip(np.round(pt[1] - side / 2), 0, max(0, h - side)))
        return cx0, cy0, min(w, cx0 + side), min(h, cy0 + side)

    @staticmethod
    def _touches_crop_edge(mask: np.ndarray, crop, h: int, w: int) -> bool:
        """Whether a (crop-sized) mask reaches an edge of the crop that is not an edge of the image."""
        x0, y0, x1, y1 = crop
        return bool((y0 > 0 and mask[0].any()) or (y1 < h and mask[-1].any())
                    or (x0 > 0 and mask[:, 0].any()) or (x1 < w and mask[:, -1].any()))

    def _full_view_lowres(self, sub: Prediction, crop) -> np.ndarray:
        """The crop's low-res logits (K, l, l) resampled onto the full view's low-res grid (nearest cell centre;
        -10 outside the crop), to feed back as ``mask_input`` when the crop, not the full view, made the mask."""
        geo = Geometry(*self._image.shape[:2], self.image_size)  # the full view's
        cx0, cy0, cx1, cy1 = crop
        k, l = sub.lowres.shape[0], sub.lowres.shape[-1]
        nh, nw = geo.new_hw
        cells = (np.arange(l) + 0.5) * geo.size / l  # model px of each cell centre
        ys, xs = cells * geo.orig_h / nh, cells * geo.orig_w / nw  # image px
        iy = np.nonzero((ys >= cy0) & (ys < cy1))[0]
        ix = np.nonzero((xs >= cx0) & (xs < cx1))[0]
        out = np.full((k, l, l), -10.0, np.float32)
        if len(iy) and len(ix):
            box = (int(xs[ix[0]]), int(ys[iy[0]]), int(xs[ix[-1]]) + 1, int(ys[iy[-1]]) + 1)
            crop_geo = Geometry(cy1 - cy0, cx1 - cx0, geo.size)
            region = np.asarray(logits_to_image(sub.lowres, crop_geo, (box[0] - cx0, box[1] - cy0, box[2] - cx0,
                                                                       box[3] - cy0)))
            out[:, iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1] = region[:, (ys[iy] - box[1]).astype(int)][
                :, :, (xs[ix] - box[0]).astype(int)]
        return out

    def _zoom(self, first: Prediction, z: ZoomRequest) -> Prediction | None:
        """Predict again on ``z.crop`` encoded at the model's resolution. ``z.click``: a crop centred on a single
        click whose full-view mask was too large to zoom on; its result is kept only when it looks like a whole
        object (its best mask stays inside the crop and scores >= CLICK_ZOOM_MIN_SCORE), else None."""
        crop, pts, lab, bx, multimask, click, pick = z.crop, z.points, z.labels, z.box, z.multimask, z.click, z.pick
        img = self._image
        h, w = img.shape[:2]
        cx0, cy0, cx1, cy1 = crop
        key = (self._key, "crop", cx0, cy0, cx1, cy1)
        entry = self._embed(img[cy0:cy1, cx0:cx1], key)
        off = np.array([cx0, cy0], np.float32)
        cb = None if bx is None else bx - np.concatenate([off, off])
        sub = self._predict_entry(entry, pts - off if len(pts) else pts, lab, cb, None, multimask, zoomed=True,
                                  pick=pick)
        lowres = first.lowres  # the full view's logits describe the whole image: they are fed back
        if click:
            if sub.scores[0] < CLICK_ZOOM_MIN_SCORE or not sub.mask(0).any() or \
                    self._touches_crop_edge(sub.mask(0), crop, h, w):
                return None
            lowres = self._full_view_lowres(sub, crop)  # the full view's logits describe another (larger) mask

        def render(i: int) -> np.ndarray:
            m = np.zeros((h, w), dtype=bool)
            m[cy0:cy1, cx0:cx1] = sub.mask(i)
            return m

        def region(i: int) -> tuple | None:
            r = sub.region(i)
            if r is None:
                return None
            (x0, y0, x1, y1), logits, cell = r
            return (x0 + cx0, y0 + cy0, x1 + cx0, y1 + cy0), logits, cell

        out = Prediction(sub.scores, lowres, sub.object_score, render=render, zoomed=True,
                         features=lambda: sub.features)
        out.region = region
        return out
