"""`utsam segment-all IMAGE_OR_FOLDER -o OUT_FOLDER`: every object of each image as a uint16 instance PNG."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from napari_ultratinysam.core.parsers import check_output_dir, nonnegative_int, positive_int

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(path: Path) -> list[Path]:
    """An image file, or the images directly inside a folder (sorted); one clear error for anything else,
    including two images of a folder that would write the same ``<stem>.png``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise ValueError(f"input {path}: no images in this folder ({', '.join(IMAGE_EXTS)})")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"input {path}: {seen[f.stem].name} and {f.name} would both write {f.stem}.png")
        seen[f.stem] = f
    return files


def write_instance_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    from napari_ultratinysam.core.io import atomic_path

    with atomic_path(path, suffix=".png.tmp") as tmp:
        Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16)).save(tmp, format="PNG")


def cmd_segment_all(args) -> int:
    from napari_ultratinysam.cli.predict import make_predictor, read_image
    from napari_ultratinysam.inference.batched_decoder import batched_decoder
    from napari_ultratinysam.inference.segment_all import SegmentAllParams, segment_all

    inputs = list_inputs(args.input)
    out = check_output_dir(args.output, "-o")
    if args.input.is_dir() and out.resolve() == args.input.resolve():
        raise ValueError(f"-o {out}: is the input folder; the instance PNGs would overwrite its images")
    overrides = {k: v for k, v in (("points_per_side", args.points_per_side), ("zoom_levels", args.zoom_levels),
                                   ("min_area", args.min_area), ("pred_iou_thresh", args.pred_iou_thresh),
                                   ("stability_thresh", args.stability_thresh)) if v is not None}
    params = SegmentAllParams.from_overrides(overrides)
    if args.precision == "auto" and (args.backend == "torch" or getattr(args, "onnx", None) is not None):
        args.precision = "float"  # the default "auto" applies to the shipped / checkpoint ONNX graphs only
    pred = make_predictor(args, zoom_refine=False)
    model = None
    if getattr(args, "onnx", None) is None and pred.backend.name != "torch":
        from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, load_model

        model = load_model(args.checkpoint or DEFAULT_CHECKPOINT)  # for the batched decoder graph
    batched = None if args.no_batch else batched_decoder(pred, model, batch_size=params.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    for f in inputs:
        image = read_image(f)
        t = time.perf_counter()
        res = segment_all(pred, image, params, batched=batched)
        dt = time.perf_counter() - t
        dst = out / f"{f.stem}.png"
        write_instance_png(dst, res.labels)
        print(f"{dst}: {len(res)} objects, {res.prompts} clicks in {res.num_views} views, {dt:.2f} s")
    return 0


def register(sub) -> None:
    from napari_ultratinysam.cli.predict import add_model_args

    p = sub.add_parser("segment-all", help="propose every object of an image (or of each image of a folder) as a "
                                           "uint16 instance PNG (0 = none)")
    p.add_argument("input", type=Path, metavar="IMAGE_OR_FOLDER")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_FOLDER",
                   help="writes OUT_FOLDER/<stem>.png for each image")
    add_model_args(p)
    p.set_defaults(precision="auto")  # the fastest CPU path: hundreds of clicks per image
    p.add_argument("--points-per-side", type=positive_int, default=None,
                   help="click grid of the whole-image view (default 16)")
    p.add_argument("--zoom-levels", type=nonnegative_int, default=None,
                   help="levels of zoom-in tiles (2x2, 4x4, ...; default: as the image size needs, at most 2)")
    p.add_argument("--min-area", type=nonnegative_int, default=None,
                   help="smallest object or piece kept, pixels (default 1/4000 of the image, at least 16)")
    p.add_argument("--pred-iou-thresh", type=float, default=None, help="smallest predicted IoU kept (default 0.3)")
    p.add_argument("--stability-thresh", type=float, default=None, help="smallest stability score kept "
                                                                         "(default 0.3)")
    p.add_argument("--no-batch", action="store_true", help="decode one click per call (no batched decoder graph)")
    p.set_defaults(func=cmd_segment_all)
