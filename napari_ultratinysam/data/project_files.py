"""One image's annotation in a project: the in-memory record and its edits, and its files ``annotations/NAME.png``
and the sidecar ``annotations/NAME.json``.

The PNG is a uint16 instance-id map whose text chunk carries the annotation record (instance -> class, commit
order, areas, overlaps, next id, generation); it is written first and is authoritative. The sidecar is the same
record as readable JSON, rebuilt from the PNG when stale. Records are untrusted input: validated on every read, one
ValueError naming the file and the field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from napari_ultratinysam.core.io import atomic_path, atomic_write_json
from napari_ultratinysam.data.project_meta import ANNOTATIONS, PROJECT_JSON, is_int, name_problem

MAX_ID = 65535  # instance ids are uint16
_PNG_KEY = "utsam-annotation"


@dataclass
class Annotation:
    """In-memory state of one image's annotation (the on-disk record plus the id map)."""

    id_map: np.ndarray
    classes: dict[int, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    areas: dict[int, int] = field(default_factory=dict)
    overlaps: list[dict] = field(default_factory=list)
    next_id: int = 1
    generation: int = 0
    on_disk: bool = False  # read from a PNG (whose generation is then ``generation``), not a fresh empty map

    def record(self, name: str) -> dict:
        return {"version": 1, "image": name, "size": list(self.id_map.shape), "generation": self.generation,
                "next_id": self.next_id, "order": self.order,
                "instances": {str(k): v for k, v in sorted(self.classes.items())},
                "areas": {str(k): v for k, v in sorted(self.areas.items())}, "overlaps": self.overlaps}

    @classmethod
    def from_record(cls, id_map: np.ndarray, rec: dict) -> "Annotation":
        return cls(id_map=id_map, classes={int(k): int(v) for k, v in rec["instances"].items()},
                   order=[int(i) for i in rec["order"]], areas={int(k): int(v) for k, v in rec["areas"].items()},
                   overlaps=list(rec.get("overlaps", [])), next_id=int(rec["next_id"]),
                   generation=int(rec.get("generation", 0)), on_disk=True)

    def add(self, mask: np.ndarray, class_index: int) -> int:
        """Paint a new object over the boolean ``mask``; it wins where it overlaps earlier ones (overlap pixels
        recorded). Returns its id; the caller checked the mask, the class and that ``next_id`` fits uint16."""
        new = self.next_id
        under = np.bincount(self.id_map[mask])
        for old in np.flatnonzero(under[1:]) + 1:
            old, n = int(old), int(under[old])
            self.overlaps.append({"instance": new, "over": old, "pixels": n})
            self.areas[old] = self.areas.get(old, n) - n
            if self.areas[old] <= 0:  # fully covered: the earlier object is gone
                self._forget(old)
        self.id_map[mask] = new
        self.classes[new], self.areas[new] = class_index, int(mask.sum())
        self.order.append(new)
        self.next_id = new + 1
        return new

    def remove(self, inst: int) -> None:
        """Delete object ``inst``: its pixels become background, its overlaps are dropped."""
        self.id_map[self.id_map == inst] = 0
        self._forget(int(inst))
        self.overlaps = [o for o in self.overlaps if inst not in (o["instance"], o["over"])]

    def _forget(self, inst: int) -> None:
        self.classes.pop(inst, None)
        self.areas.pop(inst, None)
        if inst in self.order:
            self.order.remove(inst)


def check_record(rec, png: Path, shape: tuple[int, int], n_classes: int) -> None:
    """Schema of an annotation record (PNG text chunk); one ValueError naming the file and the field."""

    def bad(fld: str, why: str):
        raise ValueError(f"{png}: annotation record field '{fld}' {why}")

    def is_id(v) -> bool:
        return is_int(v) and 1 <= v <= MAX_ID

    def id_key(k) -> bool:
        return isinstance(k, str) and k.isdigit() and is_id(int(k))

    if not isinstance(rec, dict):
        raise ValueError(f"{png}: annotation record is not a JSON object")
    if rec.get("size") is not None and rec["size"] != list(shape):
        bad("size", f"is {rec['size']}, the map is {list(shape)}")
    for fld in ("generation", "next_id"):
        if not is_int(rec.get(fld, 0)) or rec.get(fld, 0) < 0:
            bad(fld, "must be a non-negative integer")
    if "next_id" not in rec or not 1 <= rec["next_id"] <= MAX_ID + 1:
        bad("next_id", f"must be in 1..{MAX_ID + 1}")
    inst = rec.get("instances")
    if not isinstance(inst, dict) or not all(id_key(k) and is_int(v) and -1 <= v < n_classes
                                             for k, v in inst.items()):
        bad("instances", f"must map instance ids to class indices in -1..{n_classes - 1}")
    areas = rec.get("areas")
    if not isinstance(areas, dict) or not all(id_key(k) and is_int(v) and v >= 0 for k, v in areas.items()):
        bad("areas", "must map instance ids to pixel counts")
    order = rec.get("order")
    if not isinstance(order, list) or not all(is_id(v) for v in order):
        bad("order", "must be a list of instance ids")
    overlaps = rec.get("overlaps", [])
    if not isinstance(overlaps, list) or not all(
            isinstance(o, dict) and is_id(o.get("instance")) and is_id(o.get("over")) and is_int(o.get("pixels"))
            for o in overlaps):
        bad("overlaps", "must be a list of {instance, over, pixels}")


def annotation_file(folder: Path, name: str, ext: str) -> Path:
    """``folder/annotations/NAME.ext``; the name is checked again here because this path is written to."""
    if name_problem(name):
        raise ValueError(f"{folder / PROJECT_JSON}: image name {name!r} {name_problem(name)}")
    return folder / ANNOTATIONS / f"{name}.{ext}"


def read_annotation(png: Path, size: tuple[int, int], n_classes: int, pixels: bool,
                    verify: bool = False) -> tuple[np.ndarray | None, dict]:
    """(id map or None, validated record) of the PNG of an image of ``size`` (H, W); ``verify`` decodes the
    pixels to check them. Without pixels only the header chunks are read (the record is written before the image
    data). A missing file raises FileNotFoundError, a damaged one a one-line ValueError."""
    try:
        with Image.open(png) as im:
            if im.format != "PNG":
                raise ValueError(f"not a PNG ({im.format})")
            text = im.info.get(_PNG_KEY)
            if pixels or verify or text is None:
                im.load()
                text = im.text.get(_PNG_KEY)
            shape = (im.size[1], im.size[0])
            id_map = np.array(im, dtype=np.uint16) if pixels else None
            if (pixels or verify) and im.mode not in ("I;16", "I", "L", "I;16B"):
                raise ValueError(f"mode {im.mode} is not an instance map")
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{png}: cannot read annotation ({type(e).__name__}: {e})") from None
    if text is None:
        raise ValueError(f"{png}: annotation record missing from the PNG")
    try:
        rec = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{png}: annotation record is not JSON ({e})") from None
    if shape != size:
        raise ValueError(f"{png}: size mismatch, map is {shape} but the image is {size}")
    check_record(rec, png, shape, n_classes)
    return id_map, rec


def write_annotation_png(png: Path, id_map: np.ndarray, rec: dict) -> None:
    """The map with its record in a text chunk, atomically and fsynced (fast compression: it is saved per edit)."""
    info = PngInfo()
    info.add_itxt(_PNG_KEY, json.dumps(rec, separators=(",", ":")))
    with atomic_path(png) as tmp:
        Image.fromarray(id_map).save(tmp, format="PNG", pnginfo=info, compress_level=1)


def scan_annotations(folder: Path, names: Sequence[str], sizes: Sequence[tuple[int, int]], n_classes: int,
                     repair: bool) -> tuple[dict[int, int], list[tuple[int, str]]]:
    """({image index: object count} of the readable annotations, [(image index, why)] of the damaged ones, in
    order). A missing PNG whose sidecar lists objects is damaged. ``repair`` rewrites stale or missing sidecars
    (writable projects only: the PNG is authoritative anyway)."""
    try:
        present = set(os.listdir(folder / ANNOTATIONS))
    except OSError:
        present = set()
    counts: dict[int, int] = {}
    damaged: list[tuple[int, str]] = []
    for i, name in enumerate(names):
        png, side = annotation_file(folder, name, "png"), annotation_file(folder, name, "json")
        if f"{name}.png" not in present:
            if f"{name}.json" in present:
                try:
                    lost = len(json.loads(side.read_text(encoding="utf-8")).get("instances") or {})
                except (OSError, ValueError, AttributeError):
                    lost = 0
                if lost:
                    damaged.append((i, f"{png}: missing, but {side.name} lists {lost} objects"))
            continue
        try:
            rec = read_annotation(png, sizes[i], n_classes, pixels=False, verify=True)[1]
        except (OSError, ValueError) as e:
            damaged.append((i, str(e)))
            continue
        counts[i] = len(rec["instances"])
        if not repair:
            continue
        try:
            ok = json.loads(side.read_text(encoding="utf-8")).get("generation") == rec["generation"]
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            atomic_write_json(side, rec)
    return counts, damaged


def remove_stale_temps(folder: Path) -> None:
    """Temporary files of writes killed half-way (``.NAME.<random>.tmp``); only safe under the project's lock."""
    for d in (folder, folder / ANNOTATIONS):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass
