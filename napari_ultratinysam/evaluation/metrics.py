"""Evaluation metrics as pure functions over arrays.

* IoU with an ignore region; pairwise IoU matrices.
* Interactive segmentation: NoC@thr, failures, mIoU@k (RITM / SimpleClick conventions).
* The original paper's "mAP" (``eval_utsam.py`` ``manual_eval``), reproduced exactly, and standard COCO-style
  AP (pycocotools' ``COCOeval``, one area range) from predicted-IoU scores.

Per-image inputs for the AP functions are lists with one entry per image: ``ious[i]`` is the (P_i, G_i) IoU
matrix between that image's predictions (in stored order) and its ground-truth objects (in stored order),
``pred_classes[i]`` (P_i,) and ``gt_classes[i]`` (G_i,) their category ids.
"""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

#: The paper's IoU thresholds, exactly as in eval_utsam.py (np.arange, so e.g. 0.6000000000000001).
PAPER_IOU_THRESHOLDS = np.arange(0.5, 1.0, 0.05)
#: The paper's recall points for 11-point VOC interpolation.
PAPER_RECALL_POINTS = np.linspace(0, 1, 11)
#: pycocotools' IoU thresholds and recall points.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


# ----------------------------------------------------------------------------------------------- IoU
def _flat(masks: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) masks, got shape {m.shape}")
    return m.reshape(m.shape[0], m.shape[1] * m.shape[2]) != 0


def iou_matrix(preds: np.ndarray, gts: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """(P, G) float64 IoU between (P, H, W) and (G, H, W) masks; ``ignore`` (H, W) pixels are excluded from
    both. A pair with an empty union has IoU 0 (as in the paper)."""
    p, g = np.asarray(preds), np.asarray(gts)
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(f"preds: mask size {p.shape[1:]} does not match gts mask size {g.shape[1:]}")
    pf, gf = _flat(p, "preds"), _flat(g, "gts")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool).reshape(-1)
        if keep.shape[0] != pf.shape[1]:
            raise ValueError(f"ignore: shape {np.shape(ignore)} does not match mask size {p.shape[1:]}")
        pf, gf = pf & keep, gf & keep
    if not len(pf) or not len(gf):
        return np.zeros((len(pf), len(gf)))
    # pycocotools' RLE IoU on the masks with the ignored pixels cleared: the same counts, divided the same way
    # (an empty intersection, so an empty union, gives 0)
    def rles(flat: np.ndarray) -> list[dict]:  # (N, H*W) -> pycocotools' (H, W, N) column-major layout
        return mask_utils.encode(np.asfortranarray(flat.reshape(len(flat), *p.shape[1:]).transpose(1, 2, 0),
                                                   dtype=np.uint8))

    return np.ascontiguousarray(mask_utils.iou(rles(pf), rles(gf), [0] * len(gf)), dtype=np.float64)


def agreement_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two predicted (H, W) masks, for agreement between models: 1.0 when both are empty (they agree)."""
    union = np.count_nonzero(np.logical_or(a, b))
    return 1.0 if union == 0 else float(np.count_nonzero(np.logical_and(a, b)) / union)


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two (H, W) masks, ``ignore`` pixels excluded; 0.0 when the union is empty."""
    # two pixel counts (the same number as iou_matrix): for one pair, pycocotools' RLE encoding costs more
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"pred: expected an (H, W) mask of gt's shape {g.shape}, got {p.shape}")
    p, g = p != 0, g != 0
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        if keep.shape != p.shape:
            raise ValueError(f"ignore: shape {keep.shape} does not match mask shape {p.shape}")
        p, g = p & keep, g & keep
    union = int(np.count_nonzero(p | g))
    return float(np.count_nonzero(p & g)) / union if union else 0.0


# ------------------------------------------------------------------------------------ interactive
def _curves(ious: np.ndarray) -> np.ndarray:
    a = np.asarray(ious, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise ValueError(f"ious: expected (..., max_clicks) with max_clicks >= 1, got shape {a.shape}")
    return a


def noc(ious_per_click: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Number of clicks to reach IoU >= ``thr``.

    ``ious_per_click`` (..., K): IoU after click 1..K. Returns (noc, failed) with the leading shape: the first
    1-based click index whose IoU reaches ``thr``, or K (= max_clicks) with ``failed`` True when none does.
    """
    a = _curves(ious_per_click)
    hit = a >= thr
    failed = ~hit.any(axis=-1)
    first = np.argmax(hit, axis=-1) + 1
    return np.where(failed, a.shape[-1], first).astype(np.int64), failed


def mean_noc(ious: np.ndarray, thr: float) -> float:
    """Mean NoC@thr over objects (rows of an (N, K) array); NaN for N = 0."""
    n, _ = noc(np.atleast_2d(ious), thr)
    return float(n.mean()) if n.size else float("nan")


def failures(ious: np.ndarray, thr: float) -> int:
    """Number of objects (rows of (N, K)) that never reach IoU >= ``thr`` within K clicks."""
    _, f = noc(np.atleast_2d(ious), thr)
    return int(f.sum())


def miou_curve(ious: np.ndarray) -> np.ndarray:
    """(K,) mean IoU over objects after 1..K clicks, from an (N, K) array."""
    a = _curves(np.atleast_2d(ious))
    return a.mean(axis=0) if a.shape[0] else np.full(a.shape[-1], np.nan)


def miou_at(ious: np.ndarray, k: int) -> float:
    """Mean IoU over objects after ``k`` clicks (1-based)."""
    a = _curves(np.atleast_2d(ious))
    if not 1 <= k <= a.shape[-1]:
        raise ValueError(f"k: must be in 1..{a.shape[-1]}, got {k}")
    return float(miou_curve(a)[k - 1])


# ------------------------------------------------------------------------------ the paper's "mAP"
def _check_images(ious: Sequence[np.ndarray], pred_classes: Sequence[np.ndarray],
                  gt_classes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not (len(ious) == len(pred_classes) == len(gt_classes)):
        raise ValueError(f"ious: {len(ious)} images but {len(pred_classes)} pred_classes and "
                         f"{len(gt_classes)} gt_classes")
    out = []
    for i, (m, pc, gc) in enumerate(zip(ious, pred_classes, gt_classes)):
        pc, gc = np.asarray(pc).reshape(-1), np.asarray(gc).reshape(-1)
        m = np.asarray(m, dtype=np.float64)
        if m.size == 0 and len(pc) * len(gc) == 0:
            m = m.reshape(len(pc), len(gc))
        elif m.shape != (len(pc), len(gc)):
            raise ValueError(f"ious: image {i} has shape {m.shape}, expected ({len(pc)}, {len(gc)}) from "
                             f"pred_classes and gt_classes")
        out.append((m, pc, gc))
    return out


def voc11_ap(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> float:
    """The paper's ``compute_ap``: 11-point VOC AP of a ranked TP/FP list against ``n_gt`` objects,
    precision = cumTP / (cumTP + cumFP + 1e-6). 0.0 when ``n_gt`` is 0 or the list is empty."""
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    if n_gt <= 0 or tp.size == 0:
        return 0.0
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    rec = tp_cum / n_gt
    prec = tp_cum / (tp_cum + fp_cum + 1e-6)
    ge = rec[None, :] >= PAPER_RECALL_POINTS[:, None]  # (11, P)
    best = np.where(ge, prec[None, :], -np.inf).max(axis=1)
    return float(np.where(np.isfinite(best), best, 0.0).sum() / 11.0)


def paper_greedy_match(iou: np.ndarray, pred_classes: np.ndarray, gt_classes: np.ndarray, thr: float) -> np.ndarray:
    """(P,) bool TP flags: each prediction, in stored order, takes the FIRST unused GT (in stored order) of the
    same category with IoU >= ``thr`` - not necessarily the object it was prompted from."""
    iou = np.asarray(iou, dtype=np.float64)
    same = np.asarray(pred_classes)[:, None] == np.asarray(gt_classes)[None, :]
    ok = same & (iou >= thr)
    used = np.zeros(iou.shape[1], dtype=bool)
    tp = np.zeros(iou.shape[0], dtype=bool)
    for p in range(iou.shape[0]):
        cand = np.flatnonzero(ok[p] & ~used)
        if cand.size:
            used[cand[0]] = True
            tp[p] = True
    return tp


def paper_ap_per_threshold(ious: Sequence[np.ndarray], pred_classes: Sequence[np.ndarray],
                           gt_classes: Sequence[np.ndarray],
                           thresholds: np.ndarray = PAPER_IOU_THRESHOLDS) -> np.ndarray:
    """(T,) the paper's AP at each IoU threshold.

    Images with no prediction are dropped (their objects are not in the GT pool). The GT pool is every GT
    column passed in; the paper passed every object with area >= 150 px at FULL resolution while prompting
    only objects with area >= 150 px at 128x128 - pass the prompted objects instead for the "fixed" variant.
    Predictions are taken image by image in stored order (all scores were 1.0), TP/FP lists concatenated,
    AP = 11-point VOC (:func:`voc11_ap`).
    """
    imgs = [x for x in _check_images(ious, pred_classes, gt_classes) if len(x[1])]
    n_gt = sum(len(gc) for _, _, gc in imgs)
    aps = []
    for thr in np.asarray(thresholds, dtype=np.float64):
        tp = np.concatenate([paper_greedy_match(m, pc, gc, thr) for m, pc, gc in imgs]) if imgs else np.zeros(0)
        aps.append(voc11_ap(tp, ~tp.astype(bool), n_gt))
    return np.asarray(aps)


def paper_map(ious: Sequence[np.ndarray], pred_classes: Sequence[np.ndarray], gt_classes: Sequence[np.ndarray],
              thresholds: np.ndarray = PAPER_IOU_THRESHOLDS) -> float:
    """The paper's "mAP": mean over IoU 0.50:0.05:0.95 of :func:`paper_ap_per_threshold` (fraction, not %)."""
    return float(paper_ap_per_threshold(ious, pred_classes, gt_classes, thresholds).mean())


# ------------------------------------------------------------------------------------- COCO AP
class _GivenIoUEval(COCOeval):
    """COCOeval on IoUs computed beforehand: ``ious[i]`` (P_i, G_i) between image i's detections and GT objects
    (each annotation carries its row / column), e.g. with an ignore region, which COCOeval's own IoU lacks."""

    def __init__(self, gt: COCO, dt: COCO, ious: list[np.ndarray]):
        super().__init__(gt, dt, iouType="bbox")  # the IoU type only names what computeIoU would read
        self._given = ious

    def computeIoU(self, imgId, catId):  # COCOeval's hook, named as it calls it
        # the image's detections of this category by score, cut at maxDets, as COCOeval orders them
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")][:self.params.maxDets[-1]]
        return self._given[imgId][np.ix_([d["row"] for d in dt], [g["col"] for g in gt])]


def _coco(images: int, categories: int, anns: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(images)],
                    "categories": [{"id": k} for k in range(categories)], "annotations": anns}
    coco.createIndex()
    return coco


def coco_ap_per_threshold(ious: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                          pred_classes: Sequence[np.ndarray], gt_classes: Sequence[np.ndarray],
                          thresholds: np.ndarray = COCO_IOU_THRESHOLDS, max_dets: int = 100) -> np.ndarray:
    """(T,) COCO-style AP, by pycocotools' ``COCOeval`` (area range "all", no crowd) on the given IoUs: per image
    and category, detections sorted by score (stable) and cut at ``max_dets``, each matched to the unmatched GT
    of highest IoU >= thr; per category all detections ranked by score, precision made monotone, sampled at 101
    recall points; averaged over categories that have GT. NaN when there is no GT at all."""
    imgs = _check_images(ious, pred_classes, gt_classes)
    if len(scores) != len(imgs):
        raise ValueError(f"scores: {len(scores)} images but ious has {len(imgs)}")
    scs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    for i, (s, (_, pc, _)) in enumerate(zip(scs, imgs)):
        if len(s) != len(pc):
            raise ValueError(f"scores: image {i} has {len(s)} scores for {len(pc)} predictions")
    cats = np.unique(np.concatenate([gc for _, _, gc in imgs])) if imgs else np.zeros(0)
    if cats.size == 0:
        return np.full(len(thresholds), np.nan)
    cat_of = {c: k for k, c in enumerate(cats.tolist())}  # COCO category k; detections of other classes dropped
    gts, dts = [], []
    for i, ((_, pc, gc), s) in enumerate(zip(imgs, scs)):
        gts += [{"image_id": i, "category_id": cat_of[c], "col": j, "iscrowd": 0} for j, c in enumerate(gc.tolist())]
        dts += [{"image_id": i, "category_id": cat_of[c], "row": j, "score": float(s[j])}
                for j, c in enumerate(pc.tolist()) if c in cat_of]
    for anns in (gts, dts):
        for k, a in enumerate(anns, start=1):
            a.update(id=k, area=0)  # ids from 1: COCOeval reads a match with id 0 as none; area 0 is in range
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev = _GivenIoUEval(_coco(len(imgs), len(cats), gts), _coco(len(imgs), len(cats), dts),
                           [m for m, _, _ in imgs])
        p = ev.params
        p.iouThrs, p.recThrs = np.asarray(thresholds, dtype=np.float64), COCO_RECALL_POINTS
        p.maxDets, p.areaRng, p.areaRngLbl = [max_dets], [[0, np.inf]], ["all"]
        ev.evaluate()
        ev.accumulate()
    # (T, R, K) -> mean over the recall points, then over the categories (all have GT, so none is -1)
    prec = np.ascontiguousarray(ev.eval["precision"][:, :, :, 0, 0].transpose(0, 2, 1))
    return prec.mean(axis=2).mean(axis=1)


def coco_ap(ious: Sequence[np.ndarray], scores: Sequence[np.ndarray], pred_classes: Sequence[np.ndarray],
            gt_classes: Sequence[np.ndarray], thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
            max_dets: int = 100) -> float:
    """COCO mask AP (mean over IoU 0.50:0.05:0.95) of :func:`coco_ap_per_threshold` (fraction, not %)."""
    return float(np.mean(coco_ap_per_threshold(ious, scores, pred_classes, gt_classes, thresholds, max_dets)))
