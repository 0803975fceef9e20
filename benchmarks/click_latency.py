"""End-to-end click latency with full-resolution refinement: ``Predictor.predict(...).mask(0)`` on a 1024 x 1024
photo, one thread, for the first click (no zoom-in) and for the correction clicks 2..20 that the evaluation clicker
places (each with all clicks so far and the previous result's low-res logits as ``mask_input``, as SAM-style tools
drive a predictor). Backends: torch float, onnxruntime float and, where the CPU has AVX512-BF16 / AMX, OpenVINO bf16.

Objects: the first --objects objects of at least 2 % of the image in COCO val (../shared/datasets; the benchmark
stops with one line when it is absent), each image resized to 1024 x 1024.

    .venv/bin/python benchmarks/click_latency.py [--objects 8] [--no-write]

Prints a Markdown table and writes it into the `## Click latency` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco_train2017_subsets"


def objects(n: int, side: int = 1024):
    from PIL import Image

    from napari_ultratinysam.data.readers import read_dataset

    ds = read_dataset(DATA, split="val")
    out = []
    for i in range(len(ds)):
        it = ds[i]
        img = np.asarray(Image.fromarray(it.image).resize((side, side), Image.BILINEAR))
        for m in it.masks:
            if m.mean() >= 0.02:
                mm = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)) > 0
                out.append((img, mm))
                if len(out) >= n:
                    return out
    return out


def run(pred, objs, clicks: int = 20) -> tuple[list[float], list[float]]:
    from napari_ultratinysam.core import prompts

    first, later = [], []
    for img, gt in objs:
        pred.clear_cache()
        pred.set_image(img)
        shown = np.zeros_like(gt)
        pts, labs, low = [], [], None
        for k in range(clicks):
            if k and not prompts.has_error(gt, shown):
                break
            pt, lab = prompts.click_from_error(gt, shown)
            pts.append(pt)
            labs.append(lab)
            t = time.perf_counter()
            r = pred.predict(points=np.array(pts, np.float32), labels=np.array(labs), mask_input=low,
                             multimask=True if k == 0 else None, zoom_refine=False if k == 0 else None)
            shown = r.mask(0)
            (first if k == 0 else later).append(time.perf_counter() - t)
            low = r.lowres[0]
    return first, later


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"error: {DATA}: not found (the benchmark needs the shared COCO subsets)")
        return 2
    import torch

    torch.set_num_threads(1)
    from napari_ultratinysam.inference.predictor import Predictor

    objs = objects(a.objects)
    rows = ["| backend | refinement | first click p50 / p95 (ms) | correction clicks p50 / p95 (ms) | clicks |",
            "|---|---|---|---|---|"]
    kinds = [("torch float", dict(backend="torch")), ("onnxruntime float", dict(backend="onnx"))]
    try:
        from napari_ultratinysam.inference.int8 import choose_precision

        if choose_precision("auto") == "bf16":
            kinds.append(("OpenVINO bf16", dict(backend="onnx", precision="bf16")))
    except Exception:  # noqa: BLE001 - no bf16 on this CPU or no openvino: the row is left out
        pass
    for name, kw in kinds:
        for refine in (False, True):
            pred = Predictor.from_default(threads=1, refine=refine, **kw)
            run(pred, objs[:1], clicks=3)  # warm-up
            f, later = run(pred, objs)
            ms = lambda v, q: 1000 * float(np.percentile(v, q))  # noqa: E731
            rows.append(f"| {name} | {'on' if refine else 'off'} | {ms(f, 50):.1f} / {ms(f, 95):.1f} | "
                        f"{ms(later, 50):.1f} / {ms(later, 95):.1f} | {len(f) + len(later)} |")
            print(rows[-1], flush=True)
    text = "\n".join([machine_line(), "", *rows, "",
                      f"{len(objs)} COCO val objects (>= 2 % of the image) resized to 1024 x 1024, up to 20 clicks "
                      "each from the evaluation clicker; one thread; `benchmarks/click_latency.py`."])
    print(text)
    if not a.no_write:
        write_section("Click latency", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
