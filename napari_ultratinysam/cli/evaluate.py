"""`utsam evaluate`: run the interactive and/or paper protocol and write OUT/metrics.{json,md} + a plot.

Input is a dataset any reader understands (``--dataset DIR [--format auto] [--split test]``) or an image
folder with a mask folder paired by file stem (``--images DIR --masks DIR``, see :func:`masks_from_label_image`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_ultratinysam.data.types import AnnotatedImage

PROTOCOLS = ("noc", "paper", "all")


# ----------------------------------------------------------------------------------- mask folders
def masks_from_label_image(label: np.ndarray, mode: str, name: str = "mask") -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H, W) bool object masks and an optional (H, W) ignore mask from a decoded mask image.

    ``mode`` is the PIL mode. 8-bit grayscale ("L", or RGB with equal channels): every distinct non-zero
    value is one object (so binary 0/255 is one object) and the value exactly 128 means "ignore" (GrabCut
    convention). Palette ("P") and 16/32-bit ("I;16", "I"): every non-zero id is one object, no ignore value.
    Colour ("RGB"/"RGBA"): every distinct non-black colour is one object. "1": one binary object.
    """
    a = np.asarray(label)
    ignore = None
    if a.ndim == 3:
        a = a[..., :3] if a.shape[2] >= 3 else a[..., 0]
        if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            a, mode = a[..., 0], "L"
    if a.ndim == 3:  # colour-coded instances
        ids = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2].astype(np.int64)
    elif a.ndim == 2:
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise ValueError(f"{name}: float mask values must be integer instance ids")
        ids = a.astype(np.int64)
        if mode in ("L", "LA") and a.dtype == np.uint8:
            ig = ids == 128
            if ig.any():
                ignore = ig
                ids = np.where(ig, 0, ids)
    else:
        raise ValueError(f"{name}: expected a 2-D mask image, got shape {a.shape}")
    uniq = np.unique(ids)
    uniq = uniq[uniq != 0]
    masks = ids[None] == uniq[:, None, None] if len(uniq) else np.zeros((0,) + ids.shape, dtype=bool)
    return masks, ignore


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder does not exist")
    exts = {e.lower() for e in Image.registered_extensions()}
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in exts:
            continue
        if p.stem in out:
            raise ValueError(f"{p}: two {what} files share the stem {p.stem!r} ({out[p.stem].name})")
        out[p.stem] = p
    return out


class FolderPairs(Sequence[AnnotatedImage]):
    """Images and masks paired by file stem; each item is read when indexed."""

    def __init__(self, images_dir: str | Path, masks_dir: str | Path) -> None:
        images = _image_files(Path(images_dir), "image")
        masks = _image_files(Path(masks_dir), "mask")
        if not images:
            raise ValueError(f"{images_dir}: no image files found")
        missing = [s for s in images if s not in masks]
        if missing:
            raise ValueError(f"{images[missing[0]]}: no mask with stem {missing[0]!r} in {masks_dir} "
                             f"({len(missing)} of {len(images)} images have no mask)")
        self.pairs = [(images[s], masks[s]) for s in images]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> AnnotatedImage:  # type: ignore[override]
        from PIL import Image

        from napari_ultratinysam.core.transforms import to_rgb_uint8

        img_path, mask_path = self.pairs[i]
        current = img_path
        try:
            with Image.open(img_path) as im:
                im = im.convert("RGB") if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1") else im
                image = to_rgb_uint8(np.array(im), name=str(img_path))  # a writable copy
            current = mask_path
            with Image.open(mask_path) as mk:
                mode = mk.mode
                label = np.asarray(mk)
        except Image.DecompressionBombError as e:  # not an OSError: name the file here
            raise ValueError(f"{current}: image refused, too many pixels ({e})") from None
        except OSError as e:
            raise ValueError(f"{e.filename or img_path}: cannot read image ({e})") from e
        masks, ignore = masks_from_label_image(label, mode, name=str(mask_path))
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask size {masks.shape[2]}x{masks.shape[1]} does not match image "
                             f"{img_path.name} size {image.shape[1]}x{image.shape[0]}")
        extra: dict[str, Any] = {"mask_path": str(mask_path)}
        if ignore is not None:
            extra["ignore"] = ignore
        return AnnotatedImage(image=image, masks=masks, class_ids=np.full(len(masks), -1, dtype=np.int64),
                              name=img_path.stem, source=str(img_path), extra=extra)


# -------------------------------------------------------------------------------- model and data
def load_predictor(checkpoint: str | None = None, onnx: str | None = None, flip_tta: bool = False,
                   refine: bool = True) -> Any:
    """The predictor for ``--checkpoint`` / ``--onnx`` (or the bundled default model); ``flip_tta``: averaged over
    the image and its mirror image (``--flip-tta``); ``refine``: full-resolution refinement (``--no-refine``)."""
    from napari_ultratinysam.inference.predictor import Predictor

    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: --checkpoint file does not exist")
        return Predictor.from_checkpoint(checkpoint, flip_tta=flip_tta, refine=refine)
    if onnx:
        if not Path(onnx).is_dir():
            raise FileNotFoundError(f"{onnx}: --onnx folder does not exist")
        return Predictor.from_onnx(onnx, flip_tta=flip_tta, refine=refine)
    return Predictor.from_default(flip_tta=flip_tta, refine=refine)


def load_device_predictor(args: argparse.Namespace) -> tuple[Any, str]:
    """``--imx500 PATH`` (the quantized graph, prompt from its metadata.json) and/or ``--imx500-float`` (the float
    deploy graph of ``--checkpoint`` / the shipped weights, with PATH's prompt or the centre point), both steered
    by the inference ROI like the Raspberry Pi: -> (DevicePredictor, a name for the report)."""
    from napari_ultratinysam.compression.common import QuantizationError
    from napari_ultratinysam.compression.device_predictor import DevicePredictor, read_metadata, resolve_onnx_path
    from napari_ultratinysam.core.errors import CliError

    if args.onnx:
        raise CliError("--onnx cannot be combined with --imx500 / --imx500-float")
    if args.imx500 and args.checkpoint and not args.imx500_float:
        raise CliError("--checkpoint and --imx500 name two models; add --imx500-float to evaluate the float deploy "
                       "graph of CKPT with the prompt baked into PATH")
    if args.roi_size is not None and args.roi_size < 1:
        raise CliError(f"--roi-size: must be >= 1, got {args.roi_size}")
    try:
        if not args.imx500_float:
            dp = DevicePredictor.from_quantized_onnx(args.imx500, roi_size=args.roi_size)
            return dp, f"IMX500 {dp.metadata.get('quantization', {}).get('method', 'quantized').upper()} " \
                       f"({Path(args.imx500).name})"
        prompt = None
        if args.imx500:
            _, meta_path = resolve_onnx_path(args.imx500)
            if meta_path is None:
                raise CliError(f"{args.imx500}: no metadata.json beside the ONNX, so its baked prompt is unknown")
            from napari_ultratinysam.compression.device_predictor import prompt_from_dict

            prompt = prompt_from_dict(read_metadata(meta_path).get("prompt") or {})
        if args.checkpoint and not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"{args.checkpoint}: --checkpoint file does not exist")
        kw = {"prompt": prompt} if prompt is not None else {}
        dp = DevicePredictor.from_checkpoint_float(args.checkpoint, roi_size=args.roi_size, **kw)
        return dp, f"IMX500 float graph ({Path(args.checkpoint).stem if args.checkpoint else 'default'})"
    except QuantizationError as e:
        raise CliError(str(e)) from e


def load_dataset(args: argparse.Namespace) -> Sequence[AnnotatedImage]:
    from napari_ultratinysam.core.errors import CliError

    if args.dataset and (args.images or args.masks):
        raise CliError("give either --dataset or --images/--masks, not both")
    if args.dataset:
        try:
            from napari_ultratinysam.data.readers import read_dataset
        except ImportError as e:
            raise CliError(f"--dataset: the dataset readers are not available ({e})") from e
        return read_dataset(args.dataset, format=args.format, split=args.split)
    if not (args.images and args.masks):
        raise CliError("give --dataset DIR, or both --images DIR and --masks DIR")
    return FolderPairs(args.images, args.masks)


def _default_label(args: argparse.Namespace, model: str | None = None) -> str:
    if model is None:
        model = Path(args.checkpoint).stem if args.checkpoint else (Path(args.onnx).name if args.onnx else "default")
    folder = Path(args.dataset or args.images).resolve()
    data = folder.name if args.dataset else f"{folder.parent.name}/{folder.name}"
    return f"{model} @ {data}" + (f" ({args.split})" if args.dataset and args.split else "")


# ----------------------------------------------------------------------------------------- command
def run_evaluate(args: argparse.Namespace) -> int:
    import sys

    from napari_ultratinysam.core.errors import CliError
    from napari_ultratinysam.core.parsers import check_output_dir
    from napari_ultratinysam.evaluation.protocols import DEFAULT_PAPER_MODES, evaluate_interactive, evaluate_paper
    from napari_ultratinysam.evaluation.report import run_metrics, write_report

    for flag, v, lo in (("--max-clicks", args.max_clicks, 1), ("--min-area", args.min_area, 0),
                        ("--max-objects", args.max_objects, 1), ("--max-images", args.max_images, 1)):
        if v is not None and v < lo:
            raise CliError(f"{flag}: must be >= {lo}, got {v}")
    device = bool(getattr(args, "imx500", None) or getattr(args, "imx500_float", False))
    max_clicks = 20 if args.max_clicks is None else args.max_clicks
    modes, protocol, extra = DEFAULT_PAPER_MODES, args.protocol, {}
    model_name = None
    if getattr(args, "roi_size", None) is not None and not device:
        raise CliError("--roi-size is only used with --imx500 / --imx500-float")
    if getattr(args, "flip_tta", False) and device:
        raise CliError("--flip-tta does not apply to --imx500 / --imx500-float (the camera runs the graph once)")
    check_output_dir(args.output, "-o")  # before the evaluation: a bad -o must not throw the work away
    dataset = load_dataset(args)
    if len(dataset) == 0:
        raise CliError(f"{args.dataset or args.images}: the dataset has no images")
    if device:
        predictor, model_name = load_device_predictor(args)
        # the prompt is baked in: only the first positive click (or the box) steers the graph, through the ROI
        if max_clicks != 1 and args.max_clicks is not None and args.protocol != "paper":
            print(f"utsam evaluate: note: --max-clicks {max_clicks} ignored: the IMX500 graph has its prompt baked "
                  f"in, further clicks are not meaningful (mIoU@1 only)", file=sys.stderr)
        max_clicks = 1
        if predictor.prompt.mode == "box":
            if args.protocol == "noc":
                raise CliError("--protocol noc needs clicks, but this IMX500 graph has a box baked in; use "
                               "--protocol paper (box mode)")
            modes, protocol = ("box",), "paper"
        else:  # 3/5 clicks would be the first click again
            modes = ("1click", "1click_interior", "box")
        extra = {"imx500": {"graph": predictor.name, "source": predictor.source or args.imx500,
                            "prompt": predictor.prompt.to_dict(), "roi_size": args.roi_size or "min(H, W)",
                            "note": "prompt baked in, steered by the inference ROI; only click 1 / the box is "
                                    "meaningful; paper 'box' mode on a point graph = a click at the box centre"}}
    else:
        predictor = load_predictor(args.checkpoint, args.onnx, flip_tta=args.flip_tta, refine=not args.no_refine)
    progress = not args.quiet
    inter = paper = None
    if protocol in ("noc", "all"):
        inter = evaluate_interactive(predictor, dataset, max_clicks=max_clicks, min_area=args.min_area,
                                     max_images=args.max_images, max_objects=args.max_objects,
                                     click_mode=args.click_mode, progress=progress)
    if protocol in ("paper", "all"):
        paper = evaluate_paper(predictor, dataset, modes=modes, seed=args.seed, max_images=args.max_images,
                               max_objects=args.max_objects, progress=progress)
    label = args.label or _default_label(args, model_name)
    if getattr(args, "flip_tta", False):
        extra["flip_tta"] = True
        label = label if args.label else f"{label}, flip TTA"
    m = run_metrics(inter, paper, model=model_name or args.checkpoint or args.onnx or "default",
                    dataset=str(args.dataset or args.images), split=args.split, protocol=protocol,
                    seed=args.seed, click_mode=args.click_mode, **extra)
    paths = write_report(args.output, {label: m})
    if inter is not None and device:
        print(f"{label}: {m['num_objects']} objects, mIoU@1 {m['miou@1']} (prompt baked in: 1 click)")
    elif inter is not None:
        print(f"{label}: {m['num_objects']} objects, NoC@85 {m['noc@85']}, NoC@90 {m['noc@90']}, "
              f"mIoU@1 {m['miou@1']}")
    if paper is not None:
        print(f"{label}: paper mAP " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in m["paper_map"].items()))
    print(f"wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="measure a model: NoC / mIoU@k (interactive) and the paper's mAP + COCO AP",
        description="Evaluate a model on a dataset; writes OUT/metrics.json, OUT/metrics.md, OUT/iou_vs_clicks.png.")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="CKPT", help="model checkpoint (default: the bundled model)")
    model.add_argument("--onnx", metavar="DIR", help="exported ONNX model folder (float or quantized)")
    p.add_argument("--imx500", metavar="PATH",
                   help="evaluate what the IMX500 will produce: the quantized ONNX (or its export folder) with its "
                        "baked prompt, steered by the inference ROI like the Raspberry Pi (only click 1 / the box "
                        "is meaningful: the interactive protocol runs 1 click)")
    p.add_argument("--imx500-float", action="store_true",
                   help="the same for the FLOAT deploy graph of --checkpoint (default: the shipped weights), with "
                        "the prompt of --imx500 PATH when given, else the centre point (float vs PTQ vs QAT rows)")
    p.add_argument("--roi-size", type=int, default=None, metavar="PX",
                   help="with --imx500/--imx500-float: side of the square inference ROI around the click "
                        "(default: min(H, W) of each image)")
    p.add_argument("--flip-tta", action="store_true",
                   help="average each prediction over the image and its mirror image (twice the time)")
    p.add_argument("--no-refine", action="store_true",
                   help="the model's masks as they are, without full-resolution refinement of corrections")
    p.add_argument("--dataset", metavar="DIR", help="dataset folder in any supported format")
    p.add_argument("--format", default="auto", help="dataset format (default: auto-detect)")
    p.add_argument("--split", default=None, help="dataset split, e.g. test (default: the reader's default)")
    p.add_argument("--images", metavar="DIR", help="image folder (paired with --masks by file stem)")
    p.add_argument("--masks", metavar="DIR", help="mask folder: 0/255 binary, palette or instance ids; "
                                                   "8-bit gray value 128 = ignore")
    p.add_argument("--protocol", choices=PROTOCOLS, default="all", help="noc, paper or all (default)")
    p.add_argument("--max-clicks", type=int, default=None,
                   help="clicks per object, interactive protocol (20; 1 with --imx500)")
    p.add_argument("--max-objects", type=int, default=None, help="stop after N objects")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--min-area", type=int, default=0,
                   help="interactive protocol: skip objects smaller than this many image pixels (0)")
    p.add_argument("--click-mode", choices=("area", "depth"), default="area",
                   help="next click in the largest error region (area) or RITM's deepest error pixel (depth)")
    p.add_argument("--seed", type=int, default=0, help="seed of the paper protocol's random clicks (0)")
    p.add_argument("--label", default=None, help="name of this run in the report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=run_evaluate)
