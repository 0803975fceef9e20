"""``Predictor.set_image`` end to end on a 1024 x 1024 slice (issue 22: propagation and slice browsing embed one
slice after another): with a key (as the annotator and propagation pass), without one (the image is hashed for
the cache key), and a cache hit; with the parts: preparing the 128-px input (resize, pad, normalise), the
encoder, the key hash. RGB (the coffee sample resized) and a 16-bit grayscale slice; onnxruntime float and, where
the CPU has bf16 units, OpenVINO bf16 (the "auto" choice there). One thread.

    .venv/bin/python benchmarks/set_image.py [--n 200] [--no-write]

Prints a Markdown table and writes it into the `## Set image` section of BENCHMARKS.md. Run it with PYTHONPATH at
an older checkout to measure that one on the same machine.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, p50_p95, timeit, write_section  # noqa: E402


def slices() -> dict[str, np.ndarray]:
    from PIL import Image

    from napari_ultratinysam.widgets.samples import load_sample

    rgb = np.asarray(Image.fromarray(load_sample("coffee")[0][0]).resize((1024, 1024), Image.BILINEAR))
    gray = (rgb.astype(np.uint16).sum(axis=2) * 85).astype(np.uint16)  # a 16-bit grayscale slice
    return {"RGB uint8": np.ascontiguousarray(rgb), "gray uint16": gray}


def predictors() -> list[tuple[str, object]]:
    from napari_ultratinysam.inference.int8 import choose_precision
    from napari_ultratinysam.inference.predictor import Predictor

    out = [("onnxruntime float", Predictor.from_default(backend="onnx", precision="float", threads=1))]
    try:
        if choose_precision("bf16") == "bf16":
            out.append(("OpenVINO bf16", Predictor.from_default(backend="onnx", precision="bf16", threads=1)))
    except ValueError as e:
        print(f"bf16 not measured: {e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="timed calls per figure")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from napari_ultratinysam.core.transforms import prepare_image
    from napari_ultratinysam.inference.predictor import Predictor

    rows = []
    for (bname, pred), (sname, img) in itertools.product(predictors(), slices().items()):
        keys = itertools.count()
        with_key = timeit(lambda: pred.set_image(img, key=("bench", next(keys))), args.n)

        def no_key():
            pred.clear_cache()
            pred.set_image(img)

        hashed = timeit(no_key, args.n)
        pred.set_image(img, key="hit")
        hit = timeit(lambda: pred.set_image(img, key="hit"), args.n)
        prep = timeit(lambda: prepare_image(img, pred.image_size), args.n)
        x, _ = prepare_image(img, pred.image_size)
        enc = timeit(lambda: pred.backend.encode(x), args.n)
        key = timeit(lambda: Predictor.image_key(img), args.n)
        rows.append((bname, sname, *p50_p95(with_key), p50_p95(hashed)[0], p50_p95(hit)[0], p50_p95(prep)[0],
                     p50_p95(enc)[0], p50_p95(key)[0]))
    head = ("| backend | 1024 x 1024 slice | set_image with a key p50 | p95 | without a key (hashed) p50 "
            "| cache hit p50 | of which: prepare (resize, pad, normalise) | encoder | key hash |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {b} | {s} | **{a:.2f} ms** | {p:.2f} | {h:.2f} | {c:.3f} | {pr:.2f} | {e:.2f} | {k:.2f} |"
             for b, s, a, p, h, c, pr, e, k in rows]
    body = "\n".join([
        f"Command: `python benchmarks/set_image.py --n {args.n}`. Machine: {machine_line()}. One thread; "
        f"{args.n} calls per figure; a new key each call, so every call embeds the slice (the annotator and "
        "propagation pass a key; without one the image is hashed).",
        "",
        head, *lines,
    ])
    print(body)
    if not args.no_write:
        write_section("Set image", body + "\n\nHistory and the figures before: docs/history.md.")


if __name__ == "__main__":
    main()
