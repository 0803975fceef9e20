"""Zero-shot evaluation of a checkpoint (default: the shipped model) for model/MODEL_CARD.md.

Sets: BSDS500 test, CamVid test, and the held-out parts of every other training set (the same md5-name-hash
selection as model/configs/train_scratch.yaml, so the images were never trained on). Interactive protocol
(napari_ultratinysam.evaluation.evaluate_interactive: first click at the object's interior, then clicks in the
largest error region, IoU at the image's own resolution) on objects of at least 150 px at 128x128 (the paper's
size filter, converted to image pixels), at most --max-objects objects per set (first images in reader order);
the paper protocol (1/3/5 clicks/box "mAP") on the whole CamVid test split (--paper-max-objects to cut it).

    python benchmarks/eval_default.py [--checkpoint CKPT] [--max-clicks 20] [--max-objects 150] -o runs/eval_default
Writes OUT/metrics.json, OUT/metrics.md, OUT/iou_vs_clicks.png (evaluation/report.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
D = REPO.parent / "shared" / "datasets"

# name: (path, reader kwargs, split, holdout fraction or None (= whole split))
SETS = {
    "bsds500_test": ("bsds500", {}, "test", None),
    "camvid_test": ("camvid", {}, "test", None),
    "bsds500_val_heldout": ("bsds500", {}, "val", 0.3),
    "coco_subsets_val": ("coco_train2017_subsets", {}, "val", None),
    "coco128_heldout": ("coco128-seg", {}, None, 0.2),
    "ccp_heldout": ("ccp", {}, None, 0.1),
    "weizmann_heldout": ("weizmann_horse", {"format": "folder"}, None, 0.2),
}


class Subset:
    def __init__(self, ds, idx):
        self.ds, self.idx = ds, list(idx)

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]


class MinArea128:
    """Drop objects under ``px`` pixels at 128x128 (area scaled by the letterbox factor)."""

    def __init__(self, ds, px=150):
        self.ds, self.px = ds, px
        # images left without any object are skipped (evaluate_interactive cannot take an image with 0 objects)
        self.idx = [i for i in range(len(ds)) if self._filtered(i).num_objects]

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self._filtered(self.idx[i])

    def _filtered(self, i):
        from napari_ultratinysam.data.types import AnnotatedImage

        it = self.ds[i]
        s = 128 / max(it.image.shape[:2])
        keep = it.masks.reshape(it.num_objects, -1).sum(1) * s * s >= self.px if it.num_objects else []
        return AnnotatedImage(it.image, it.masks[keep], it.class_ids[keep], name=it.name, source=it.source,
                              extra=it.extra)


def open_set(name: str):
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.training.config import DatasetSpec
    from napari_ultratinysam.training.data import select_names

    path, kw, split, hold = SETS[name]
    kw = dict(kw)
    fmt = kw.pop("format", "auto")
    ds = read_dataset(D / path, format=fmt, split=split, **kw)
    if hold is not None:
        ds = Subset(ds, select_names(ds.names, DatasetSpec(holdout=hold, take="holdout")))
    return MinArea128(ds)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--max-objects", type=int, default=150)
    ap.add_argument("--paper", default="camvid_test", help="sets for the paper protocol (comma list, '' = none)")
    ap.add_argument("--paper-max-objects", type=int, default=0,
                    help="objects for the paper protocol (default 0 = the whole split, as the paper)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flip-tta", action="store_true", help="average over the image and its mirror image")
    ap.add_argument("--no-refine", action="store_true", help="without full-resolution refinement (inference/refine.py)")
    ap.add_argument("-o", "--output", default="runs/eval_default")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from napari_ultratinysam.cli.evaluate import load_predictor
    from napari_ultratinysam.evaluation.protocols import evaluate_interactive, evaluate_paper
    from napari_ultratinysam.evaluation.report import run_metrics, write_report

    pred = load_predictor(a.checkpoint, flip_tta=a.flip_tta, refine=not a.no_refine)
    runs = {}
    for name in [s for s in a.sets.split(",") if s]:
        t = time.time()
        ds = open_set(name)
        inter = evaluate_interactive(pred, ds, max_clicks=a.max_clicks, max_objects=a.max_objects, progress=False)
        paper = None
        if name in a.paper.split(","):
            paper = evaluate_paper(pred, ds, seed=0, max_objects=a.paper_max_objects or None, progress=False)
        m = run_metrics(inter, paper, model=a.checkpoint or "default", dataset=name, images=len(ds))
        runs[name] = m
        print(f"{name}: {m['num_objects']} objects, mIoU@1 {m['miou@1']:.3f} mIoU@3 {m['miou@3']:.3f} "
              f"NoC@85 {m['noc@85']:.2f} NoC@90 {m['noc@90']:.2f} failures@90 {m['failures@90']}"
              + (f" paper mAP ({m['paper_num_objects']} objects) {m['paper_map']}" if paper else "")
              + f" ({time.time() - t:.0f}s)", flush=True)
        write_report(a.output, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
