"""`utsam evaluate`: run the interactive and/or paper protocol and write OUT/metrics.{json,md} + a plot.

Input is a dataset any reader understands (``--dataset DIR [--format auto] [--split test]``) or an image
folder with a mask folder paired by file stem (``--images DIR --masks DIR``, see :func:`masks_from_label_image`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.types import AnnotatedImage

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

        from ..transforms import to_rgb_uint8

        img_path, mask_path = self.pairs[i]
        try:
            with Image.open(img_path) as im:
                im = im.convert("RGB") if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1") else im
                image = to_rgb_uint8(np.array(im), name=str(img_path))  # a writable copy
            with Image.open(mask_path) as mk:
                mode = mk.mode
                label = np.asarray(mk)
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
def load_predictor(checkpoint: str | None = None, onnx: str | None = None) -> Any:
    """The predictor for ``--checkpoint`` / ``--onnx`` (or the bundled default model)."""
    from ..predictor import Predictor

    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: --checkpoint file does not exist")
        return Predictor.from_checkpoint(checkpoint)
    if onnx:
        if not Path(onnx).is_dir():
            raise FileNotFoundError(f"{onnx}: --onnx folder does not exist")
        return Predictor.from_onnx(onnx)
    return Predictor.from_default()


def load_dataset(args: argparse.Namespace) -> Sequence[AnnotatedImage]:
    from ..cli import CliError

    if args.dataset and (args.images or args.masks):
        raise CliError("give either --dataset or --images/--masks, not both")
    if args.dataset:
        try:
            from ..data.readers import read_dataset
        except ImportError as e:
            raise CliError(f"--dataset: the dataset readers are not available ({e})") from e
        return read_dataset(args.dataset, format=args.format, split=args.split)
    if not (args.images and args.masks):
        raise CliError("give --dataset DIR, or both --images DIR and --masks DIR")
    return FolderPairs(args.images, args.masks)


def _default_label(args: argparse.Namespace) -> str:
    model = Path(args.checkpoint).stem if args.checkpoint else (Path(args.onnx).name if args.onnx else "default")
    folder = Path(args.dataset or args.images).resolve()
    data = folder.name if args.dataset else f"{folder.parent.name}/{folder.name}"
    return f"{model} @ {data}" + (f" ({args.split})" if args.dataset and args.split else "")


# ----------------------------------------------------------------------------------------- command
def run_evaluate(args: argparse.Namespace) -> int:
    from ..cli import CliError
    from .protocols import evaluate_interactive, evaluate_paper
    from .report import run_metrics, write_report

    for flag, v, lo in (("--max-clicks", args.max_clicks, 1), ("--min-area", args.min_area, 0),
                        ("--max-objects", args.max_objects, 1), ("--max-images", args.max_images, 1)):
        if v is not None and v < lo:
            raise CliError(f"{flag}: must be >= {lo}, got {v}")
    dataset = load_dataset(args)
    if len(dataset) == 0:
        raise CliError(f"{args.dataset or args.images}: the dataset has no images")
    predictor = load_predictor(args.checkpoint, args.onnx)
    progress = not args.quiet
    inter = paper = None
    if args.protocol in ("noc", "all"):
        inter = evaluate_interactive(predictor, dataset, max_clicks=args.max_clicks, min_area=args.min_area,
                                     max_images=args.max_images, max_objects=args.max_objects,
                                     click_mode=args.click_mode, progress=progress)
    if args.protocol in ("paper", "all"):
        paper = evaluate_paper(predictor, dataset, seed=args.seed, max_images=args.max_images,
                               max_objects=args.max_objects, progress=progress)
    label = args.label or _default_label(args)
    m = run_metrics(inter, paper, model=args.checkpoint or args.onnx or "default",
                    dataset=str(args.dataset or args.images), split=args.split, protocol=args.protocol,
                    seed=args.seed, click_mode=args.click_mode)
    paths = write_report(args.output, {label: m})
    if inter is not None:
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
    p.add_argument("--dataset", metavar="DIR", help="dataset folder in any supported format")
    p.add_argument("--format", default="auto", help="dataset format (default: auto-detect)")
    p.add_argument("--split", default=None, help="dataset split, e.g. test (default: the reader's default)")
    p.add_argument("--images", metavar="DIR", help="image folder (paired with --masks by file stem)")
    p.add_argument("--masks", metavar="DIR", help="mask folder: 0/255 binary, palette or instance ids; "
                                                   "8-bit gray value 128 = ignore")
    p.add_argument("--protocol", choices=PROTOCOLS, default="all", help="noc, paper or all (default)")
    p.add_argument("--max-clicks", type=int, default=20, help="clicks per object, interactive protocol (20)")
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
