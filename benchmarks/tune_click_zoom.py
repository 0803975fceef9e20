"""Choose the click-centred zoom threshold (predictor.CLICK_ZOOM_MIN_SCORE) on validation data only.

One click at the interior point of each object (objects >= 150 px at 128x128), best mask, mIoU against the ground
truth, for the rule off and for each threshold; CamVid val, BSDS500 val held-out and COCO val (the first
--max-objects objects of each, reader order). Prints a table; the test sets are never read.

    python benchmarks/tune_click_zoom.py [--checkpoint CKPT] [--thresholds 0.3,0.4,0.5,0.6] [--max-objects 150]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

VAL_SETS = ("camvid_val", "bsds500_val_heldout", "coco_subsets_val")


def _open(name: str):
    import eval_default as ed

    if name == "camvid_val":
        from napari_ultratinysam.data.readers import read_dataset

        return ed.MinArea128(read_dataset(ed.D / "camvid", split="val"))
    return ed.open_set(name)


def one_click_ious(predictor, ds, max_objects: int, thresholds) -> dict:
    """{threshold or None (rule off): [IoU per object]} for one interior click per object."""
    import napari_ultratinysam.inference.predictor as pm
    from napari_ultratinysam.core.prompts import interior_point
    from napari_ultratinysam.evaluation.metrics import agreement_iou

    out: dict = {t: [] for t in (None, *thresholds)}
    n = 0
    for i in range(len(ds)):
        item = ds[i]
        predictor.set_image(item.image)
        for m in item.masks:
            pt = [interior_point(m)]
            for t in out:
                pm.CLICK_ZOOM_MIN_SCORE = np.inf if t is None else t  # inf: a crop's mask is never kept
                out[t].append(agreement_iou(predictor.predict(points=pt).mask(0), m))
            n += 1
            if n >= max_objects:
                return out
    return out


def main() -> int:
    import napari_ultratinysam.inference.predictor as pm
    from napari_ultratinysam.inference.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6")
    ap.add_argument("--max-objects", type=int, default=150)
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    shipped = pm.CLICK_ZOOM_MIN_SCORE
    p = Predictor.from_default(backend="onnx") if args.checkpoint is None else \
        Predictor.from_checkpoint(args.checkpoint, backend="onnx")
    rows, pooled = [], {t: [] for t in (None, *thresholds)}
    for name in VAL_SETS:
        res = one_click_ious(p, _open(name), args.max_objects, thresholds)
        rows.append((name, len(res[None]), {t: float(np.mean(v)) for t, v in res.items()}))
        for t, v in res.items():
            pooled[t] += v
    pm.CLICK_ZOOM_MIN_SCORE = shipped
    head = ["set", "objects", "rule off"] + [f">= {t}" for t in thresholds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, n, m in rows + [("all (pooled)", len(pooled[None]), {t: float(np.mean(v)) for t, v in pooled.items()})]:
        lines.append(f"| {name} | {n} | " + " | ".join(f"{m[t]:.3f}" for t in (None, *thresholds)) + " |")
    print("\n".join(lines))
    best = max(thresholds, key=lambda t: np.mean(pooled[t]))
    print(f"best threshold on validation: {best} (shipped: {shipped})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
