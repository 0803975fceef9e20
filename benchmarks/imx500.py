"""IMX500 export of a preset or checkpoint: memory report, PTQ / conversion times, float vs PTQ (vs QAT) masks.

    .venv/bin/python benchmarks/imx500.py [--checkpoint CKPT | --config ultratinysam] [--num-images 128]
        [--calibration DATASET] [--agreement-dataset DATASET --agreement-split test --agreement-images 40]
        [--reuse OUT] [--qat QAT_OUT] [--device-json BENCHMARK_JSON] [--out runs/imx500_bench] [--no-write]

Runs ``export_imx500`` (the function behind `utsam export-imx500`) with the centre-point prompt (or, with
``--reuse OUT``, reads a finished export folder: its metadata.json holds the memory report and the times), then
compares, through :class:`DevicePredictor` (the baked-prompt graph steered by the inference ROI like the Raspberry
Pi: a square ROI of side min(H, W) centred on the click), the float deploy graph with the quantized ONNX
(onnxruntime + mct-quantizers) on real objects: one click at the interior of each object of the CamVid TEST images
(objects >= 150 px after squashing to 128x128, the paper protocol's filter), and writes the `## IMX500` section
of BENCHMARKS.md. ``--qat QAT_OUT``: a QAT-quantized ONNX folder (``utsam quantize --qat``) compared on the same
objects.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"

# The paper preset with random weights (config ultratinysam), measured by this script on 2026-11-28 11:31 UTC
# (export_imx500, 128 CamVid train calibration images): kept in the section when the shipped model is measured.
PAPER_PRESET_RANDOM = {
    "when": "2026-11-28 11:31 UTC", "parameters": "5,338,513", "memory": "5.82 MB of 8.00 MB (73%)",
    "runtime_model": "708.13 KB / 5.13 MB", "fits": "true", "ptq_s": 554, "onnx_export_s": 22, "conversion_s": 859,
    "wall_s": 1529, "agreement": "0.967 (full frame, centre point, 16 CamVid val images; 0.967 on 8 calibration "
                                 "images)",
}


def _memory_from_meta(meta: dict):
    from napari_ultratinysam.compression.imx500 import MemoryReport

    m = meta.get("memory") or {}
    if "memory_usage_bytes" not in m:
        raise SystemExit("--reuse: the folder's metadata.json has no memory report (was it converted?)")
    return MemoryReport("", m["memory_usage_bytes"], m["available_bytes"], m["fits"], m.get("runtime_bytes"),
                        m.get("model_bytes"), m.get("utilization"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", type=Path)
    g.add_argument("--config")
    ap.add_argument("--num-images", type=int, default=128)
    ap.add_argument("--calibration", type=Path, default=CAMVID if CAMVID.is_dir() else None)
    ap.add_argument("--agreement-dataset", type=Path, default=CAMVID if CAMVID.is_dir() else None)
    ap.add_argument("--agreement-split", default="test")
    ap.add_argument("--agreement-images", type=int, default=40, help="images, spread evenly over the split")
    ap.add_argument("--min-area-128", type=int, default=150, help="object filter (px after squashing to 128^2)")
    ap.add_argument("--reuse", type=Path, default=None, help="a finished export folder: skip the export")
    ap.add_argument("--qat", type=Path, default=None, help="a QAT-quantized ONNX folder to compare as well")
    ap.add_argument("--device-json", type=Path, default=None,
                    help="reuse the device comparison of an earlier run's benchmark.json (re-render only)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "imx500_bench")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from napari_ultratinysam.compression.device_predictor import DevicePredictor, device_agreement
    from napari_ultratinysam.compression.imx500 import export_imx500
    from napari_ultratinysam.compression.pipeline import load_export_model
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

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

    if args.reuse is not None:
        out = args.reuse
        meta = json.loads((out / "metadata.json").read_text())
        memory, times = _memory_from_meta(meta), dict(meta.get("times") or {})
        calib_agree = meta.get("float_vs_quantized")
        prev = out / "export_result.json"
        wall = json.loads(prev.read_text())["wall_s"] if prev.is_file() else times.get("total_s", 0.0)
        onnx_dir = out
    else:
        out = args.out
        t0 = time.perf_counter()
        res = export_imx500(out=out, calibration=args.calibration, num_images=args.num_images, progress=progress,
                            **kw)
        wall = time.perf_counter() - t0
        memory, times, calib_agree, onnx_dir = res.memory, res.times, res.agreement, out
        meta = json.loads((out / "metadata.json").read_text())
    model, source = load_export_model(**kw)
    n_params = sum(p.numel() for p in model.parameters())

    dev = None
    if args.device_json is not None:
        dev = json.loads(args.device_json.read_text())["device"]
    elif args.agreement_dataset is not None:
        from napari_ultratinysam.data.readers import read_dataset

        ds = read_dataset(args.agreement_dataset, split=args.agreement_split)
        idx = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), args.agreement_images)).round().astype(int))
        dq = DevicePredictor.from_quantized_onnx(onnx_dir)
        quants = {"PTQ": dq}
        if args.qat is not None:
            quants["QAT"] = DevicePredictor.from_quantized_onnx(args.qat)
        df = DevicePredictor.from_float(model, prompt=dq.prompt)
        t = time.perf_counter()
        dev = device_agreement(df, quants, ds, indices=idx, min_area_128=args.min_area_128, progress=True)
        dev["seconds"] = round(time.perf_counter() - t, 1)
        dev["images"] = len(idx)
        dev["dataset"] = f"{args.agreement_dataset.name} {args.agreement_split}"

    mb = 1024 ** 2
    pr = meta.get("prompt", {})
    pts = ", ".join(f"({p[0]:g}, {p[1]:g})" for p in pr.get("points", []))
    prompt = f"{pr.get('mode', '?')} {pts}" + \
             (", multimask (3 masks)" if pr.get("multimask") else "")
    method = (meta.get("quantization") or {}).get("method", "ptq").upper()
    rows = [
        ("model", f"{source.replace(str(ROOT) + '/', '')} ({n_params:,} parameters)"),
        ("prompt", prompt),
        ("calibration", f"{(meta.get('calibration') or {}).get('num_images', args.num_images)} images from "
                        f"{(meta.get('calibration') or {}).get('source', args.calibration)} (train split)"),
        ("Memory Usage", f"**{memory.memory_usage_bytes / mb:.2f} MB** of {memory.available_bytes / mb:.2f} MB "
                         f"({memory.utilization or '?'})"),
        ("runtime / model memory", f"{(memory.runtime_bytes or 0) / 1024:.2f} KB / "
                                   f"{(memory.model_bytes or 0) / mb:.2f} MB"),
        ("Fit In Chip", str(memory.fits).lower()),
        (f"{method} time (MCT 2.5.1)", f"{times.get(method.lower() + '_s', 0):.0f} s"),
        ("MCTQ ONNX export", f"{times.get('onnx_export_s', 0):.0f} s"),
        ("imxconv-pt 3.18.2 conversion", f"{times.get('conversion_s', 0):.0f} s"),
        ("whole export (load, PTQ, export, agreement, conversion)", f"{wall:.0f} s"),
        ("float vs PTQ, calibration images (full frame, 3 masks)",
         f"mean mask IoU {calib_agree['mean_iou']:.3f}, {calib_agree['mean_iou_chosen']:.3f} for the mask shown "
         f"({calib_agree['num_images']} images)" if calib_agree else "-"),
    ]
    body = (f"Written by `benchmarks/imx500.py` ({machine}). `export_imx500` = deploy graph (prompt baked in) -> "
            f"MCT PTQ (IMX500 TPC v1) -> MCTQ ONNX -> `imxconv-pt`. Times are wall-clock on 2 shared, busy "
            f"cores.\n\n| what | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    if dev is not None:
        body += (f"\n\nDevice-faithful comparison (`DevicePredictor`: the baked centre-point graph steered by the "
                 f"inference ROI, a square of side min(H, W) centred on the click, as on the Raspberry Pi). One "
                 f"click at the interior of each object of {dev['images']} "
                 f"{dev.get('dataset', 'camvid test')} images (spread evenly), objects >= {args.min_area_128} px "
                 f"after squashing to 128x128: {dev['num_objects']} objects. Agreement = IoU between the float "
                 f"deploy graph's shown mask (highest predicted IoU) and the quantized graph's; mIoU@1 = IoU with "
                 f"the ground truth (one click: the prompt is baked in, further clicks are not meaningful).\n\n"
                 f"| graph | mIoU@1 vs ground truth | mask IoU with the float graph (mean / median / min) |\n"
                 f"|---|---|---|\n| float deploy graph | **{dev['miou@1_float']:.3f}** | - |\n")
        for name in ("PTQ", "QAT"):
            if name in dev:
                d = dev[name]
                body += (f"| + {name} (quantized ONNX) | **{d['miou@1']:.3f}** | **{d['mean_iou']:.3f}** / "
                         f"{d['median_iou']:.3f} / {d['min_iou']:.3f} |\n")
        if "QAT" not in dev:
            body += "\nQAT: not run for this table.\n"
        elif args.qat is not None:
            qm = json.loads((args.qat / "metadata.json").read_text()) if (args.qat / "metadata.json").is_file() else {}
            extra = json.loads((args.qat / "qat_result.json").read_text()) if (args.qat / "qat_result.json").is_file() \
                else {}
            q = qm.get("qat") or extra
            cal = qm.get("calibration") or {}
            body += (f"\nQAT: MCT QAT (`quantize_qat`: training losses, GT object under the baked click as the target, "
                     f"BatchNorm frozen) for {q.get('steps', '?')} steps at lr {q.get('lr', '?')}, 1 image per step, "
                     f"{cal.get('num_images', '?')} CamVid train images, "
                     f"{(qm.get('times') or extra.get('times') or {}).get('qat_s', '?')} s. "
                     + ("It beats PTQ on mIoU@1." if dev["QAT"]["miou@1"] > dev["PTQ"]["miou@1"] else
                        "This short run does not beat PTQ on mIoU@1 (it moves the masks away from the float "
                        "graph's): PTQ is the one to ship.") + "\n")
    if source.startswith("config"):
        body += ("\n\nRandom weights (the trained default was not available): memory and times are those of the "
                 "real architecture; the agreement figures say little about a trained model.")
    else:
        p = PAPER_PRESET_RANDOM
        body = body.rstrip("\n") + (
                 f"\n\nPaper preset with random weights (config ultratinysam, {p['parameters']} parameters, this "
                 f"script on {p['when']}): Memory Usage **{p['memory']}**, runtime / model memory "
                 f"{p['runtime_model']}, Fit In Chip {p['fits']}; PTQ {p['ptq_s']} s, MCTQ ONNX export "
                 f"{p['onnx_export_s']} s, conversion {p['conversion_s']} s, whole export {p['wall_s']} s; float vs "
                 f"PTQ mean mask IoU {p['agreement']}.")
    body = body.rstrip("\n") + ("\n\nRegenerate: `python benchmarks/imx500.py` (the shipped weights: export, then "
                                 "the device comparison); `--reuse OUT` skips the export, `--qat QAT_OUT` adds the "
                                 "QAT row (a folder from `utsam quantize --qat`), `--config ultratinysam` measures "
                                 "the paper preset with random weights.")
    print(body)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({
        "memory": {k: v for k, v in memory.__dict__.items() if k != "raw"}, "times": times, "wall_s": wall,
        "calibration_agreement": calib_agree, "device": dev, "source": source, "export_dir": str(onnx_dir)},
        indent=2))
    if not args.no_write:
        write_section("IMX500", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
