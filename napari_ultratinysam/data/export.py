"""Dataset export: the CamVid-style layout (with instance maps) here, COCO and YOLO in export_formats; every
export is staged in a folder next to the output and swapped into place.

CamVid-style layout of ``out_dir``::

    SPLIT/NAME.png|jpg        images (name kept)
    SPLITannot/NAME.png       uint8 class index per pixel, ``void_index`` (255 by default) where there is no object
    SPLITinst/NAME.png        uint16 instance ids (0 = background)
    SPLIT.txt                 SegNet lists: "SPLIT/NAME.png SPLITannot/NAME.png"
    class_dict.csv            name,r,g,b (row k = class k, then the void row)
    dataset.json              classes, colours, void index, per-image split/size/counts, per-split counts, version

Split of an image = a hash of its name (and ``seed``) against the cumulative ratios, so adding images never moves
the old ones. Re-exporting adds or replaces images and keeps the rest.

Safety: every export is written by ``staging.staged_dir`` (atomic swap, fsync, recovery after a kill); the paths in
an existing ``dataset.json`` are validated before anything is read or deleted through them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from napari_ultratinysam.core.io import atomic_write_json
from napari_ultratinysam.data.readers._common import Color, Dataset, default_colors
from napari_ultratinysam.data.readers.ours import DATASET_JSON, FORMAT_TAG, annot_dir, inst_dir, load_meta
from napari_ultratinysam.data.staging import recover_staged, staged_dir
from napari_ultratinysam.data.types import AnnotatedImage

VOID_NAME = "Unlabelled"
SPLITS = ("train", "val", "test")
DEFAULT_VOID = 255
EXPORT_FORMATS = ("camvid", "coco", "yolo")


@dataclass
class ExportSummary:
    """What an export did."""

    out_dir: str
    images_per_split: dict[str, int]
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped_empty: list[str] = field(default_factory=list)
    objects_written: int = 0
    overlaps: dict[str, int] = field(default_factory=dict)
    format: str = "camvid"

    @property
    def written(self) -> int:
        return len(self.added) + len(self.replaced)

    def __str__(self) -> str:
        per_split = ", ".join(f"{s} {n}" for s, n in self.images_per_split.items())
        what = "" if self.format == "camvid" else f" as {self.format.upper()}"
        lines = [f"exported {self.written} images ({len(self.added)} new, {len(self.replaced)} replaced, "
                 f"{self.objects_written} objects){what} to {self.out_dir}", f"dataset now holds: {per_split}"]
        if self.skipped_empty:
            lines.append(f"skipped {len(self.skipped_empty)} images without objects")
        if self.overlaps:
            lines.append(f"overlaps resolved by commit order (later wins) in {len(self.overlaps)} images, "
                         f"{sum(self.overlaps.values())} pixels")
        return "\n".join(lines)


# ---------------------------------------------------------------- files


def write_png(path: Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Write a PNG as a new file (unlinking any hard link first); uint16 arrays become 16-bit grayscale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=compress_level)


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(rgb).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(rgb).save(path, format="PNG")


# ---------------------------------------------------------------- splits and maps


def assign_split(name: str, ratios: Sequence[float], splits: Sequence[str] = SPLITS, seed: int = 0) -> str:
    """Deterministic split of ``name``: sha256(seed:name) as a number in [0, 1) against the cumulative ratios."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2.0 ** 64
    total = float(sum(ratios))
    acc = 0.0
    for s, r in zip(splits, ratios):
        acc += r / total
        if u < acc:
            return s
    return [s for s, r in zip(splits, ratios) if r > 0][-1]


def parse_ratios(ratios: Sequence[float] | str, splits: Sequence[str] = SPLITS) -> tuple[float, ...]:
    """'0.8,0.1,0.1' or a sequence -> a tuple of one non-negative ratio per split (sum > 0)."""
    try:
        vals = tuple(float(r) for r in (ratios.split(",") if isinstance(ratios, str) else ratios))
    except ValueError:
        raise ValueError(f"ratios: expected numbers like 0.8,0.1,0.1, got {ratios!r}") from None
    if len(vals) != len(splits) or any(v < 0 or not np.isfinite(v) for v in vals) or sum(vals) <= 0:
        raise ValueError(f"ratios: expected {len(splits)} non-negative numbers with a positive sum "
                         f"({'/'.join(splits)}), got {ratios!r}")
    return vals


def safe_name(name: str) -> str:
    """Image name usable in SegNet lists (no whitespace or path separators)."""
    out = re.sub(r"[\s/\\]+", "_", name.strip())
    if not out or out.startswith("."):
        raise ValueError(f"image name {name!r} cannot be used as a file name")
    return out


def maps_for(item: AnnotatedImage, num_classes: int, void_index: int
             ) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """(class map uint8, instance map uint16, overlap pixels, classes of the objects left visible).

    Later objects win where they overlap."""
    h, w = item.image.shape[:2]
    ids = item.extra.get("instance_ids")
    if ids is None or len(ids) != item.num_objects:
        ids = list(range(1, item.num_objects + 1))
    if any(not 0 < int(i) < 65536 for i in ids):
        raise ValueError(f"{item.source or item.name}: instance ids must be in 1..65535")
    annot = np.full((h, w), void_index, dtype=np.uint8)
    inst = np.zeros((h, w), dtype=np.uint16)
    for m, c, i in zip(item.masks, item.class_ids, ids):
        if c >= num_classes:
            raise ValueError(f"{item.source or item.name}: unknown class {int(c)} (classes 0..{num_classes - 1})")
        inst[m] = int(i)
        annot[m] = int(c) if c >= 0 else void_index
    covered = int(item.masks.reshape(item.num_objects, -1).sum()) if item.num_objects else 0
    overlap = int(item.extra.get("overlap_pixels", covered - int((inst > 0).sum())))
    visible = set(np.unique(inst).tolist())
    return annot, inst, overlap, [int(c) for c, i in zip(item.class_ids, ids) if int(i) in visible]


# ---------------------------------------------------------------- sources


@dataclass
class _Source:
    items: Iterable[AnnotatedImage]
    classes: list[str]
    colors: list[Color]
    description: str
    skipped: list[str]


def _from_project(project, include_empty: bool) -> _Source:
    idx = [i for i in range(len(project)) if include_empty or project.is_annotated(i)]
    chosen = set(idx)
    skipped = [project.names[i] for i in range(len(project)) if i not in chosen]
    return _Source((project.annotated_image(i) for i in idx), list(project.classes), list(project.colors),
                   str(project.folder), skipped)


def _from_items(items, classes: Sequence[str] | None, colors: Sequence[Color] | None) -> _Source:
    cls = list(classes) if classes is not None else getattr(items, "classes", None)
    col = list(colors) if colors is not None else getattr(items, "colors", None)
    if cls is None and isinstance(items, Dataset):
        cls = []  # readers without classes give class -1 (void in the class map)
    if cls is None:
        items = list(items)
        top = max((int(c) for it in items for c in it.class_ids), default=-1)
        cls = [f"class_{k}" for k in range(top + 1)]
    col = list(col) if col is not None and len(col) == len(cls) else default_colors(len(cls))
    return _Source(items, list(cls), [tuple(int(v) for v in c) for c in col], str(getattr(items, "root", "")) or
                   "annotated images", [])


def _resolve_source(source, classes, colors, include_empty: bool) -> _Source:
    from napari_ultratinysam.data.project import Project

    if isinstance(source, Project):
        src = _from_project(source, include_empty)
        if classes is not None:
            src.classes = list(classes)
        if colors is not None:
            src.colors = [tuple(c) for c in colors]
        return src
    return _from_items(source, classes, colors)


# ---------------------------------------------------------------- metadata


def existing_export(out_dir: Path) -> str | None:
    """Format of this tool's export in ``out_dir`` ('camvid', 'coco', 'yolo'); None when absent or empty.

    Anything else in a non-empty folder is refused: an export replaces only what an export wrote."""
    if not os.path.lexists(out_dir):
        return None
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if (out_dir / DATASET_JSON).is_file():
        return "camvid"
    from napari_ultratinysam.data.export_formats import detect_export

    kind = detect_export(out_dir)
    if kind is not None:
        return kind
    if any(out_dir.iterdir()):
        raise ValueError(f"{out_dir}: folder is not empty and holds no {DATASET_JSON} (nor a COCO / YOLO export "
                         f"of this tool); refusing to write there")
    return None


def _check_void(void_index, num_classes: int) -> int:
    if isinstance(void_index, bool) or not isinstance(void_index, (int, np.integer)) or \
            not num_classes <= int(void_index) <= 255:
        raise ValueError(f"void_index: {void_index} must be in {num_classes}..255 (not a class index)")
    return int(void_index)


def _camvid_meta(out_dir: Path, classes: list[str], void_index: int | None) -> tuple[dict, int]:
    """(previous dataset.json or {}, the void index to use). The void index defaults to the existing dataset's
    when it is still valid, else DEFAULT_VOID; classes may be appended (old class maps stay valid)."""
    meta = load_meta(out_dir) if (out_dir / DATASET_JSON).is_file() else {}
    if void_index is None:
        old_void = meta.get("void_index")
        void_index = old_void if old_void is not None and old_void >= len(classes) else DEFAULT_VOID
    void_index = _check_void(void_index, len(classes))
    if meta:
        old = meta["classes"]
        if classes[:len(old)] != old or meta["void_index"] != void_index:
            why = (f"void index {meta['void_index']}, now a class index" if meta["void_index"] < len(classes)
                   else f"{len(old)} classes, void {meta['void_index']}")
            raise ValueError(f"{out_dir / DATASET_JSON}: the existing dataset has other classes or void index "
                             f"({why}); export elsewhere or pass overwrite=True")
    return meta, void_index


def _remove_entry(stage: Path, name: str, entry: dict) -> None:
    split = entry["split"]
    root = stage.resolve()
    for p in (stage / entry["file"], stage / annot_dir(split) / f"{name}.png", stage / inst_dir(split) / f"{name}.png"):
        # load_meta checked the names and paths; this keeps an unlink inside the stage whatever the caller passed
        if p.resolve().is_relative_to(root) and p.resolve() != root:
            p.unlink(missing_ok=True)


def _write_lists(stage: Path, images: dict[str, dict], splits: Sequence[str]) -> None:
    for s in splits:
        names = sorted(n for n, e in images.items() if e["split"] == s)
        text = "".join(f"{images[n]['file']} {annot_dir(s)}/{n}.png\n" for n in names)
        (stage / f"{s}.txt").unlink(missing_ok=True)
        (stage / f"{s}.txt").write_text(text, encoding="utf-8")


def _write_class_dict(stage: Path, classes: list[str], colors: list[Color], void_index: int) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["name", "r", "g", "b"])
    for name, c in zip(classes, colors):
        wr.writerow([name, *c])
    wr.writerow([VOID_NAME, 0, 0, 0])
    (stage / "class_dict.csv").unlink(missing_ok=True)
    (stage / "class_dict.csv").write_text(buf.getvalue(), encoding="utf-8")


def _split_stats(images: dict[str, dict], splits: Sequence[str], classes: list[str]) -> dict[str, dict]:
    stats = {}
    for s in splits:
        entries = [e for e in images.values() if e["split"] == s]
        counts = {c: sum(e["class_counts"].get(c, 0) for e in entries) for c in classes}
        stats[s] = {"images": len(entries), "objects": sum(e["objects"] for e in entries),
                    "class_counts": {c: n for c, n in counts.items() if n}}
    return stats


# ---------------------------------------------------------------- export


def export_dataset(source, out_dir: str | Path, ratios: Sequence[float] | str = (0.8, 0.1, 0.1),
                   void_index: int | None = None, *, classes: Sequence[str] | None = None,
                   colors: Sequence[Color] | None = None, image_format: str = "png", seed: int = 0,
                   splits: Sequence[str] = SPLITS, include_empty: bool = False, overwrite: bool = False,
                   progress: bool = False, format: str = "camvid") -> ExportSummary:
    """Export a Project (its annotated images) or AnnotatedImages/Dataset to ``out_dir``.

    ``format``: 'camvid' (the layout above), 'coco' (instances JSON per split, RLE masks) or 'yolo' (segmentation
    polygons, data.yaml); see export_formats. A CamVid re-export into the same folder adds or replaces images by
    name and keeps the others (``overwrite`` starts from scratch); COCO and YOLO exports are written whole.
    ``void_index`` (CamVid only) defaults to the existing dataset's, else 255. Written in a staged folder swapped
    in atomically, so a failure or a kill leaves the previous export intact.
    """

    from napari_ultratinysam._version import __version__

    out_dir = Path(out_dir)
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    ratio_t = parse_ratios(ratios, splits)
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format: expected 'png' or 'jpg', got {image_format!r}")
    src = _resolve_source(source, classes, colors, include_empty)
    if len(src.classes) > 255:
        raise ValueError(f"classes: at most 255 classes fit a uint8 class map, got {len(src.classes)}")
    recover_staged(out_dir)  # a killed export may have left the old one aside: put it back before looking
    kind = existing_export(out_dir)
    if kind is not None and kind != format and not overwrite:
        raise ValueError(f"{out_dir}: holds a {kind} export; export the {format} one elsewhere or pass "
                         f"overwrite=True (--overwrite)")
    if format != "camvid":
        return _export_whole(format, src, out_dir, ratio_t, splits, seed, image_format, include_empty, progress)
    if kind == "camvid" and not overwrite:
        meta, void_index = _camvid_meta(out_dir, src.classes, void_index)
    else:
        meta, void_index = {}, _check_void(DEFAULT_VOID if void_index is None else void_index, len(src.classes))
    images: dict[str, dict] = dict(meta.get("images", {}))
    summary = ExportSummary(str(out_dir), {}, skipped_empty=list(src.skipped))
    with staged_dir(out_dir, keep_existing=not overwrite) as stage:
        for item, name in _items_to_write(src, summary, include_empty, "export", progress):
            if name in images:
                _remove_entry(stage, name, images[name])
                summary.replaced.append(name)
            else:
                summary.added.append(name)
            images[name] = _write_item(stage, item, name, src, void_index, ratio_t, splits, seed, image_format)
            summary.objects_written += images[name]["objects"]
            if images[name]["overlap_pixels"]:
                summary.overlaps[name] = images[name]["overlap_pixels"]
        _write_lists(stage, images, splits)
        _write_class_dict(stage, src.classes, src.colors, void_index)
        stats = _split_stats(images, splits, src.classes)
        atomic_write_json(stage / DATASET_JSON, durable=False, obj={
            "format": FORMAT_TAG, "version": 1, "tool": "napari-ultratinysam", "tool_version": __version__,
            "source": src.description, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": src.classes, "colors": [list(c) for c in src.colors], "void_index": void_index,
            "void_name": VOID_NAME, "ratios": dict(zip(splits, ratio_t)), "seed": seed, "splits": stats,
            "images": dict(sorted(images.items())),
        })
    summary.images_per_split = {s: stats[s]["images"] for s in splits}
    return summary


def _export_whole(fmt: str, src: _Source, out_dir: Path, ratios: Sequence[float], splits: Sequence[str], seed: int,
                  image_format: str, include_empty: bool, progress: bool) -> ExportSummary:
    """Write ``src`` as a COCO or YOLO export (export_formats' writers) to ``out_dir``, staged and swapped in
    whole."""

    from napari_ultratinysam.data.export_formats import format_writer

    previous: set[str] = set()
    if existing_export(out_dir) == fmt and (out_dir / "images").is_dir():
        previous = {p.stem for p in (out_dir / "images").glob("*/*")}
    summary = ExportSummary(str(out_dir), {}, skipped_empty=list(src.skipped), format=fmt)
    counts = {s: 0 for s in splits}
    with staged_dir(out_dir, keep_existing=False) as stage:
        writer = format_writer(fmt, stage, src.classes, image_format, src.description, _write_image)
        for item, name in _items_to_write(src, summary, include_empty, f"export {fmt}", progress):
            split = assign_split(name, ratios, splits, seed)
            summary.objects_written += writer.add(item, name, split)
            counts[split] += 1
            (summary.replaced if name in previous else summary.added).append(name)
        # only splits that hold images: readers refuse an empty image folder (an empty export keeps one, as a marker)
        used = [s for s in splits if counts[s]] or [next(s for s, r in zip(splits, ratios) if r > 0)]
        writer.finish(used)
    summary.images_per_split = counts
    return summary


def _items_to_write(src: _Source, summary: ExportSummary, include_empty: bool, desc: str, progress: bool):
    """(item, file name) of each image to export, in order: names made safe and unique (one line names the image
    whose name collides), images without objects left out (and listed in ``summary``) unless ``include_empty``."""
    from tqdm import tqdm

    seen: set[str] = set()
    for item in tqdm(src.items, desc=desc, unit="img", disable=not progress):
        name = safe_name(item.name)
        if name in seen:
            raise ValueError(f"{item.source or item.name}: two images export to the same name {name!r}")
        seen.add(name)
        if item.num_objects == 0 and not include_empty:
            summary.skipped_empty.append(name)
            continue
        yield item, name


def _write_item(stage: Path, item: AnnotatedImage, name: str, src: _Source, void_index: int,
                ratios: Sequence[float], splits: Sequence[str], seed: int, image_format: str) -> dict:
    split = assign_split(name, ratios, splits, seed)
    annot, inst, overlap, kept = maps_for(item, len(src.classes), void_index)
    file = f"{split}/{name}.{image_format}"
    _write_image(stage / file, item.image)
    write_png(stage / annot_dir(split) / f"{name}.png", annot)
    write_png(stage / inst_dir(split) / f"{name}.png", inst)
    counts: dict[str, int] = {}
    for c in kept:
        key = src.classes[c] if c >= 0 else VOID_NAME
        counts[key] = counts.get(key, 0) + 1
    return {"split": split, "file": file, "size": [int(v) for v in item.image.shape[:2]],
            "objects": len(kept), "class_counts": counts,
            "overlap_pixels": overlap, "source": item.source or item.name}
