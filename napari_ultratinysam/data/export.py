"""CamVid-style dataset writer (with instance maps), staged in a temporary folder and swapped into place.

Layout of ``out_dir``::

    SPLIT/NAME.png|jpg        images (name kept)
    SPLITannot/NAME.png       uint8 class index per pixel, ``void_index`` where there is no object
    SPLITinst/NAME.png        uint16 instance ids (0 = background)
    SPLIT.txt                 SegNet lists: "SPLIT/NAME.png SPLITannot/NAME.png"
    class_dict.csv            name,r,g,b (row k = class k; the void row last when void_index == len(classes))
    dataset.json              classes, colours, void index, per-image split/size/counts, per-split counts, version

Split of an image = a hash of its name (and ``seed``) against the cumulative ratios, so adding images never moves
the old ones. Re-exporting adds or replaces images and keeps the rest.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..io_utils import atomic_write_json
from .readers._common import Color, Dataset, default_colors
from .readers.ours import DATASET_JSON, FORMAT_TAG, annot_dir, inst_dir, load_meta
from .types import AnnotatedImage

VOID_NAME = "Unlabelled"
SPLITS = ("train", "val", "test")


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

    @property
    def written(self) -> int:
        return len(self.added) + len(self.replaced)

    def __str__(self) -> str:
        per_split = ", ".join(f"{s} {n}" for s, n in self.images_per_split.items())
        lines = [f"exported {self.written} images ({len(self.added)} new, {len(self.replaced)} replaced, "
                 f"{self.objects_written} objects) to {self.out_dir}", f"dataset now holds: {per_split}"]
        if self.skipped_empty:
            lines.append(f"skipped {len(self.skipped_empty)} images without objects")
        if self.overlaps:
            lines.append(f"overlaps resolved by commit order (later wins) in {len(self.overlaps)} images, "
                         f"{sum(self.overlaps.values())} pixels")
        return "\n".join(lines)


# ---------------------------------------------------------------- staging


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_into_place(stage: Path, final: Path) -> None:
    if not final.exists():
        os.replace(stage, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / "d")
    try:
        os.replace(stage, final)
    except BaseException:
        os.replace(old / "d", final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | Path, keep_existing: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``final`` (pre-filled with hard links to its files when ``keep_existing``).

    On success the folder replaces ``final`` by renames; on any exception it is removed and ``final`` is untouched.
    Files in the stage may be hard links: replace them (unlink first), never write into them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        if keep_existing and final.is_dir():
            shutil.copytree(final, stage, copy_function=_link_or_copy, dirs_exist_ok=True)
        yield stage
        _swap_into_place(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
    from .project import Project

    if isinstance(source, Project):
        src = _from_project(source, include_empty)
        if classes is not None:
            src.classes = list(classes)
        if colors is not None:
            src.colors = [tuple(c) for c in colors]
        return src
    return _from_items(source, classes, colors)


# ---------------------------------------------------------------- metadata


def _existing_meta(out_dir: Path, classes: list[str], void_index: int, overwrite: bool) -> dict:
    if not out_dir.exists():
        return {}
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if not (out_dir / DATASET_JSON).is_file():
        if any(out_dir.iterdir()):
            raise ValueError(f"{out_dir}: folder is not empty and holds no {DATASET_JSON}; refusing to write there")
        return {}
    meta = load_meta(out_dir)
    if overwrite:
        return {}
    if meta["classes"] != classes or int(meta["void_index"]) != void_index:
        raise ValueError(f"{out_dir / DATASET_JSON}: the existing dataset has other classes or void index "
                         f"({len(meta['classes'])} classes, void {meta['void_index']}); export elsewhere or "
                         f"pass overwrite=True")
    return meta


def _remove_entry(stage: Path, name: str, entry: dict) -> None:
    split = entry["split"]
    for p in (stage / entry["file"], stage / annot_dir(split) / f"{name}.png", stage / inst_dir(split) / f"{name}.png"):
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
                   void_index: int = 11, *, classes: Sequence[str] | None = None,
                   colors: Sequence[Color] | None = None, image_format: str = "png", seed: int = 0,
                   splits: Sequence[str] = SPLITS, include_empty: bool = False, overwrite: bool = False,
                   progress: bool = False) -> ExportSummary:
    """Export a Project (its annotated images) or AnnotatedImages/Dataset to a CamVid-style folder.

    Re-exporting into the same folder adds or replaces images by name and keeps the others; ``overwrite``
    starts from scratch. Written in a staged copy, so a failure leaves the previous dataset intact.
    """
    from tqdm import tqdm

    from .. import __version__

    out_dir = Path(out_dir)
    ratio_t = parse_ratios(ratios, splits)
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format: expected 'png' or 'jpg', got {image_format!r}")
    src = _resolve_source(source, classes, colors, include_empty)
    if len(src.classes) > 255:
        raise ValueError(f"classes: at most 255 classes fit a uint8 class map, got {len(src.classes)}")
    if not 0 <= void_index <= 255 or void_index < len(src.classes):
        raise ValueError(f"void_index: {void_index} must be in {len(src.classes)}..255 (not a class index)")
    meta = _existing_meta(out_dir, src.classes, void_index, overwrite)
    images: dict[str, dict] = dict(meta.get("images", {}))
    summary = ExportSummary(str(out_dir), {}, skipped_empty=list(src.skipped))
    seen: set[str] = set()
    with staged_dir(out_dir, keep_existing=not overwrite) as stage:
        for item in tqdm(src.items, desc="export", unit="img", disable=not progress):
            name = safe_name(item.name)
            if name in seen:
                raise ValueError(f"{item.source or item.name}: two images export to the same name {name!r}")
            seen.add(name)
            if item.num_objects == 0 and not include_empty:
                summary.skipped_empty.append(name)
                continue
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
        atomic_write_json(stage / DATASET_JSON, {
            "format": FORMAT_TAG, "version": 1, "tool": "napari-ultratinysam", "tool_version": __version__,
            "source": src.description, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": src.classes, "colors": [list(c) for c in src.colors], "void_index": void_index,
            "void_name": VOID_NAME, "ratios": dict(zip(splits, ratio_t)), "seed": seed, "splits": stats,
            "images": dict(sorted(images.items())),
        })
    summary.images_per_split = {s: stats[s]["images"] for s in splits}
    return summary


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
