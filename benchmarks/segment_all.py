"""Segment everything (napari_ultratinysam.inference.segment_all): seconds per 1024 x 1024 image on one thread with the
fastest CPU backend (Predictor.from_default(backend="onnx", precision="auto")), with the batched decoder graph and
with one decoder call per click, in the same run; and the recall of annotated objects at IoU >= 0.5 on the coins
sample, COCO val (../shared/datasets/coco_train2017_subsets) and BSDS500 val (../shared/datasets/bsds500), by
object size. The validation sets are skipped when ../shared is absent.

    .venv/bin/python benchmarks/segment_all.py [--limit N] [--timing-images N] [--no-write]

Prints a Markdown table and writes it into the `## Segment everything` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
SIZES = (("small (< 32²)", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large (> 96²)", 96 ** 2, 1 << 62))


def _resize(img: np.ndarray, side: int = 1024) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).convert("RGB").resize((side, side), Image.BILINEAR))


def timing_images(n: int) -> tuple[list[np.ndarray], str]:
    """n real images resized to 1024 x 1024: COCO val where available, else the package's samples."""
    from PIL import Image

    coco = DATASETS / "coco_train2017_subsets" / "val" / "images"
    if coco.is_dir():
        files = sorted(coco.iterdir())[:n]
        return [_resize(np.asarray(Image.open(f).convert("RGB"))) for f in files], "COCO val images"
    from napari_ultratinysam.core.paths import sample_path

    files = [sample_path(s) for s in ("chelsea.jpg", "coffee.jpg", "coins.png", "shapes.png")]
    return [_resize(np.asarray(Image.open(f).convert("RGB"))) for f in files][:n], "the package's samples"


def recall_rows(pred, batched, items, name: str) -> tuple[list[str], float]:
    from napari_ultratinysam.inference.segment_all import recall_at, segment_all

    found = np.zeros(len(SIZES), int)
    total = np.zeros(len(SIZES), int)
    seconds, objects = [], []
    for image, masks in items:
        t = time.perf_counter()
        res = segment_all(pred, image, batched=batched)
        seconds.append(time.perf_counter() - t)
        objects.append(len(res))
        for m in masks:
            area = int(m.sum())
            k = next(i for i, (_, lo, hi) in enumerate(SIZES) if lo <= area < hi)
            f, t_ = recall_at(res.labels, [m])
            found[k] += f
            total[k] += t_
    cells = [f"{found[k]}/{total[k]} ({100 * found[k] / max(1, total[k]):.1f} %)" for k in range(len(SIZES))]
    all_f, all_t = found.sum(), total.sum()
    row = (f"| {name} | {len(items)} | {all_f}/{all_t} (**{100 * all_f / max(1, all_t):.1f} %**) | "
           + " | ".join(cells) + f" | {np.mean(objects):.1f} | {np.median(seconds):.2f} |")
    return [row], all_f / max(1, all_t)


def dataset_items(name: str, limit: int):
    from napari_ultratinysam.data.readers import read_dataset

    path = {"coco": DATASETS / "coco_train2017_subsets", "bsds500": DATASETS / "bsds500"}[name]
    if not path.is_dir():
        return None
    ds = read_dataset(path, split="val")
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    return [(ds[i].image, list(ds[i].masks)) for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="images per validation set (0: all)")
    ap.add_argument("--timing-images", type=int, default=10, help="1024 x 1024 images timed")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    from napari_ultratinysam import Predictor
    from napari_ultratinysam.core.paths import sample_path
    from napari_ultratinysam.inference.batched_decoder import batched_decoder
    from napari_ultratinysam.inference.segment_all import segment_all
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, load_model

    torch.set_num_threads(1)
    pred = Predictor.from_default(backend="onnx", precision="auto", threads=1)
    backend = f"{pred.backend.name} {getattr(pred.backend, 'precision', 'float')}"
    batched = batched_decoder(pred, load_model(DEFAULT_CHECKPOINT))

    images, source = timing_images(args.timing_images)
    timing = []
    for label, b in (("batched decoder graph", batched), ("one decoder call per click", None)):
        segment_all(pred, images[0], batched=b)  # warm-up: compiles the batched graph's batch sizes
        secs, prompts, objs = [], [], []
        for img in images:
            t = time.perf_counter()
            res = segment_all(pred, img, batched=b)
            secs.append(time.perf_counter() - t)
            prompts.append(res.prompts)
            objs.append(len(res))
        name = label if b is not None else label
        if b is not None:
            name += f" ({b.name})"
        timing.append(f"| {name} | {len(images)} | **{np.median(secs):.2f}** | {np.mean(secs):.2f} | "
                      f"{np.max(secs):.2f} | {np.mean(prompts):.0f} | {np.mean(objs):.1f} |")

    img = np.asarray(Image.open(sample_path("coins.png")))
    gt = np.asarray(Image.open(sample_path("coins_instances.png")))
    coins = [(img, [gt == i for i in range(1, int(gt.max()) + 1)])]
    rows, _ = recall_rows(pred, batched, coins, "coins sample (24 coins)")
    for name, label in (("coco", "COCO val (coco_train2017_subsets)"), ("bsds500", "BSDS500 val (regions)")):
        items = dataset_items(name, args.limit)
        if items is None:
            print(f"{name}: skipped ({DATASETS} absent)")
            continue
        rows += recall_rows(pred, batched, items, label)[0]

    body = "\n".join([
        "Written by `benchmarks/segment_all.py`: `segment_all` with its default settings (`SegmentAllParams`), "
        f"backend `{backend}` (`Predictor.from_default(backend=\"onnx\", precision=\"auto\")`), one thread. "
        "The defaults (best-first painting by `candidate_rank`) were tuned on the training splits of COCO and "
        "BSDS500; the diagnosis and the figures before and after are in docs/history.md (\"Segment everything\"). "
        "The val sets below are for reporting only.",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Seconds per 1024 x 1024 image ({source}, resized), whole pass (encoder for every view, clicks, filters, "
        "full-resolution instance map):",
        "",
        "| decoding | images | median s | mean s | max s | clicks | objects |",
        "|---|---|---|---|---|---|---|",
        *timing,
        "",
        "Recall of annotated objects: an object counts as found when one proposal overlaps it at IoU >= 0.5 "
        "(sizes in pixels of the image as stored):",
        "",
        "| set | images | recall | " + " | ".join(s for s, _, _ in SIZES) + " | proposals per image | median s |",
        "|---|---|---|" + "---|" * len(SIZES) + "---|---|",
        *rows,
    ])
    print(body)
    if not args.no_write:
        write_section("Segment everything", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
