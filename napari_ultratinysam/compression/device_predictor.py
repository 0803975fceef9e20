"""What the IMX500 will produce, behind the normal predictor interface (``set_image`` / ``predict``).

The deployable graph (``deploy_graph.DeployGraph``) has its prompt baked in: the sensor runs one 128x128 frame
with, e.g., one positive click at the frame centre. The Raspberry Pi honours a user's prompt by moving the
inference ROI (``set_inference_roi_abs``); :class:`DevicePredictor` does exactly that on a still image::

    dp = DevicePredictor.from_quantized_onnx("imx500_out/")          # or the .onnx; prompt from metadata.json
    dp = DevicePredictor.from_float(model, prompt="center-point")     # the float deploy graph (torch)
    dp.set_image(image)
    r = dp.predict(points=[[x, y]], labels=[1])   # r.masks (K, H, W) bool best first, r.scores, r.lowres, ...

How a prompt becomes an ROI (``roi_for``; ROI = integer rectangle of image pixels, scaled to the graph input):

* centre-point graph: a square ROI of side ``roi_size`` (default min(H, W) of the image) centred on the FIRST
  POSITIVE click, so the click lands on the baked point (64, 64);
* points graph: the same square ROI, placed so that the first positive click lands on the first positive baked
  point; the other baked points stay where they are in the frame (they are not the user's other clicks);
* box graph: the ROI that maps the user's box onto the baked box (``box_roi="exact"``: a rectangle, so the
  image is squashed when the two boxes differ in aspect ratio, as the sensor does with a non-square ROI;
  ``box_roi="square"``: a square ROI, box centre on baked-box centre, the user's box scaled to fit inside the
  baked one).

What cannot be honoured (the graph has no input for it): negative clicks and every click after the first
positive one are ignored; ``mask_input`` (previous logits), ``multimask`` and ``zoom_refine`` are ignored (the
graph's K masks are always returned, best first); a box given to a point graph is used through its centre (as a
click); points given to a box graph raise ValueError, as does a prompt with no positive click and no box.
So only the first click / the box is meaningful: an interactive evaluation is meaningful at 1 click (mIoU@1).

ROI parts outside the image are filled with zeros (like the letterbox padding); the mask logits (K, S/4, S/4)
over the ROI are resized bilinearly to the ROI's size in image pixels and pasted back; pixels outside the ROI
are False. ``lowres`` holds the logits over the ROI (not the letterboxed image: do not feed them back to a float
predictor as ``mask_input``).
"""
from __future__ import annotations

import copy
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from napari_ultratinysam.compression.deploy_graph import BakedPrompt, DeployGraph, make_prompt, to_graph_input
from napari_ultratinysam.compression.metadata import ONNX_NAME
from napari_ultratinysam.core.transforms import bilinear_weights, resize_uint8, to_rgb_uint8
from napari_ultratinysam.inference.prediction import Prediction, as_points
from napari_ultratinysam.inference.predictor import Predictor

log = logging.getLogger(__name__)

BOX_ROI_MODES = ("exact", "square")
METADATA_NAME = "metadata.json"


@dataclass(frozen=True)
class Roi:
    """An inference ROI in image pixels: columns x0 .. x0 + w - 1, rows y0 .. y0 + h - 1 (may leave the image)."""

    x0: int
    y0: int
    w: int
    h: int

    def to_model(self, points_xy: np.ndarray, size: int) -> np.ndarray:
        """Image pixel coordinates (..., 2) -> model-input coordinates of the S x S frame (the predictor's
        convention: x * scale, the prompt encoder adds the half pixel)."""
        p = np.asarray(points_xy, dtype=np.float64)
        return (p - np.array([self.x0, self.y0])) * np.array([size / self.w, size / self.h])

    def to_image(self, model_xy: np.ndarray, size: int) -> np.ndarray:
        p = np.asarray(model_xy, dtype=np.float64)
        return p * np.array([self.w / size, self.h / size]) + np.array([self.x0, self.y0])

    def intersect(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the ROI inside an h x w image, None when they do not overlap."""
        x0, y0 = max(0, self.x0), max(0, self.y0)
        x1, y1 = min(w, self.x0 + self.w), min(h, self.y0 + self.h)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def prompt_from_dict(d: dict) -> BakedPrompt:
    """The baked prompt recorded in an IMX500 export's metadata.json (``{"mode", "points", "labels"}``);
    ValueError names the field that cannot be read."""
    try:
        mode = str(d["mode"])
        pts = tuple((float(p[0]), float(p[1])) for p in d["points"])
        labels = tuple(int(v) for v in d["labels"])
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ValueError(f"metadata prompt {d!r}: cannot be read ({e})") from None
    if mode not in ("center-point", "points", "box") or len(pts) != len(labels) or not pts:
        raise ValueError(f"metadata prompt {d!r}: unknown mode or points/labels mismatch")
    return BakedPrompt(mode, pts, labels)


def resolve_onnx_path(path: str | Path) -> tuple[Path, Path | None]:
    """``path`` = the quantized ONNX or its export folder -> (onnx path, metadata.json path or None).

    Raises FileNotFoundError with one line for a missing path, a folder without the ONNX, or a non-ONNX file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder (give the quantized ONNX or the export folder)")
    if p.is_dir():
        onnx = p / ONNX_NAME
        if not onnx.is_file():
            cands = sorted(p.glob("*.onnx"))
            if len(cands) != 1:
                raise FileNotFoundError(f"{p}: no {ONNX_NAME} in this folder (write one with `utsam export-imx500` "
                                        f"or `utsam quantize`)")
            onnx = cands[0]
    else:
        if p.suffix.lower() != ".onnx":
            raise FileNotFoundError(f"{p}: not an .onnx file (give the quantized ONNX or the export folder)")
        onnx = p
    meta = onnx.parent / METADATA_NAME
    return onnx, (meta if meta.is_file() else None)


def read_metadata(path: str | Path) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read the export metadata ({e})") from None


class DevicePredictor:
    """The device-faithful predictor: the baked-prompt graph, steered by the inference ROI (module docstring).

    ``run(x)`` takes the graph input (1, 3, S, S) float32 = pixels / 256 and returns
    [masks (1, K, S/4, S/4), iou (1, K)(, object score (1, 1))] as numpy arrays.
    """

    def __init__(self, run: Callable[[np.ndarray], Sequence[np.ndarray]], prompt: BakedPrompt,
                 image_size: int = 128, roi_size: int | None = None, gate: bool = False, box_roi: str = "exact",
                 name: str = "imx500", cache_size: int = 4, result_cache_size: int = 64,
                 source: str | None = None):
        if box_roi not in BOX_ROI_MODES:
            raise ValueError(f"box_roi must be one of {', '.join(BOX_ROI_MODES)}, got {box_roi!r}")
        if roi_size is not None and int(roi_size) < 1:
            raise ValueError(f"roi_size must be >= 1 pixel, got {roi_size}")
        self._run = run
        self.prompt = prompt
        self.image_size = int(image_size)
        self.lowres_size = self.image_size // 4
        self.roi_size = None if roi_size is None else int(roi_size)
        self.gate = bool(gate)
        self.box_roi = box_roi
        self.name = name
        self.source = source
        self.cache_size = max(1, int(cache_size))
        self.result_cache_size = max(0, int(result_cache_size))
        self._images: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._results: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
        self._image: np.ndarray | None = None
        self._key: Hashable | None = None
        self._graph: DeployGraph | None = None
        self.metadata: dict = {}  # the export's metadata.json (quantized ONNX only)
        self.runner = None  # the QuantizedOnnxRunner (quantized ONNX only)
        self.last_roi: Roi | None = None  # the ROI of the latest predict()

    # ------------------------------------------------------------------------------------------------ factories
    @classmethod
    def from_quantized_onnx(cls, path: str | Path, roi_size: int | None = None, threads: int = 1,
                            prompt: BakedPrompt | None = None, gate: bool | None = None,
                            box_roi: str = "exact") -> "DevicePredictor":
        """The quantized IMX500 ONNX (onnxruntime + mct-quantizers ops). ``path``: the .onnx or the export
        folder. The baked prompt is read from ``metadata.json`` beside it (written by ``utsam export-imx500`` /
        ``utsam quantize``); without one, ``prompt`` or else the centre point is assumed (logged)."""
        from napari_ultratinysam.compression.runner import QuantizedOnnxRunner

        onnx, meta_path = resolve_onnx_path(path)
        runner = QuantizedOnnxRunner(onnx, threads=threads)
        meta = read_metadata(meta_path) if meta_path is not None else {}
        if prompt is None:
            if "prompt" in meta:
                prompt = prompt_from_dict(meta["prompt"])
            else:
                log.warning("%s: no metadata.json beside it: assuming the centre-point prompt", onnx)
                prompt = make_prompt("center-point", image_size=runner.image_size)
        if gate is None:
            gate = bool(((meta.get("model") or {}).get("config") or {}).get("gate_by_object_score", False))
        names = runner.output_names
        order = [names.index(n) for n in ("masks", "iou", "object_score") if n in names]
        if len(order) < 2:
            order = list(range(len(names)))

        def run(x: np.ndarray) -> list[np.ndarray]:
            outs = runner.run(x)
            return [outs[i] for i in order]

        dp = cls(run, prompt, image_size=runner.image_size, roi_size=roi_size, gate=gate, box_roi=box_roi,
                 name="imx500-quantized", source=str(onnx))
        dp.runner = runner
        dp.metadata = meta
        return dp

    from_export = from_quantized_onnx

    @classmethod
    def from_float(cls, model, prompt: str | BakedPrompt = "center-point", points=None, box=None,
                   roi_size: int | None = None, gate: bool | None = None, box_roi: str = "exact",
                   copy_model: bool = True) -> "DevicePredictor":
        """The float deploy graph (torch) of ``model`` with ``prompt`` baked in (a mode name with ``points`` /
        ``box`` in model pixels as for ``make_prompt``, or a BakedPrompt, e.g. ``from_quantized_onnx(...).prompt``
        for a like-for-like float-vs-quantized comparison). The model is deep-copied unless ``copy_model=False``
        (building the graph switches the trunk to its deploy form; :meth:`close` switches it back)."""
        net = copy.deepcopy(model) if copy_model else model
        net.eval()
        s = net.cfg.image_size
        baked = prompt if isinstance(prompt, BakedPrompt) else make_prompt(prompt, points=points, box=box,
                                                                              image_size=s)
        graph = DeployGraph(net, baked)
        if gate is None:
            gate = bool(getattr(net.cfg, "gate_by_object_score", False))

        @torch.no_grad()
        def run(x: np.ndarray) -> list[np.ndarray]:
            return [o.numpy() for o in graph(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))]

        dp = cls(run, baked, image_size=s, roi_size=roi_size, gate=gate, box_roi=box_roi, name="imx500-float")
        dp._graph = graph
        return dp

    @classmethod
    def from_checkpoint_float(cls, checkpoint: str | Path | None = None, **kw) -> "DevicePredictor":
        """:meth:`from_float` of a checkpoint (default: the shipped weights)."""
        from napari_ultratinysam.compression.pipeline import load_export_model

        net, source = load_export_model(checkpoint=checkpoint)
        dp = cls.from_float(net, copy_model=False, **kw)
        dp.source = source
        return dp

    def close(self) -> None:
        """Give a float graph's model its fast trunk back (only matters with ``copy_model=False``)."""
        if self._graph is not None:
            self._graph.release()
            self._graph = None

    # ------------------------------------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray, key: Hashable | None = None) -> None:
        rgb = to_rgb_uint8(image, name="image")
        key = Predictor.image_key(rgb) if key is None else key
        self._images[key] = rgb
        self._images.move_to_end(key)
        while len(self._images) > self.cache_size:
            self._images.popitem(last=False)
        self._image, self._key = rgb, key

    def has_image(self, key: Hashable) -> bool:
        return key in self._images

    def clear_cache(self) -> None:
        self._images.clear()
        self._results.clear()

    # ------------------------------------------------------------------------------------------------ geometry
    def default_roi_size(self, image_hw: tuple[int, int]) -> int:
        return self.roi_size if self.roi_size is not None else int(min(image_hw))

    def _anchor(self, pts: np.ndarray, lab: np.ndarray, bx: np.ndarray | None) -> np.ndarray:
        pos = pts[lab == 1] if len(pts) else pts
        if len(pos):
            return pos[0].astype(np.float64)
        if bx is not None:
            return np.array([(bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2], np.float64)
        raise ValueError("the IMX500 graph needs a positive click (its baked prompt is a positive click; "
                         "negative clicks cannot be honoured)")

    def roi_for(self, points=None, labels=None, box=None, image_hw: tuple[int, int] | None = None) -> Roi:
        """The inference ROI that makes the baked prompt stand for this prompt (module docstring)."""
        if image_hw is None:
            if self._image is None:
                raise RuntimeError("call set_image(image) before predict()")
            image_hw = self._image.shape[:2]
        pts, lab = as_points(points, labels)
        bx = _as_box(box)
        s = self.image_size
        if self.prompt.mode == "box":
            if bx is None:
                raise ValueError("this IMX500 graph has a box baked in: give a box (clicks cannot steer it)")
            (b0, b1), (b2, b3) = self.prompt.points
            uw, uh = max(bx[2] - bx[0], 1.0), max(bx[3] - bx[1], 1.0)
            sx, sy = (b2 - b0) / uw, (b3 - b1) / uh  # model px per image px
            if self.box_roi == "square":
                sx = sy = min(sx, sy)
                cx, cy = (bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2
                w = h = max(1, int(round(s / sx)))
                x0 = int(round(cx - (b0 + b2) / 2 / sx))
                y0 = int(round(cy - (b1 + b3) / 2 / sy))
                return Roi(x0, y0, w, h)
            w, h = max(1, int(round(s / sx))), max(1, int(round(s / sy)))
            return Roi(int(round(bx[0] - b0 / sx)), int(round(bx[1] - b1 / sy)), w, h)
        anchor = self._anchor(pts, lab, bx)
        baked = next(p for p, l in zip(self.prompt.points, self.prompt.labels) if l == 1)
        side = self.default_roi_size(image_hw)
        x0 = int(round(anchor[0] - baked[0] * side / s))
        y0 = int(round(anchor[1] - baked[1] * side / s))
        return Roi(x0, y0, side, side)

    def roi_input(self, roi: Roi) -> np.ndarray:
        """The graph input for ``roi`` of the current image: (1, 3, S, S) float32 = pixels / 256, the parts
        outside the image zero (like the letterbox padding)."""
        img = self._image
        h, w = img.shape[:2]
        box = roi.intersect(h, w)
        if box is None:
            raise ValueError(f"the inference ROI {roi} lies outside the {w}x{h} image (is the click inside it?)")
        x0, y0, x1, y1 = box
        if (x0, y0, x1, y1) == (roi.x0, roi.y0, roi.x0 + roi.w, roi.y0 + roi.h):
            crop = img[y0:y1, x0:x1]
        else:
            crop = np.zeros((roi.h, roi.w, 3), np.uint8)
            crop[y0 - roi.y0:y1 - roi.y0, x0 - roi.x0:x1 - roi.x0] = img[y0:y1, x0:x1]
        s = self.image_size
        if crop.shape[:2] != (s, s):
            crop = resize_uint8(np.ascontiguousarray(crop), (s, s))
        return to_graph_input(crop).numpy()

    def paste(self, logits: np.ndarray, roi: Roi, image_hw: tuple[int, int]) -> np.ndarray:
        """(K, l, l) logits over ``roi`` -> (K, H, W) bool masks of the image (False outside the ROI)."""
        k, lh, lw = logits.shape
        h, w = image_hw
        out = np.zeros((k, h, w), dtype=bool)
        box = roi.intersect(h, w)
        if box is None or not (logits > 0).any():
            return out
        x0, y0, x1, y1 = box
        wy = bilinear_weights(y1 - y0, y0 - roi.y0, lh / roi.h, lh)
        wx = bilinear_weights(x1 - x0, x0 - roi.x0, lw / roi.w, lw)
        region = np.matmul(np.matmul(wy, np.ascontiguousarray(logits, np.float32)), wx.T)
        out[:, y0:y1, x0:x1] = region > 0
        return out

    # ------------------------------------------------------------------------------------------------ predict
    def run_roi(self, roi: Roi) -> tuple[np.ndarray, np.ndarray, float]:
        """(logits (K, l, l), iou (K,), object-score logit) of the graph on ``roi`` of the current image."""
        ck = (self._key, roi)
        hit = self._results.get(ck)
        if hit is not None:
            self._results.move_to_end(ck)
            return hit
        outs = self._run(self.roi_input(roi))
        logits = np.asarray(outs[0], np.float32)[0]
        iou = np.asarray(outs[1], np.float32).reshape(-1)
        obj = float(np.asarray(outs[2]).reshape(-1)[0]) if len(outs) > 2 else float("inf")
        res = (logits, iou, obj)
        if self.result_cache_size:
            self._results[ck] = res
            while len(self._results) > self.result_cache_size:
                self._results.popitem(last=False)
        return res

    def predict(self, points=None, labels=None, box=None, mask_input: np.ndarray | None = None,
                multimask: bool | None = None, zoom_refine: bool | None = None) -> Prediction:
        """Masks (K, H, W) bool best first as the sensor would produce them for this prompt (see the module
        docstring for which parts of a prompt are honoured). ``mask_input``, ``multimask`` and ``zoom_refine``
        are accepted for interface compatibility and ignored."""
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict()")
        pts, lab = as_points(points, labels)
        bx = _as_box(box)
        if len(pts) == 0 and bx is None:
            raise ValueError("predict needs at least one point or a box")
        hw = self._image.shape[:2]
        roi = self.roi_for(pts, lab, bx, hw)
        logits, iou, obj = self.run_roi(roi)
        order = np.argsort(-iou, kind="stable")
        logits = np.ascontiguousarray(logits[order])
        iou = iou[order]
        self.last_roi = roi
        empty = self.gate and obj <= 0

        def render(i: int) -> np.ndarray:  # one candidate at image resolution
            if empty:
                return np.zeros(hw, dtype=bool)
            return self.paste(logits[i:i + 1], roi, hw)[0]

        try:  # a Prediction that upsamples candidates on demand (only the shown one is pasted back)
            return Prediction(scores=iou, lowres=logits, object_score=obj, render=render)
        except TypeError:  # the eager Prediction dataclass
            masks = self.paste(logits, roi, hw)
            if empty:
                masks[:] = False
            return Prediction(masks=masks, scores=iou, lowres=logits, object_score=obj)


def _as_box(box) -> np.ndarray | None:
    if box is None:
        return None
    bx = np.asarray(box, dtype=np.float64).reshape(-1)
    if bx.size != 4 or not np.all(np.isfinite(bx)):
        raise ValueError(f"box: expected (x0, y0, x1, y1), got {box!r}")
    return np.array([min(bx[0], bx[2]), min(bx[1], bx[3]), max(bx[0], bx[2]), max(bx[1], bx[3])])


def best_mask(pred: Prediction) -> np.ndarray:
    """The shown (best, first) mask of a prediction, (H, W) bool, without upsampling the others when possible."""
    return pred.mask(0) if callable(getattr(pred, "mask", None)) else np.asarray(pred.masks)[0]


def device_agreement(float_dp: DevicePredictor, quant_dps: "DevicePredictor | dict[str, DevicePredictor]",
                     dataset, indices: Sequence[int] | None = None, max_objects: int | None = None,
                     min_area: int = 0, min_area_128: int = 0, progress: bool = False) -> dict:
    """Float deploy graph vs quantized graph(s) through the same ROI steering, one positive click at each object's
    interior (the interactive protocol's first click): IoU between the shown masks (best predicted IoU) and each
    one's IoU with the ground truth (mIoU@1, ignore pixels excluded).

    ``dataset``: AnnotatedImage items (``read_dataset``); ``indices``: which images (default all, in order);
    objects kept: area >= ``min_area`` image pixels and >= ``min_area_128`` pixels after squashing to 128x128
    (the paper protocol's filter, 150). ``quant_dps``: one predictor, or {name: predictor} to compare several
    (PTQ, QAT) on the same objects. Returns, for one predictor, {num_objects, mean_iou, median_iou, min_iou,
    miou@1_float, miou@1_quantized, per_object}; for a dict, {num_objects, miou@1_float, per_object_float,
    name: {mean_iou, median_iou, min_iou, miou@1, per_object}}."""
    from napari_ultratinysam.core import prompts
    from napari_ultratinysam.evaluation import metrics
    from napari_ultratinysam.evaluation.protocols import squashed_area

    single = isinstance(quant_dps, DevicePredictor)
    qs = {"quantized": quant_dps} if single else dict(quant_dps)
    f_gt: list[float] = []
    agree: dict[str, list[float]] = {k: [] for k in qs}
    q_gt: dict[str, list[float]] = {k: [] for k in qs}
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    it = idx
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(idx, desc="device agreement", unit="img")
    for i in it:
        if max_objects is not None and len(f_gt) >= max_objects:
            break
        item = dataset[i]
        if item.num_objects == 0:
            continue
        ignore = item.extra.get("ignore") if item.extra else None
        valid = item.masks & ~np.asarray(ignore, bool)[None] if ignore is not None else item.masks
        area = valid.reshape(item.num_objects, -1).sum(1)
        sq = squashed_area(item.masks, 128) if min_area_128 else np.full(item.num_objects, 1 << 30)
        todo = [j for j in range(item.num_objects) if area[j] > 0 and area[j] >= min_area and sq[j] >= min_area_128]
        if max_objects is not None:
            todo = todo[: max_objects - len(f_gt)]
        if not todo:
            continue
        float_dp.set_image(item.image)
        for q in qs.values():
            q.set_image(item.image)
        for j in todo:
            gt = item.masks[j]
            pt, lab = prompts.click_from_error(gt, np.zeros_like(gt), ignore)
            kw = {"points": np.asarray([pt], np.float32), "labels": np.asarray([lab])}
            rf = float_dp.predict(**kw)
            mf = best_mask(rf)
            f_gt.append(metrics.mask_iou(mf, gt, ignore))
            for name, q in qs.items():
                mq = best_mask(q.predict(**kw))
                agree[name].append(metrics.agreement_iou(mf, mq))
                q_gt[name].append(metrics.mask_iou(mq, gt, ignore))
    if not f_gt:
        raise ValueError("device_agreement: no objects to compare")

    def stats(name: str) -> dict:
        a = agree[name]
        return {"mean_iou": float(np.mean(a)), "median_iou": float(np.median(a)), "min_iou": float(np.min(a)),
                "miou@1": float(np.mean(q_gt[name])), "per_object": {"agreement": a, "gt": q_gt[name]}}

    if single:
        st = stats("quantized")
        return {"num_objects": len(f_gt), "mean_iou": st["mean_iou"], "median_iou": st["median_iou"],
                "min_iou": st["min_iou"], "miou@1_float": float(np.mean(f_gt)), "miou@1_quantized": st["miou@1"],
                "per_object": {"agreement": agree["quantized"], "float_gt": f_gt, "quantized_gt": q_gt["quantized"]}}
    return {"num_objects": len(f_gt), "miou@1_float": float(np.mean(f_gt)), "per_object_float": f_gt,
            **{name: stats(name) for name in qs}}
