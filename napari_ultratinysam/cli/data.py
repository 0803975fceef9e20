"""`utsam preprocess` and `utsam export-dataset`: thin wrappers over data.shards and data.export."""
from __future__ import annotations

import argparse
from pathlib import Path

from napari_ultratinysam.data.readers import ALIASES, FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="any dataset -> compact training shards at the model resolution",
                              description="Read a dataset (format detected when auto) and write training shards.")
    p.add_argument("input", help="dataset folder (or a COCO JSON file)")
    p.add_argument("-o", "--out", required=True, help="output folder for the shards (replaced as a whole)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS + tuple(ALIASES))
    p.add_argument("--size", type=int, default=128, help="training resolution (longest side, padded square)")
    p.add_argument("--min-area", type=int, default=150, help="drop masks under this many pixels at --size")
    p.add_argument("--split", default=None, help="only this split (train, val, test, ...)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard file")
    p.add_argument("--codec", default="jpeg", choices=("jpeg", "raw"), help="image storage in the shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_preprocess)

    e = subparsers.add_parser("export-dataset", help="annotation project -> CamVid-style, COCO or YOLO dataset",
                              description="Export a project's annotated images (or any readable dataset): camvid "
                                          "writes SPLIT/, SPLITannot/, SPLITinst/, lists, class_dict.csv and "
                                          "dataset.json; coco images/SPLIT/ and annotations/instances_SPLIT.json "
                                          "(RLE); yolo images/SPLIT/, labels/SPLIT/ (polygons) and data.yaml.")
    e.add_argument("project", help="annotation project folder (or any dataset the readers detect)")
    e.add_argument("-o", "--out", required=True, help="dataset folder (camvid: images are added or replaced by "
                                                      "name; coco / yolo: rewritten whole)")
    e.add_argument("--format", default="camvid", choices=("camvid", "coco", "yolo"), dest="export_format",
                   help="dataset layout (default camvid)")
    e.add_argument("--ratios", default="0.8,0.1,0.1", help="train,val,test ratios (default 0.8,0.1,0.1)")
    e.add_argument("--void-index", type=int, default=None,
                   help="camvid: class-map value where there is no object (default: the existing dataset's, "
                        "else 255)")
    e.add_argument("--image-format", default="png", choices=("png", "jpg"))
    e.add_argument("--seed", type=int, default=0, help="salt of the name hash that assigns splits")
    e.add_argument("--overwrite", action="store_true", help="start the dataset from scratch (also replaces an "
                                                            "export of another format)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_export)


def _preprocess(args: argparse.Namespace) -> int:
    from napari_ultratinysam.data.shards import preprocess

    summary = preprocess(args.input, args.out, format=args.format, size=args.size, min_area=args.min_area,
                         split=args.split, shard_size=args.shard_size, codec=args.codec, progress=not args.quiet)
    print(summary)
    return 0


def _export(args: argparse.Namespace) -> int:
    from napari_ultratinysam.data.export import export_dataset
    from napari_ultratinysam.data.project import Project
    from napari_ultratinysam.data.project_meta import PROJECT_JSON

    src_path = Path(args.project)
    if (src_path / PROJECT_JSON).is_file():
        source = Project.open(src_path, read_only=True)  # export only reads; the annotator may hold the lock
    else:
        from napari_ultratinysam.data.readers import read_dataset

        source = read_dataset(src_path)
    summary = export_dataset(source, args.out, ratios=args.ratios, void_index=args.void_index,
                             image_format=args.image_format, seed=args.seed, overwrite=args.overwrite,
                             progress=not args.quiet, format=args.export_format)
    print(summary)
    return 0
