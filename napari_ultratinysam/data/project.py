"""Annotation project: a folder with ``project.json`` (images, classes, cursor) and one instance map per image.

Per image ``annotations/NAME.png`` is a uint16 instance-id map whose PNG text chunk carries the annotation record
(instance -> class, commit order, overlaps, next id, generation); ``annotations/NAME.json`` is the same record as
a readable sidecar. The PNG is written first and is authoritative: a crash between the two writes is repaired on
open. Every change is saved at once with atomic renames, so reopening resumes exactly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..io_utils import atomic_path, atomic_write_json, read_tagged_json
from .readers._common import Color, default_colors, image_size, list_images, read_rgb
from .readers.camvid import CAMVID_CLASSES, CAMVID_COLORS
from .types import AnnotatedImage

PROJECT_JSON = "project.json"
ANNOTATIONS = "annotations"
PROJECT_FORMAT = "napari-ultratinysam/project"
_PNG_KEY = "utsam-annotation"
MAX_ID = 65535


@dataclass
class _Annotation:
    """In-memory state of one image's annotation (the on-disk record plus the id map)."""

    id_map: np.ndarray
    classes: dict[int, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    areas: dict[int, int] = field(default_factory=dict)
    overlaps: list[dict] = field(default_factory=list)
    next_id: int = 1
    generation: int = 0

    def record(self, name: str) -> dict:
        return {"version": 1, "image": name, "size": list(self.id_map.shape), "generation": self.generation,
                "next_id": self.next_id, "order": self.order,
                "instances": {str(k): v for k, v in sorted(self.classes.items())},
                "areas": {str(k): v for k, v in sorted(self.areas.items())}, "overlaps": self.overlaps}

    @classmethod
    def from_record(cls, id_map: np.ndarray, rec: dict) -> "_Annotation":
        return cls(id_map=id_map, classes={int(k): int(v) for k, v in rec["instances"].items()},
                   order=[int(i) for i in rec["order"]], areas={int(k): int(v) for k, v in rec["areas"].items()},
                   overlaps=list(rec.get("overlaps", [])), next_id=int(rec["next_id"]),
                   generation=int(rec.get("generation", 0)))


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names, seen = [], set()
    for p in paths:
        name, k = p.stem, 2
        while name in seen:
            name, k = f"{p.stem}_{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Project:
    """An annotation project on disk. Build with :meth:`create` or :meth:`open`; every change is autosaved."""

    def __init__(self, folder: Path, state: dict) -> None:
        self.folder = Path(folder)
        self._state = state
        self._counts: dict[int, int] = {}
        self._cached: tuple[int, _Annotation] | None = None

    # ------------------------------------------------------------ create / open

    @classmethod
    def create(cls, folder: str | Path, images: str | Path | Sequence[str | Path],
               classes: Sequence[str] | None = None, colors: Sequence[Color] | None = None) -> "Project":
        """New project in ``folder`` from a folder of images or a list of image paths (default: CamVid classes)."""
        folder = Path(folder)
        if (folder / PROJECT_JSON).exists():
            raise ValueError(f"{folder / PROJECT_JSON}: a project already exists here; use Project.open")
        paths = list_images(Path(images)) if isinstance(images, (str, Path)) else [Path(p) for p in images]
        if not paths:
            raise ValueError(f"{folder}: no images given")
        names = _unique_names(paths)
        folder.mkdir(parents=True, exist_ok=True)
        entries = [{"name": n, "path": cls._rel(folder, p), "size": list(image_size(p))} for n, p in zip(names, paths)]
        cls_names = list(classes) if classes is not None else list(CAMVID_CLASSES)
        cls_colors = cls._colors_for(cls_names, colors, classes is None)
        from .. import __version__

        state = {"format": PROJECT_FORMAT, "version": 1, "tool_version": __version__, "created": _now(),
                 "classes": [{"name": n, "color": list(c)} for n, c in zip(cls_names, cls_colors)],
                 "images": entries, "cursor": 0}
        project = cls(folder, state)
        project._save_state()
        return project

    @classmethod
    def open(cls, folder: str | Path) -> "Project":
        """Open an existing project; annotations, classes and the current image are restored."""
        folder = Path(folder)
        state = read_tagged_json(folder / PROJECT_JSON, "format", PROJECT_FORMAT, "a napari-ultratinysam project file",
                                 "not found (not an annotation project)")
        project = cls(folder, state)
        project._scan()
        return project

    @staticmethod
    def _rel(folder: Path, p: Path) -> str:
        try:
            return os.path.relpath(p.resolve(), folder.resolve())
        except ValueError:  # another drive on Windows
            return str(p.resolve())

    @staticmethod
    def _colors_for(names: list[str], colors: Sequence[Color] | None, camvid: bool) -> list[Color]:
        if colors is not None:
            if len(colors) != len(names):
                raise ValueError(f"colors: {len(colors)} colours for {len(names)} classes")
            return [tuple(int(v) for v in c) for c in colors]
        return list(CAMVID_COLORS) if camvid else default_colors(len(names))

    def _scan(self) -> None:
        """Object counts per image from the saved records; stale or missing sidecars are rewritten."""
        for i, name in enumerate(self.names):
            png = self._png(i)
            if not png.is_file():
                continue
            rec = self._png_record(png)
            side = self._sidecar(i)
            try:
                ok = json.loads(side.read_text(encoding="utf-8")).get("generation") == rec["generation"]
            except (OSError, ValueError, AttributeError):
                ok = False
            if not ok:
                atomic_write_json(side, rec)
            self._counts[i] = len(rec["instances"])

    # ------------------------------------------------------------ images, cursor, progress

    def __len__(self) -> int:
        return len(self._state["images"])

    def __repr__(self) -> str:
        return f"Project({str(self.folder)!r}, {self.progress_text()})"

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self._state["images"]]

    def image_path(self, i: int) -> Path:
        p = Path(self._state["images"][self._index(i)]["path"])
        return p if p.is_absolute() else (self.folder / p)

    def image_size(self, i: int) -> tuple[int, int]:
        h, w = self._state["images"][self._index(i)]["size"]
        return int(h), int(w)

    def image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of image ``i``."""
        img = read_rgb(self.image_path(i))
        h, w = self.image_size(i)
        if img.shape[:2] != (h, w):
            raise ValueError(f"{self.image_path(i)}: size changed since the project was created "
                             f"({img.shape[1]}x{img.shape[0]}, expected {w}x{h})")
        return img

    @property
    def cursor(self) -> int:
        return int(self._state["cursor"])

    @cursor.setter
    def cursor(self, i: int) -> None:
        self.go_to(i)

    def go_to(self, i: int) -> int:
        """Make image ``i`` current (saved); returns it."""
        self._state["cursor"] = self._index(i)
        self._save_state()
        return self.cursor

    def next(self) -> int:
        """Move to the next image (stays at the last); returns the new index."""
        return self.go_to(min(self.cursor + 1, len(self) - 1))

    def previous(self) -> int:
        """Move to the previous image (stays at the first); returns the new index."""
        return self.go_to(max(self.cursor - 1, 0))

    def is_annotated(self, i: int) -> bool:
        return self._counts.get(self._index(i), 0) > 0

    def progress(self) -> tuple[int, int]:
        """(images with at least one object, total images)."""
        return sum(1 for n in self._counts.values() if n > 0), len(self)

    def progress_text(self) -> str:
        done, total = self.progress()
        return f"{done} / {total} annotated"

    # ------------------------------------------------------------ classes

    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self._state["classes"]]

    @property
    def colors(self) -> list[Color]:
        return [tuple(c["color"]) for c in self._state["classes"]]

    def set_classes(self, names: Sequence[str], colors: Sequence[Color] | None = None) -> None:
        """Replace the class list (saved); refused if an annotation uses an index that would disappear."""
        names = [str(n).strip() for n in names]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"classes: names must be non-empty and unique, got {names}")
        used = self._max_class_used()
        if used >= len(names):
            raise ValueError(f"classes: class index {used} is still used by an annotation; keep at least {used + 1}")
        old = dict(zip(self.classes, self.colors))
        cols = self._colors_for(names, colors, False) if colors is not None else \
            [old.get(n) or c for n, c in zip(names, default_colors(len(names)))]
        self._state["classes"] = [{"name": n, "color": list(c)} for n, c in zip(names, cols)]
        self._save_state()

    def add_class(self, name: str, color: Color | None = None) -> int:
        """Append a class (saved); returns its index."""
        colors = self.colors + [tuple(color) if color is not None else default_colors(len(self.classes) + 1)[-1]]
        self.set_classes(self.classes + [name], colors)
        return len(self.classes) - 1

    def rename_class(self, k: int, name: str) -> None:
        names = self.classes
        names[self._class_index(k)] = name
        self.set_classes(names, self.colors)

    def set_class_color(self, k: int, color: Color) -> None:
        colors = self.colors
        colors[self._class_index(k)] = tuple(int(v) for v in color)
        self.set_classes(self.classes, colors)

    def _max_class_used(self) -> int:
        used = -1
        for i in self._counts:
            rec = self._png_record(self._png(i))
            used = max([used] + [int(v) for v in rec["instances"].values()])
        return used

    def _class_index(self, k: int, allow_none: bool = False) -> int:
        k = int(k)
        if not (-1 if allow_none else 0) <= k < len(self.classes):
            raise ValueError(f"class index {k} out of range (0..{len(self.classes) - 1}"
                             + (", or -1 for none)" if allow_none else ")"))
        return k

    # ------------------------------------------------------------ annotations

    def get_annotation(self, i: int) -> tuple[np.ndarray, dict[int, int], list[int]]:
        """(id map uint16 (H, W), {instance id: class index}, commit order) of image ``i`` (copies)."""
        ann = self._load(i)
        return ann.id_map.copy(), dict(ann.classes), list(ann.order)

    def overlaps(self, i: int) -> list[dict]:
        """Overlaps resolved so far: [{'instance': later id, 'over': earlier id, 'pixels': n}, ...]."""
        return [dict(o) for o in self._load(i).overlaps]

    def set_annotation(self, i: int, id_map: np.ndarray, classes: dict[int, int]) -> None:
        """Replace image ``i``'s annotation with an id map (0 = background) and {id: class index} (saved)."""
        i = self._index(i)
        ids = np.asarray(id_map)
        if ids.shape != self.image_size(i) or ids.dtype.kind not in "ui":
            raise ValueError(f"{self.names[i]}: id map must be an integer array of shape {self.image_size(i)}, "
                             f"got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
            raise ValueError(f"{self.names[i]}: instance ids must be in 0..{MAX_ID}")
        ids = ids.astype(np.uint16)
        areas = np.bincount(ids.ravel())
        present = [int(k) for k in np.flatnonzero(areas) if k != 0]
        missing = [k for k in present if k not in classes]
        if missing:
            raise ValueError(f"{self.names[i]}: instance {missing[0]} has no class")
        cls = {k: self._class_index(classes[k], allow_none=True) for k in present}
        prev = self._load(i)
        ann = _Annotation(ids, cls, present, {k: int(areas[k]) for k in present}, [],
                          max(present, default=0) + 1, prev.generation)
        self._store(i, ann)

    def commit_object(self, i: int, mask: np.ndarray, class_index: int) -> int:
        """Add one object (saved); it wins where it overlaps earlier ones (overlap pixels recorded). Returns its id."""
        i = self._index(i)
        m = np.asarray(mask, dtype=bool)
        if m.shape != self.image_size(i):
            raise ValueError(f"{self.names[i]}: mask shape {m.shape} does not match the image {self.image_size(i)}")
        if not m.any():
            raise ValueError(f"{self.names[i]}: empty mask, nothing to commit")
        k = self._class_index(class_index, allow_none=True)
        ann = self._load(i)
        if ann.next_id > MAX_ID:
            raise ValueError(f"{self.names[i]}: too many objects (instance ids are uint16)")
        new = ann.next_id
        under = np.bincount(ann.id_map[m])
        for old in np.flatnonzero(under[1:]) + 1:
            old, n = int(old), int(under[old])
            ann.overlaps.append({"instance": new, "over": old, "pixels": n})
            ann.areas[old] -= n
            if ann.areas[old] <= 0:  # fully covered: the earlier object is gone
                self._forget(ann, old)
        ann.id_map[m] = new
        ann.classes[new], ann.areas[new] = k, int(m.sum())
        ann.order.append(new)
        ann.next_id = new + 1
        self._store(i, ann)
        return new

    def delete_object(self, i: int, instance_id: int) -> None:
        """Remove one object (saved); its pixels become background."""
        i = self._index(i)
        ann = self._load(i)
        self._check_id(i, ann, instance_id)
        ann.id_map[ann.id_map == instance_id] = 0
        self._forget(ann, int(instance_id))
        ann.overlaps = [o for o in ann.overlaps if instance_id not in (o["instance"], o["over"])]
        self._store(i, ann)

    def set_object_class(self, i: int, instance_id: int, class_index: int) -> None:
        """Change one object's class (saved)."""
        i = self._index(i)
        ann = self._load(i)
        self._check_id(i, ann, instance_id)
        ann.classes[int(instance_id)] = self._class_index(class_index, allow_none=True)
        self._store(i, ann)

    def annotated_image(self, i: int) -> AnnotatedImage:
        """Image ``i`` with its objects (ids in ``extra['instance_ids']``, overlap pixels in extra)."""
        i = self._index(i)
        ann = self._load(i)
        item = AnnotatedImage.from_id_map(self.image(i), ann.id_map, ann.classes, name=self.names[i],
                                          source=str(self.image_path(i)))
        item.extra["overlap_pixels"] = sum(int(o["pixels"]) for o in ann.overlaps)
        return item

    # ------------------------------------------------------------ storage

    @staticmethod
    def _forget(ann: _Annotation, inst: int) -> None:
        ann.classes.pop(inst, None)
        ann.areas.pop(inst, None)
        if inst in ann.order:
            ann.order.remove(inst)

    def _check_id(self, i: int, ann: _Annotation, instance_id: int) -> None:
        if int(instance_id) not in ann.classes:
            raise ValueError(f"{self.names[i]}: no object with instance id {instance_id}")

    def _index(self, i: int) -> int:
        n = len(self._state["images"])
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"image index {i} out of range ({n} images)")
        return j

    def _png(self, i: int) -> Path:
        return self.folder / ANNOTATIONS / f"{self.names[i]}.png"

    def _sidecar(self, i: int) -> Path:
        return self.folder / ANNOTATIONS / f"{self.names[i]}.json"

    @staticmethod
    def _png_record(png: Path) -> dict:
        try:
            with Image.open(png) as im:
                text = im.text.get(_PNG_KEY)
        except Exception as e:
            raise ValueError(f"{png}: cannot read annotation ({type(e).__name__}: {e})") from None
        if text is None:
            raise ValueError(f"{png}: annotation record missing from the PNG")
        return json.loads(text)

    def _load(self, i: int) -> _Annotation:
        i = self._index(i)
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        png = self._png(i)
        if png.is_file():
            try:
                with Image.open(png) as im:
                    id_map = np.array(im, dtype=np.uint16)
                    rec = json.loads(im.text[_PNG_KEY])
            except Exception as e:
                raise ValueError(f"{png}: cannot read annotation ({type(e).__name__}: {e})") from None
            if id_map.shape != self.image_size(i):
                raise ValueError(f"{png}: size mismatch, map is {id_map.shape} but the image is {self.image_size(i)}")
            ann = _Annotation.from_record(id_map, rec)
        else:
            ann = _Annotation(np.zeros(self.image_size(i), dtype=np.uint16))
        self._cached = (i, ann)
        return ann

    def _store(self, i: int, ann: _Annotation) -> None:
        """Write the map (+ record) atomically, then the sidecar; cache and counts follow the disk."""
        self._cached = None  # if a write fails, the next read comes from disk
        ann.generation += 1
        rec = ann.record(self.names[i])
        info = PngInfo()
        info.add_itxt(_PNG_KEY, json.dumps(rec, separators=(",", ":")))
        with atomic_path(self._png(i)) as tmp:
            Image.fromarray(ann.id_map).save(tmp, format="PNG", pnginfo=info, compress_level=1)
        atomic_write_json(self._sidecar(i), rec)
        self._counts[i] = len(ann.classes)
        self._cached = (i, ann)

    def _save_state(self) -> None:
        self._state["updated"] = _now()
        atomic_write_json(self.folder / PROJECT_JSON, self._state)
