"""Core subcommands: `utsam info`, `utsam segment`, `utsam export-onnx`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_ultratinysam.core.parsers import box_arg, check_output_dir, check_output_file, point_arg, positive_int


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint (default: the shipped weights)")
    g.add_argument("--onnx", type=Path, help="a folder with encoder.onnx + decoder.onnx (utsam export-onnx)")
    p.add_argument("--backend", choices=["torch", "onnx"], default=None,
                   help="inference backend (default torch; onnx when --precision is int8, bf16 or auto)")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--precision", choices=["auto", "float", "int8", "bf16"], default="float",
                   help="onnx backend: int8 graphs (made once and cached, onnxruntime), bf16 (OpenVINO, CPUs with "
                        "AMX / AVX512-BF16); auto = bf16 where the CPU has AMX / AVX512-BF16, else int8 where it has "
                        "AVX2")


def make_predictor(args, **kw):
    from napari_ultratinysam.inference.predictor import Predictor

    precision = getattr(args, "precision", "float")
    backend = args.backend or ("torch" if precision == "float" else "onnx")
    if getattr(args, "onnx", None):
        if precision not in ("float", "bf16"):
            raise ValueError(f"--precision {precision} does not apply to --onnx: the folder runs at the precision it "
                             "was exported with (utsam export-onnx --precision int8), or a float folder in bf16")
        return Predictor.from_onnx(args.onnx, threads=args.threads, precision=precision, **kw)
    if backend == "torch" and precision != "float":
        raise ValueError(f"--precision {precision} needs --backend onnx")
    if getattr(args, "checkpoint", None):
        return Predictor.from_checkpoint(args.checkpoint, backend=backend, threads=args.threads,
                                         precision=precision, **kw)
    return Predictor.from_default(backend=backend, threads=args.threads, precision=precision, **kw)


def read_image(path: Path) -> np.ndarray:
    """An image file -> its array; a missing, unreadable, corrupt or oversized (PIL's decompression-bomb limit)
    file is one ValueError / FileNotFoundError naming it."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path}: is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path}: refused, too many pixels ({e})") from None
    except MemoryError:
        raise MemoryError(f"image {path}: not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated / corrupt files
        raise ValueError(f"image {path}: cannot be read ({e})") from None


def cmd_info(args) -> int:
    import torch

    from napari_ultratinysam.model.build import build_model, mac_table, param_table
    from napari_ultratinysam.model.checkpoints import load_model

    torch.set_num_threads(1)
    model = load_model(args.checkpoint) if args.checkpoint else build_model(args.config)
    cfg = model.cfg
    print(f"model: {cfg.name}  trunk: {cfg.trunk}  input: {cfg.image_size}x{cfg.image_size}")
    print(f"{'part':32s} {'parameters':>12s}")
    for name, n in param_table(model):
        print(f"{name:32s} {n:12,d}")
    print(f"\n{'part':32s} {'GMACs':>10s}")
    for name, n in mac_table(model):
        print(f"{name:32s} {n / 1e9:10.4f}")
    return 0


def cmd_segment(args) -> int:
    from PIL import Image

    from napari_ultratinysam.core.io import atomic_path

    if not args.point and not args.box:
        raise ValueError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    check_output_file(args.output, "-o")
    image = read_image(args.image)
    pred = make_predictor(args, zoom_refine=not args.no_zoom, flip_tta=args.flip_tta)
    pred.set_image(image)
    pts = np.array([p[:2] for p in args.point], np.float32) if args.point else None
    lab = np.array([p[2] for p in args.point], np.int64) if args.point else None
    r = pred.predict(points=pts, labels=lab, box=args.box, multimask=None)
    mask = r.mask(0)
    with atomic_path(args.output, suffix=args.output.suffix) as tmp:
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")
    print(f"{args.output}: {int(mask.sum())} px ({100 * mask.mean():.1f} %), predicted IoU {r.scores[0]:.3f}")
    return 0


def cmd_export_onnx(args) -> int:
    from napari_ultratinysam.inference.onnx_export import export_onnx
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, load_model

    check_output_dir(args.output, "-o")
    calibration = None
    if args.calibration is not None:
        if args.precision != "int8":
            raise ValueError("--calibration is only used with --precision int8")
        from napari_ultratinysam.inference.int8 import read_calibration_folder

        calibration = read_calibration_folder(args.calibration)
    model = load_model(args.checkpoint or DEFAULT_CHECKPOINT)
    if args.precision == "int8":
        import tempfile

        from napari_ultratinysam.inference.int8 import quantize_onnx_folder

        with tempfile.TemporaryDirectory(prefix="utsam-export-") as td:
            export_onnx(model, td, opset=args.opset)
            out = quantize_onnx_folder(td, args.output, calibration=calibration)
        import json

        q = json.loads((out / "config.json").read_text())["quantization"]
        enc = "int8" if q["encoder"]["int8"] else (f"float (int8 mask IoU {q['encoder']['int8_mask_iou_vs_float']:.3f}"
                                                    f" < {q['encoder']['min_iou']})")
        print(f"int8 export: decoder int8, encoder {enc}")
    else:
        out = export_onnx(model, args.output, opset=args.opset)
    print("wrote " + ", ".join(str(f) for f in sorted(out.iterdir()) if f.suffix in (".onnx", ".json")))
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="parameters and MACs per part of a model")
    p.add_argument("--config", default="ultratinysam", help="model preset name or a YAML path")
    p.add_argument("--checkpoint", type=Path, help="describe this checkpoint instead of a preset")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("segment", help="segment one object in an image from points and/or a box")
    p.add_argument("image", type=Path)
    p.add_argument("--point", action="append", type=point_arg("--point", default_label=1), default=[],
                   metavar="X,Y[,LABEL]",
                   help="a click in image pixels; LABEL 1 positive (default) or 0 negative; repeatable")
    p.add_argument("--box", type=box_arg("--box"), metavar="X0,Y0,X1,Y1")
    p.add_argument("-o", "--output", type=Path, required=True, help="output mask PNG (0/255)")
    p.add_argument("--no-zoom", action="store_true", help="disable zoom-in refinement")
    p.add_argument("--flip-tta", action="store_true",
                   help="average over the image and its mirror image (twice the time; see README)")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("export-onnx", help="export encoder.onnx + decoder.onnx (+ decoder_nomask.onnx) for the "
                                          "onnxruntime and OpenVINO backends")
    p.add_argument("--checkpoint", type=Path, help="default: the shipped weights")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--precision", choices=["float", "int8"], default="float",
                   help="int8: dynamic int8 decoder, static int8 encoder when it agrees with float")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="images for the int8 encoder's calibration (default: the sample images, flipped and cropped)")
    p.set_defaults(func=cmd_export_onnx)
