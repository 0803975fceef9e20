"""`utsam import`: labelled images (any dataset the readers know, or images + masks folders) -> a new annotation
project whose objects can be corrected in the annotator; a thin wrapper over data.importer."""
from __future__ import annotations

import argparse

from napari_ultratinysam.data.readers import ALIASES, FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="existing labels -> a new annotation project, to correct them in the annotator",
        description="Start an annotation project from labelled images: our CamVid-style export, SegNet CamVid "
                    "class maps, COCO instances JSON, YOLO segmentation, images/ + masks/ folders (format "
                    "detected when auto), or a folder of images plus --masks, a folder of masks from another tool "
                    "paired by file name. The objects become committed objects of the project; images are "
                    "referenced where they are unless --copy-images.")
    p.add_argument("source", help="dataset folder (or a COCO JSON file); with --masks, the folder of images")
    p.add_argument("-o", "--out", required=True, help="project folder to create (new or empty)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS + tuple(ALIASES),
                   help="source layout (default: detected)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="folder of masks for the images in SOURCE, matched by file stem (0 = background; each "
                        "other value, or colour, is one object; images without a mask start empty)")
    p.add_argument("--split", default=None, help="only this split of the dataset (train, val, test, ...)")
    p.add_argument("--min-area", type=int, default=0, help="drop objects with fewer pixels (default 0: keep all)")
    p.add_argument("--images-dir", default=None, metavar="DIR", help="coco: folder of the images of a JSON file")
    p.add_argument("--void-index", type=int, default=None,
                   help="camvid class maps: the value for no object (default: the reader's, 11 for SegNet CamVid)")
    p.add_argument("--copy-images", action="store_true", help="copy the images into PROJECT/images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from napari_ultratinysam.core.errors import CliError
    from napari_ultratinysam.core.parsers import check_output_dir
    from napari_ultratinysam.data.importer import import_labels

    if args.min_area < 0:
        raise CliError(f"--min-area: must be >= 0, got {args.min_area}")
    check_output_dir(args.out, "-o/--out")
    kw = {}
    if args.images_dir is not None:
        kw["images_dir"] = args.images_dir
    if args.void_index is not None:
        kw["void_index"] = args.void_index
    try:
        summary = import_labels(args.source, args.out, format=args.format, masks=args.masks, split=args.split,
                                min_area=args.min_area, copy_images=args.copy_images, progress=not args.quiet,
                                **kw)
    except TypeError as e:  # a reader option given for a format that does not take it
        if "unexpected keyword" not in str(e):
            raise
        opt = "--images-dir" if "images_dir" in str(e) else "--void-index" if "void_index" in str(e) else "option"
        fmt = args.format
        if fmt == "auto":
            from napari_ultratinysam.data.readers import detect_format

            fmt = detect_format(args.source)
        raise CliError(f"{opt}: not used by the {fmt} format of {args.source}") from None
    summary.project.close()
    print(summary)
    return 0
