"""IMX500 export of a preset or checkpoint: memory report, PTQ / conversion times, float vs PTQ mask agreement.

    .venv/bin/python benchmarks/imx500.py [--checkpoint CKPT | --config ultratinysam] [--num-images 128]
        [--calibration DATASET] [--agreement-dataset DATASET --agreement-split val --agreement-images 16]
        [--out runs/imx500_bench] [--no-write]

Runs ``export_imx500`` (the function behind `utsam export-imx500`) with the centre-point prompt, then compares the
float deploy graph with the quantized ONNX (onnxruntime + mct-quantizers) on real images (CamVid val by default,
letterboxed like the predictor), and writes the `## IMX500` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", type=Path)
    g.add_argument("--config")
    ap.add_argument("--num-images", type=int, default=128)
    ap.add_argument("--calibration", type=Path, default=CAMVID if CAMVID.is_dir() else None)
    ap.add_argument("--agreement-dataset", type=Path, default=CAMVID if CAMVID.is_dir() else None)
    ap.add_argument("--agreement-split", default="val")
    ap.add_argument("--agreement-images", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "imx500_bench")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from napari_ultratinysam.checkpoints import DEFAULT_CHECKPOINT
    from napari_ultratinysam.compression.deploy_graph import DeployGraph, make_prompt
    from napari_ultratinysam.compression.imx500 import export_imx500
    from napari_ultratinysam.compression.quantize import (QuantizedOnnxRunner, load_calibration,
                                                          load_export_model, mask_agreement)

    kw = {}
    if args.config:
        kw["config"] = args.config
    elif args.checkpoint:
        kw["checkpoint"] = args.checkpoint
    elif not DEFAULT_CHECKPOINT.is_file():
        kw["config"] = "ultratinysam"
    machine = machine_line()
    last = {"t": 0.0}

    def progress(msg, frac=None):
        now = time.monotonic()
        if now - last["t"] > 5 or not msg.startswith("imxconv-pt ["):
            last["t"] = now
            print(f"[{'' if frac is None else f'{100 * frac:5.1f} %'}] {msg}", flush=True)

    t0 = time.perf_counter()
    res = export_imx500(out=args.out, calibration=args.calibration, num_images=args.num_images,
                        progress=progress, **kw)
    wall = time.perf_counter() - t0
    model, source = load_export_model(**kw)
    agree = None
    if args.agreement_dataset is not None:
        samples = load_calibration(args.agreement_dataset, num_images=args.agreement_images,
                                   split=args.agreement_split)
        graph = DeployGraph(model, make_prompt("center-point"))
        agree = mask_agreement(graph, QuantizedOnnxRunner(res.onnx_path), samples)
        graph.release()
    m = res.memory
    mb = 1024 ** 2
    rows = [
        ("model", f"{source} ({sum(p.numel() for p in model.parameters()):,} parameters)"),
        ("prompt", "center-point (64, 64), multimask (3 masks)"),
        ("calibration", f"{args.num_images} images from {args.calibration or 'the bundled samples'} (train split)"),
        ("Memory Usage", f"**{m.memory_usage_bytes / mb:.2f} MB** of {m.available_bytes / mb:.2f} MB "
                         f"({m.utilization or '?'})"),
        ("runtime / model memory", f"{(m.runtime_bytes or 0) / 1024:.2f} KB / {(m.model_bytes or 0) / mb:.2f} MB"),
        ("Fit In Chip", str(m.fits).lower()),
        ("PTQ time (MCT 2.5.1)", f"{res.times.get('ptq_s', 0):.0f} s"),
        ("MCTQ ONNX export", f"{res.times.get('onnx_export_s', 0):.0f} s"),
        ("imxconv-pt 3.18.2 conversion", f"{res.times.get('conversion_s', 0):.0f} s"),
        ("whole export (load, PTQ, export, agreement, conversion)", f"{wall:.0f} s"),
        ("float vs PTQ, calibration images", f"mean mask IoU {res.agreement['mean_iou']:.3f} "
                                             f"({res.agreement['num_images']} images)" if res.agreement else "-"),
    ]
    if agree:
        rows.append((f"float vs PTQ, {args.agreement_dataset.name} {args.agreement_split}",
                     f"mean mask IoU **{agree['mean_iou']:.3f}** over the 3 masks, {agree['mean_iou_chosen']:.3f} "
                     f"for the mask shown (highest predicted IoU), min {agree['min_iou']:.3f}, same mask chosen "
                     f"{100 * agree['same_choice']:.0f} %, predicted-IoU abs error {agree['iou_pred_abs_err']:.3f} "
                     f"({agree['num_images']} images)"))
    body = (f"Written by `benchmarks/imx500.py` ({machine}). `export_imx500` = deploy graph (prompt baked in) -> "
            f"MCT PTQ (IMX500 TPC v1) -> MCTQ ONNX -> `imxconv-pt`. Times are wall-clock on 2 shared, busy "
            f"cores. Agreement = IoU between the float deploy graph's masks (logits > 0) and the quantized "
            f"ONNX's (onnxruntime + mct-quantizers), centre-point prompt.\n\n| what | value |\n|---|---|\n"
            + "\n".join(f"| {a} | {b} |" for a, b in rows))
    if source.startswith("config"):
        body += ("\n\nRandom weights (the trained default was not available): memory and times are those of the "
                 "real architecture; the agreement figures say little about a trained model.")
    print(body)
    (args.out / "benchmark.json").write_text(json.dumps({"export": res.to_dict(), "agreement_real": agree,
                                                         "wall_s": wall, "source": source}, indent=2))
    if not args.no_write:
        write_section("IMX500", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
