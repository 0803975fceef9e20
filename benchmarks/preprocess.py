"""Preprocessing throughput (images/s, reading + letterboxing + writing) and shard size per 1000 images on real
data: CamVid train (SegNet layout, instances = connected components) and the COCO 2017 subsets train split.

    .venv/bin/python benchmarks/preprocess.py [--datasets DIR] [--limit N] [--threads 1]

Prints a Markdown table and writes it into the `## Preprocessing` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

SETS = [("camvid", "camvid", "train"), ("coco_train2017_subsets", "coco", "train")]


def run(root: Path, fmt: str, split: str, codec: str, limit: int | None) -> dict:
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.data.shards import preprocess

    ds = read_dataset(root, format=fmt, split=split)
    data = [ds[i] for i in range(min(limit, len(ds)))] if limit else ds
    with tempfile.TemporaryDirectory(prefix="utsam-bench-") as out:
        cpu0 = time.process_time()
        s = preprocess(data, out, size=128, min_area=150, codec=codec, progress=False)
        cpu = time.process_time() - cpu0
    return {"set": f"{root.name} {split}", "codec": codec, "images": s.images_in, "kept": s.images_kept,
            "objects": s.objects_kept, "dropped": s.objects_dropped_small, "ips": s.images_per_second,
            "ips_cpu": s.images_in / max(cpu, 1e-9),
            "mb": s.bytes / 1e6, "mb_per_1000": s.bytes / 1e6 / max(s.images_kept, 1) * 1000}


def table(rows: list[dict]) -> str:
    head = ("| dataset | codec | images read | kept | objects kept | objects < 150 px dropped | images/s (wall) | "
            "images per CPU-second | shards MB | MB per 1000 images |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['set']} | {r['codec']} | {r['images']} | {r['kept']} | {r['objects']} | {r['dropped']} | "
        f"{r['ips']:.1f} | {r['ips_cpu']:.1f} | {r['mb']:.1f} | {r['mb_per_1000']:.1f} |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = Path(__file__).resolve().parents[1]
    ap.add_argument("--datasets", default=os.environ.get("UTSAM_DATASETS", repo.parent / "shared" / "datasets"))
    ap.add_argument("--limit", type=int, default=None, help="first N images per set (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.datasets)
    rows = []
    for folder, fmt, split in SETS:
        if not (root / folder).is_dir():
            print(f"skipping {folder}: not in {root}", file=sys.stderr)
            continue
        for codec in ("jpeg", "raw"):
            rows.append(run(root / folder, fmt, split, codec, args.limit))
            print(f"{rows[-1]['set']} {codec}: {rows[-1]['ips']:.1f} images/s", file=sys.stderr)
    if not rows:
        print(f"no datasets found in {root}", file=sys.stderr)
        return 1
    body = (f"`benchmarks/preprocess.py` (`utsam preprocess` defaults: size 128, min_area 150; torch threads "
            f"{args.threads}). Throughput counts everything: decoding the source image and masks, connected "
            f"components / polygon rasterisation, letterboxing, encoding, compressing and writing the shards. "
            f"Shard size per 1000 kept images; `jpeg` (default) stores each 128x128 image as JPEG q95 4:4:4, "
            f"`raw` as uint8 arrays; masks are bit-packed and zip-compressed in both. Wall-clock figures depend on "
            f"the machine's load (shared cores); images per CPU-second is the steadier figure.\n\n"
            f"Machine: {machine_line()}\n\n{table(rows)}")
    print(table(rows))
    if not args.no_write:
        write_section("Preprocessing", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
