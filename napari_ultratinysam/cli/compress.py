"""`utsam quantize` and `utsam export-imx500`: thin wrappers over compression.pipeline / compression.imx500."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_ultratinysam.core.parsers import box_arg, check_output_dir, nonnegative_int, point_arg, positive_int

PROMPTS = ("center-point", "points", "box")


def _prompt_kwargs(args) -> dict:
    if args.prompt == "points" and not args.points:
        raise ValueError("--prompt points needs --points X,Y[,LABEL] (model pixels of the 128x128 frame)")
    if args.prompt == "box" and args.box is None:
        raise ValueError("--prompt box needs --box X0,Y0,X1,Y1 (model pixels of the 128x128 frame)")
    if args.prompt != "points" and args.points:
        raise ValueError("--points is only used with --prompt points")
    if args.prompt != "box" and args.box is not None:
        raise ValueError("--box is only used with --prompt box")
    return {"prompt": args.prompt, "points": args.points or None, "box": args.box}


def _progress(quiet: bool):
    last = {"t": 0.0, "msg": ""}

    def cb(message: str, fraction: float | None = None) -> None:
        if quiet:
            return
        now = time.monotonic()
        # converter lines arrive fast: print at most one every 2 s, but every stage change
        if message.startswith("imxconv-pt [") and now - last["t"] < 2.0:
            return
        last["t"] = now
        pct = f"{100 * fraction:5.1f} % " if fraction is not None else ""
        print(f"[{pct}] {message}" if pct else message, file=sys.stderr, flush=True)

    return cb


def _model_kwargs(args) -> dict:
    return {"checkpoint": args.checkpoint, "config": args.config}


def _one_line_errors(fn):
    """Quantisation / conversion failures -> one line and exit code 2 (errors.CliError)."""
    import functools

    @functools.wraps(fn)
    def wrapped(args):
        from napari_ultratinysam.compression.common import QuantizationError
        from napari_ultratinysam.compression.imx500 import IMX500Error
        from napari_ultratinysam.core.errors import CliError

        try:
            return fn(args)
        except (IMX500Error, QuantizationError) as e:
            raise CliError(str(e)) from e

    return wrapped


@_one_line_errors
def cmd_quantize(args) -> int:
    from napari_ultratinysam.compression.metadata import build_metadata
    from napari_ultratinysam.compression.pipeline import quantize_to_onnx
    from napari_ultratinysam.core.io import atomic_write_json

    method = "qat" if args.qat else "ptq"
    out = check_output_dir(args.output, "-o")  # before the quantization
    q = quantize_to_onnx(calibration=args.calibration, method=method, out=out, num_images=args.num_images,
                         qat_steps=args.qat_steps, qat_lr=args.qat_lr, progress=_progress(args.quiet),
                         **_model_kwargs(args), **_prompt_kwargs(args))
    try:
        meta = build_metadata(q.graph, q.source, method, None, {
            "calibration": {"source": str(args.calibration) if args.calibration else "default",
                            "num_images": args.num_images},
            "times": q.times, "float_vs_quantized": q.agreement,
            "float_check_max_abs_diff": q.float_check_max_abs_diff, "files": {"onnx": q.onnx_path.name}})
        atomic_write_json(out / "metadata.json", meta)
    finally:
        q.graph.release()
    agree = f", float vs quantized mean mask IoU {q.agreement['mean_iou']:.3f}" if q.agreement else ""
    print(f"wrote {q.onnx_path} ({method.upper()} {q.times.get(method + '_s', 0):.0f} s{agree}) and "
          f"{out / 'metadata.json'}")
    return 0


@_one_line_errors
def cmd_export_imx500(args) -> int:
    from napari_ultratinysam.compression.imx500 import export_imx500

    check_output_dir(args.output, "-o")  # before the quantization and conversion
    r = export_imx500(calibration=args.calibration, method=args.method, out=args.output,
                      num_images=args.num_images, qat_steps=args.qat_steps, qat_lr=args.qat_lr,
                      progress=_progress(args.quiet), timeout=args.timeout, **_model_kwargs(args),
                      **_prompt_kwargs(args))
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        agree = (f"; float vs quantized mean mask IoU {r.agreement['mean_iou']:.3f}" if r.agreement else "")
        print(f"{r.memory.summary()}; {r.method.upper()} {r.times.get(r.method + '_s', 0):.0f} s, "
              f"conversion {r.times.get('conversion_s', 0):.0f} s{agree}")
        print(f"wrote {r.out_dir}/ (packerOut.zip, memory report, {Path(r.onnx_path).name}, metadata.json, deploy/); "
              f"on the Pi: imx500-package -i packerOut.zip -o out/")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint (default: the shipped weights)")
    g.add_argument("--config", help="a preset name or YAML: export random weights (for checks, not for use)")
    p.add_argument("--prompt", choices=PROMPTS, default="center-point",
                   help="the prompt baked into the graph (default: one click at the frame centre)")
    p.add_argument("--points", action="append", type=point_arg("--points"), metavar="X,Y[,LABEL]",
                   help="with --prompt points: a click in model pixels of the 128x128 frame; repeatable")
    p.add_argument("--box", type=box_arg("--box"), metavar="X0,Y0,X1,Y1",
                   help="with --prompt box: the box in model pixels")
    p.add_argument("--calibration", type=Path, metavar="DATASET",
                   help="representative images: a dataset (any supported format; its train split) or an image "
                        "folder (default: the bundled sample data)")
    p.add_argument("--num-images", type=positive_int, default=128, help="calibration images (default 128)")
    p.add_argument("--qat-steps", type=nonnegative_int, default=200, help="QAT fine-tuning steps (default 200)")
    p.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate (default 1e-5)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize for the IMX500 (MCT PTQ or QAT) -> quantized ONNX",
                              description="Quantize the deployable graph (prompt baked in) with MCT and write "
                                          "OUT/ultratinysam_imx500.onnx (MCTQ) and OUT/metadata.json.")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--ptq", action="store_true", help="post-training quantization (default)")
    m.add_argument("--qat", action="store_true", help="quantization-aware training with the training losses")
    _common(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("export-imx500", help="quantize + convert for the Raspberry Pi AI Camera (IMX500)",
                              description="Quantize, run imxconv-pt and write OUT/ with packerOut.zip, the memory "
                                          "report, the quantized ONNX, metadata.json and deploy/ (Pi script).")
    _common(p)
    p.add_argument("--method", choices=("ptq", "qat"), default="ptq", help="quantization method (default ptq)")
    p.add_argument("--timeout", type=float, default=None, help="give up on imxconv-pt after this many seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=cmd_export_imx500)
