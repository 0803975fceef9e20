"""Evaluation protocols: the interactive one (RITM / SimpleClick) and the original paper's.

Both work on any sized, indexable dataset of :class:`AnnotatedImage` and on any object with the predictor
interface (``set_image(image)``, ``predict(points, labels, box, mask_input, multimask)`` returning masks
(K, H, W) bool at image resolution, scores (K,), lowres (K, h, w) logits). IoU is always computed at the
image's own resolution, with the image's ``extra["ignore"]`` (H, W) pixels excluded when present.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from napari_ultratinysam.core import prompts
from napari_ultratinysam.data.types import AnnotatedImage
from napari_ultratinysam.evaluation import metrics

PAPER_MODES = ("1click", "1click_interior", "3clicks", "5clicks", "box")
DEFAULT_PAPER_MODES = PAPER_MODES


class PredictorLike(Protocol):
    def set_image(self, image: np.ndarray) -> Any: ...

    def predict(self, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask: bool | None = None) -> Any: ...


# ------------------------------------------------------------------------------------------ helpers
def _ignore_of(item: AnnotatedImage) -> np.ndarray | None:
    ig = item.extra.get("ignore") if item.extra else None
    if ig is None:
        return None
    ig = np.asarray(ig, dtype=bool)
    if ig.shape != item.image.shape[:2]:
        raise ValueError(f"{item.source or item.name}: ignore mask shape {ig.shape} does not match image "
                         f"{item.image.shape[:2]}")
    return ig


def _best(result: Any, hw: tuple[int, int], where: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(best mask (H, W) bool, its predicted IoU, its low-res logits or None) from a predictor result."""
    scores = np.asarray(result.scores, dtype=np.float64).reshape(-1)
    # our Prediction is best first (its learned pick may prefer a lower score); other predictors: by score
    k = 0 if getattr(result, "best_first", False) or not len(scores) else int(np.argmax(scores))
    if callable(getattr(result, "mask", None)) and len(scores):  # our Prediction: upsample the best one only
        masks = np.asarray(result.mask(k))[None]
        ok, mask = masks.shape[1:] == tuple(hw), masks[0]
    else:
        masks = np.asarray(result.masks)
        ok = masks.ndim == 3 and masks.shape[1:] == tuple(hw) and len(masks) == len(scores) > 0
        mask = masks[k] if ok else None
    if not ok:
        raise ValueError(f"predictor: {where}: expected masks (K, {hw[0]}, {hw[1]}) with K = len(scores) >= 1, "
                         f"got masks {masks.shape} and {len(scores)} scores")
    lowres = getattr(result, "lowres", None)
    low = None if lowres is None else np.asarray(lowres, dtype=np.float32)[k]
    return mask.astype(bool), float(scores[k]), low


def _limit(n: int, max_n: int | None) -> int:
    return n if max_n is None else min(n, int(max_n))


def squashed_area(masks: np.ndarray, size: int = 128) -> np.ndarray:
    """(N,) pixel areas after squashing (N, H, W) masks to size x size with cv2 INTER_NEAREST semantics
    (source index = floor(dst * H / size)), as the paper's area filter did."""
    n, h, w = masks.shape
    rows = np.minimum(np.floor(np.arange(size) * (h / size)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(size) * (w / size)).astype(np.int64), w - 1)
    return masks[:, rows][:, :, cols].reshape(n, -1).sum(axis=1)


# ------------------------------------------------------------------------------------- interactive
@dataclass
class InteractiveResult:
    """Per-object IoU curves. ``ious[n, k]`` = IoU after k+1 clicks of object n."""

    ious: np.ndarray                 # (N, max_clicks) float64
    image_index: np.ndarray          # (N,) index into the dataset
    object_index: np.ndarray         # (N,) index into that image's masks
    areas: np.ndarray                # (N,) object area in pixels (ignore excluded)
    image_names: list[str] = field(default_factory=list)  # (N,)
    num_skipped: int = 0             # objects below min_area (or empty outside the ignore region)
    max_clicks: int = 20


def object_iou_curve(predictor: PredictorLike, gt: np.ndarray, ignore: np.ndarray | None = None,
                     max_clicks: int = 20, click_mode: prompts.ClickMode = "area") -> np.ndarray:
    """(max_clicks,) IoU after each simulated click for one object of the image already set on ``predictor``.

    Click 1 is at the interior of the object (the largest error region of an empty prediction), multimask on,
    best candidate by predicted IoU. Each further click goes to the interior of the largest error region of
    the current prediction, with all previous clicks and the previous best low-res logits as ``mask_input``;
    single-mask or multimask output as the predictor's own rule says (``multimask=None``; SAM's rule, the
    shipped model's: single-mask for several points, ``multimask_max_points`` in the model config). If the
    prediction becomes exact (no error outside ignore) the curve is held.
    """
    hw = gt.shape
    pred = np.zeros(hw, dtype=bool)
    points: list[np.ndarray] = []
    labels: list[int] = []
    lowres: np.ndarray | None = None
    curve = np.zeros(max_clicks, dtype=np.float64)
    for k in range(max_clicks):
        if k and not prompts.has_error(gt, pred, ignore):
            curve[k:] = curve[k - 1]
            break
        pt, lab = prompts.click_from_error(gt, pred, ignore, mode=click_mode)
        points.append(pt)
        labels.append(lab)
        r = predictor.predict(points=np.stack(points).astype(np.float32), labels=np.asarray(labels, dtype=np.int64),
                              mask_input=lowres, multimask=True if k == 0 else None)
        pred, _, lowres = _best(r, hw, f"click {k + 1}")
        curve[k] = metrics.mask_iou(pred, gt, ignore)
    return curve


def evaluate_interactive(predictor: PredictorLike, dataset: Sequence[AnnotatedImage], max_clicks: int = 20,
                         min_area: int = 0, max_images: int | None = None, max_objects: int | None = None,
                         click_mode: prompts.ClickMode = "area", progress: bool = True) -> InteractiveResult:
    """Run the interactive protocol on every object (area >= ``min_area`` image pixels, ignore excluded) of
    the first ``max_images`` images, stopping after ``max_objects`` objects. Returns per-object IoU curves."""
    if max_clicks < 1:
        raise ValueError(f"max_clicks: must be >= 1, got {max_clicks}")
    curves, img_idx, obj_idx, areas, names = [], [], [], [], []
    skipped = 0
    n_img = _limit(len(dataset), max_images)
    bar = tqdm(range(n_img), desc="interactive", unit="img", disable=not progress)
    for i in bar:
        if max_objects is not None and len(curves) >= max_objects:
            break
        item = dataset[i]
        ignore = _ignore_of(item)
        valid = item.masks & ~ignore[None] if ignore is not None else item.masks
        obj_area = valid.sum(axis=(1, 2))
        todo = [j for j in range(item.num_objects) if obj_area[j] > 0 and obj_area[j] >= min_area]
        skipped += item.num_objects - len(todo)
        if max_objects is not None:
            todo = todo[: max_objects - len(curves)]
        if not todo:
            continue
        predictor.set_image(item.image)
        for j in todo:
            curves.append(object_iou_curve(predictor, item.masks[j], ignore, max_clicks, click_mode))
            img_idx.append(i)
            obj_idx.append(j)
            areas.append(int(obj_area[j]))
            names.append(item.name)
        bar.set_postfix(objects=len(curves))
    return InteractiveResult(
        ious=np.asarray(curves, dtype=np.float64).reshape(-1, max_clicks),
        image_index=np.asarray(img_idx, dtype=np.int64), object_index=np.asarray(obj_idx, dtype=np.int64),
        areas=np.asarray(areas, dtype=np.int64), image_names=names, num_skipped=skipped, max_clicks=max_clicks)


# ------------------------------------------------------------------------------------------ paper
@dataclass
class PaperResult:
    """The paper's protocol, per prompt mode. All AP / IoU values are fractions (the paper printed %)."""

    modes: tuple[str, ...]
    paper_map: dict[str, float]           # exactly eval_utsam.py manual_eval
    paper_map_fixed: dict[str, float]     # same, GT pool = the prompted objects (same filter on both sides)
    coco_ap: dict[str, float]             # COCO mask AP, scores = predicted IoU, GT = prompted objects
    coco_ap50: dict[str, float]
    coco_ap75: dict[str, float]
    miou: dict[str, float]                # mean IoU of each prediction with the object it was prompted from
    object_ious: dict[str, np.ndarray]    # per mode (N,)
    num_objects: int                      # prompted objects (area >= min_area at 128x128)
    num_gt_pool: int                      # the paper's GT pool (area >= min_area at full resolution)
    num_images: int                       # images with at least one prompted object


def _paper_extra_points(mask: np.ndarray, com: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random mask pixels, excluding the pixel nearest the centre of mass (as eval_utsam.py did)."""
    ys, xs = np.nonzero(mask)
    nearest = int(np.argmin((xs - com[0]) ** 2 + (ys - com[1]) ** 2))
    m = mask.copy()
    m[ys[nearest], xs[nearest]] = False
    return prompts.random_points(m, k, rng) if m.any() else np.repeat(com[None], k, axis=0)


def paper_prompts(mask: np.ndarray, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Prompts for every paper mode for one (H, W) object, as predict() keyword arguments.

    1click: centre of mass (the paper; may lie outside the object). 1click_interior: our fix, the interior
    point. 3/5clicks: centre of mass + 2/4 seeded uniform random object pixels (the 5-click set extends the
    3-click set). box: the COCO-style bbox (x, y, x + w, y + h), i.e. the tight box with the far edge at +1 px.
    """
    com = prompts.centre_of_mass(mask)
    extra = _paper_extra_points(mask, com, 4, rng)

    def pts(p: np.ndarray) -> dict[str, np.ndarray]:
        p = np.asarray(p, dtype=np.float32).reshape(-1, 2)
        return {"points": p, "labels": np.ones(len(p), dtype=np.int64)}

    return {
        "1click": pts(com),
        "1click_interior": pts(prompts.interior_point(mask)),
        "3clicks": pts(np.vstack([com, extra[:2]])),
        "5clicks": pts(np.vstack([com, extra[:4]])),
        "box": {"box": prompts.tight_box(mask) + np.array([0, 0, 1, 1], dtype=np.float32)},
    }


def evaluate_paper(predictor: PredictorLike, dataset: Sequence[AnnotatedImage],
                   modes: Sequence[str] = DEFAULT_PAPER_MODES, seed: int = 0, min_area_128: int = 150,
                   model_size: int = 128, max_images: int | None = None, max_objects: int | None = None,
                   multimask_all_modes: bool = True, progress: bool = True) -> PaperResult:
    """The paper's protocol (reference spec section 4), reproduced with our fixes reported alongside.

    Objects prompted: area >= ``min_area_128`` after squashing the mask to ``model_size``^2 (nearest).
    One prediction per object and mode; with ``multimask_all_modes`` (the paper) every mode asks for the 3
    multimask candidates and keeps the best by predicted IoU; False uses SAM's rule (multimask only for one
    click). Random points come from ``np.random.default_rng([seed, image index, object index])``.
    Reports the paper's "mAP" (GT pool = objects >= ``min_area_128`` px at FULL resolution, in images with a
    prediction), the fixed variant (pool = prompted objects), COCO AP from predicted IoU and mIoU.
    """
    modes = tuple(modes)
    bad = [m for m in modes if m not in PAPER_MODES]
    if bad or not modes:
        raise ValueError(f"modes: unknown {bad or modes}; choose from {', '.join(PAPER_MODES)}")
    acc: dict[str, dict[str, list]] = {m: {k: [] for k in ("pool", "fixed", "cls", "score", "own")} for m in modes}
    gt_cls_pool: list[np.ndarray] = []
    gt_cls_fixed: list[np.ndarray] = []
    n_obj = n_pool = n_images = 0
    n_img = _limit(len(dataset), max_images)
    bar = tqdm(range(n_img), desc="paper", unit="img", disable=not progress)
    for i in bar:
        if max_objects is not None and n_obj >= max_objects:
            break
        item = dataset[i]
        if item.num_objects == 0:
            continue
        ignore = _ignore_of(item)
        prompted = np.flatnonzero(squashed_area(item.masks, model_size) >= min_area_128)
        if max_objects is not None:
            prompted = prompted[: max_objects - n_obj]
        if not len(prompted):
            continue
        pool = np.flatnonzero(item.masks.reshape(item.num_objects, -1).sum(axis=1) >= min_area_128)
        n_obj += len(prompted)
        n_pool += len(pool)
        n_images += 1
        gt_cls_pool.append(item.class_ids[pool])
        gt_cls_fixed.append(item.class_ids[prompted])
        predictor.set_image(item.image)
        obj_prompts = [paper_prompts(item.masks[j], np.random.default_rng([seed, i, int(j)])) for j in prompted]
        hw = item.image.shape[:2]
        for mode in modes:
            multimask = True if multimask_all_modes else mode.startswith("1click")
            preds, scores = [], []
            for j, pr in zip(prompted, obj_prompts):
                mask, score, _ = _best(predictor.predict(**pr[mode], multimask=multimask), hw,
                                       f"{item.name or i} object {j} {mode}")
                preds.append(mask)
                scores.append(score)
            iou = metrics.iou_matrix(np.stack(preds), item.masks, ignore)  # (P, N_all)
            a = acc[mode]
            a["pool"].append(iou[:, pool])
            a["fixed"].append(iou[:, prompted])
            a["cls"].append(item.class_ids[prompted])
            a["score"].append(np.asarray(scores))
            a["own"].append(iou[np.arange(len(prompted)), prompted])
        bar.set_postfix(objects=n_obj)

    res = PaperResult(modes=modes, paper_map={}, paper_map_fixed={}, coco_ap={}, coco_ap50={}, coco_ap75={},
                      miou={}, object_ious={}, num_objects=n_obj, num_gt_pool=n_pool, num_images=n_images)
    for mode in modes:
        a = acc[mode]
        res.paper_map[mode] = metrics.paper_map(a["pool"], a["cls"], gt_cls_pool)
        res.paper_map_fixed[mode] = metrics.paper_map(a["fixed"], a["cls"], gt_cls_fixed)
        per_t = metrics.coco_ap_per_threshold(a["fixed"], a["score"], a["cls"], gt_cls_fixed)
        res.coco_ap[mode] = float(np.mean(per_t))
        res.coco_ap50[mode] = float(per_t[0])
        res.coco_ap75[mode] = float(per_t[5])
        own = np.concatenate(a["own"]) if a["own"] else np.zeros(0)
        res.object_ious[mode] = own
        res.miou[mode] = float(own.mean()) if own.size else float("nan")
    return res
