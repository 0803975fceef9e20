"""Annotation project: a folder with ``project.json`` (images, classes, cursor) and one instance map per image.

Per image ``annotations/NAME.png`` is a uint16 instance-id map whose PNG text chunk carries the annotation record
(instance -> class, commit order, overlaps, next id, generation); ``annotations/NAME.json`` is the same record as
a readable sidecar. The PNG is written first and is authoritative: a crash between the two writes is repaired on
open. Every change is saved at once with atomic, fsynced renames, so reopening resumes exactly.

A project has one writer: opening takes an exclusive lock on ``.project.lock`` (the OS drops it when the process
ends, so a kill never leaves it stale); a second opener gets :class:`ProjectLockedError` and may open read-only.
Generation counters (in ``project.json`` and in each record) are compared before every write as a second guard.
``project.json`` and the annotation records are untrusted input: they are validated on read, and image names, which
become file names, can never point outside the project. A damaged annotation file quarantines that one image.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from napari_ultratinysam.core.io import atomic_path, atomic_write_json, read_tagged_json, try_lock
from napari_ultratinysam.data.classes import CAMVID_CLASSES, CAMVID_COLORS
from napari_ultratinysam.data.readers._common import Color, default_colors, image_size, list_images, read_rgb
from napari_ultratinysam.data.types import AnnotatedImage

log = logging.getLogger(__name__)

PROJECT_JSON = "project.json"
ANNOTATIONS = "annotations"
LOCK_FILE = ".project.lock"
PROJECT_FORMAT = "napari-ultratinysam/project"
PROJECT_VERSION = 1
_PNG_KEY = "utsam-annotation"
MAX_ID = 65535
_NAME_BYTES = 200  # NAME.png / .NAME.png.<random>.png.tmp must stay under the usual 255-byte file name limit
_BAD_NAME_CHARS = set("/\\\0") | ({":"} if os.name == "nt" else set())


class ProjectError(OSError):
    """A project cannot be written now (locked, read-only, changed by another writer); one line, no traceback."""


class ProjectLockedError(ProjectError):
    """Another window or process has the project open for writing."""


class ProjectReadOnlyError(ProjectError):
    """A write to a project opened read-only (or closed)."""


class ProjectChangedError(ProjectError):
    """Another writer changed a file since this project read it; nothing was written."""


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
    on_disk: bool = False  # read from a PNG (whose generation is then ``generation``), not a fresh empty map

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
                   generation=int(rec.get("generation", 0)), on_disk=True)


# ------------------------------------------------------------ validation of untrusted files


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def name_problem(name) -> str | None:
    """Why ``name`` cannot be an image name (it becomes ``annotations/NAME.png``), or None if it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name.startswith("."):
        return "must not start with '.' (no '..', no hidden or temporary files)"
    if any(c in _BAD_NAME_CHARS or ord(c) < 32 for c in name):
        return "must not contain path separators or control characters"
    if os.path.isabs(name) or Path(name).name != name:
        return "must be a plain file name"
    if len(name.encode("utf-8", "surrogateescape")) > _NAME_BYTES:
        return f"is longer than {_NAME_BYTES} bytes"
    return None


def _check_state(state: dict, where: Path) -> None:
    """Schema of project.json; one ValueError naming the file and the field."""

    def bad(fld: str, why: str):
        raise ValueError(f"{where}: field '{fld}' {why}")

    version = state.get("version")
    if not _is_int(version):
        bad("version", "is missing or not an integer")
    if version > PROJECT_VERSION:
        bad("version", f"is {version}: made by a newer napari-ultratinysam, update it to open this project")
    if "generation" in state and not (_is_int(state["generation"]) and state["generation"] >= 0):
        bad("generation", "must be a non-negative integer")
    classes = state.get("classes")
    if not isinstance(classes, list):
        bad("classes", "is missing or not a list")
    for k, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            bad(f"classes[{k}].name", "is missing or not a non-empty string")
        col = c.get("color")
        if not (isinstance(col, list) and len(col) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in col)):
            bad(f"classes[{k}].color", "must be a list of 3 integers in 0..255")
    images = state.get("images")
    if not isinstance(images, list) or not images:
        bad("images", "is missing, not a list or empty")
    seen = set()
    for k, e in enumerate(images):
        if not isinstance(e, dict):
            bad(f"images[{k}]", "is not an object")
        why = name_problem(e.get("name"))
        if why:
            bad(f"images[{k}].name", f"{why}, got {e.get('name')!r}"[:300])
        if e["name"] in seen:
            bad(f"images[{k}].name", f"repeats {e['name']!r}")
        seen.add(e["name"])
        # the image path is only ever read (images may live anywhere, e.g. ../images); it is never written
        path = e.get("path")
        if not isinstance(path, str) or not path or "\0" in path:
            bad(f"images[{k}].path", "is missing or not a path string")
        size = e.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= 1 << 20 for v in size)):
            bad(f"images[{k}].size", "must be [height, width], positive integers")
    cursor = state.get("cursor")
    if not _is_int(cursor) or not 0 <= cursor < len(images):
        bad("cursor", f"must be an image index in 0..{len(images) - 1}")


def _check_record(rec, png: Path, shape: tuple[int, int], n_classes: int) -> None:
    """Schema of an annotation record (PNG text chunk); one ValueError naming the file and the field."""

    def bad(fld: str, why: str):
        raise ValueError(f"{png}: annotation record field '{fld}' {why}")

    def is_id(v) -> bool:
        return _is_int(v) and 1 <= v <= MAX_ID

    def id_key(k) -> bool:
        return isinstance(k, str) and k.isdigit() and is_id(int(k))

    if not isinstance(rec, dict):
        raise ValueError(f"{png}: annotation record is not a JSON object")
    if rec.get("size") is not None and rec["size"] != list(shape):
        bad("size", f"is {rec['size']}, the map is {list(shape)}")
    for fld in ("generation", "next_id"):
        if not _is_int(rec.get(fld, 0)) or rec.get(fld, 0) < 0:
            bad(fld, "must be a non-negative integer")
    if "next_id" not in rec or not 1 <= rec["next_id"] <= MAX_ID + 1:
        bad("next_id", f"must be in 1..{MAX_ID + 1}")
    inst = rec.get("instances")
    if not isinstance(inst, dict) or not all(id_key(k) and _is_int(v) and -1 <= v < n_classes
                                             for k, v in inst.items()):
        bad("instances", f"must map instance ids to class indices in -1..{n_classes - 1}")
    areas = rec.get("areas")
    if not isinstance(areas, dict) or not all(id_key(k) and _is_int(v) and v >= 0 for k, v in areas.items()):
        bad("areas", "must map instance ids to pixel counts")
    order = rec.get("order")
    if not isinstance(order, list) or not all(is_id(v) for v in order):
        bad("order", "must be a list of instance ids")
    overlaps = rec.get("overlaps", [])
    if not isinstance(overlaps, list) or not all(
            isinstance(o, dict) and is_id(o.get("instance")) and is_id(o.get("over")) and _is_int(o.get("pixels"))
            for o in overlaps):
        bad("overlaps", "must be a list of {instance, over, pixels}")


def _safe_stem(stem: str) -> str:
    """A file stem made into a valid image name (separators and control characters replaced)."""
    name = "".join("_" if c in _BAD_NAME_CHARS or ord(c) < 32 else c for c in stem).lstrip(".")
    while len(name.encode("utf-8", "surrogateescape")) > _NAME_BYTES:
        name = name[:-1]
    return name or "image"


def _unique_names(paths: Sequence[Path]) -> list[str]:
    # unique ignoring case too: on a case-insensitive disk "A" and "a" would share one annotation file
    names, seen = [], set()
    for p in paths:
        stem = _safe_stem(p.stem)
        name, k = stem, 2
        while name.casefold() in seen:
            name, k = f"{stem}_{k}", k + 1
        seen.add(name.casefold())
        names.append(name)
    return names


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Project:
    """An annotation project on disk. Build with :meth:`create` or :meth:`open`; every change is autosaved.

    A writable project holds the folder's lock until :meth:`close` (or the object is collected, or the process
    ends); use it as a context manager to release the lock early. ``read_only`` projects take no lock and refuse
    every write. Images whose annotation file is damaged are listed in ``quarantined`` ({name: reason}) and refuse
    reads and writes of that annotation; ``problems`` lists every such note as one line.
    """

    def __init__(self, folder: Path, state: dict, read_only: bool = False, lock_fd: int | None = None) -> None:
        self.folder = Path(folder)
        self._lock_fd = lock_fd
        self._state = state
        self._counts: dict[int, int] = {}
        self._cached: tuple[int, _Annotation] | None = None
        self.read_only = bool(read_only)
        self.quarantined: dict[str, str] = {}
        self.problems: list[str] = []
        self._closed = False
        self._write_lock = threading.RLock()  # the annotator saves off the GUI thread

    # ------------------------------------------------------------ create / open / close

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
        entries = [{"name": n, "path": cls._rel(folder, p), "size": list(image_size(p))} for n, p in zip(names, paths)]
        cls_names = list(classes) if classes is not None else list(CAMVID_CLASSES)
        cls_colors = cls._colors_for(cls_names, colors, classes is None)
        from napari_ultratinysam._version import __version__

        state = {"format": PROJECT_FORMAT, "version": PROJECT_VERSION, "tool_version": __version__,
                 "created": _now(), "generation": 0,
                 "classes": [{"name": n, "color": list(c)} for n, c in zip(cls_names, cls_colors)],
                 "images": entries, "cursor": 0}
        _check_state(state, folder / PROJECT_JSON)
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = cls._lock(folder)
        project = cls(folder, state, lock_fd=lock_fd)
        try:
            if (folder / PROJECT_JSON).exists():  # another creator won the race for the lock
                raise ValueError(f"{folder / PROJECT_JSON}: a project already exists here; use Project.open")
            project._write_state(state, expected_generation=None)
        except BaseException:
            project.close()
            raise
        return project

    @classmethod
    def open(cls, folder: str | Path, read_only: bool = False) -> "Project":
        """Open an existing project; annotations, classes and the current image are restored.

        Raises :class:`ProjectLockedError` if another window or process has it open for writing (then open it
        with ``read_only=True``). A folder without write permission opens read-only (noted in ``problems``).
        """
        folder = Path(folder)
        path = folder / PROJECT_JSON
        notes = []
        lock_fd = None
        if not read_only and path.is_file():
            try:
                lock_fd = cls._lock(folder)
            except ProjectLockedError:
                raise
            except OSError as e:  # no write permission, read-only file system
                read_only = True
                notes.append(f"{folder}: cannot write here ({e.strerror or e}); opened read-only")
            else:
                ann = folder / ANNOTATIONS
                if not os.access(folder, os.W_OK) or (ann.is_dir() and not os.access(ann, os.W_OK)):
                    os.close(lock_fd)
                    lock_fd, read_only = None, True
                    notes.append(f"{folder}: no write permission; opened read-only")
        try:
            state = read_tagged_json(path, "format", PROJECT_FORMAT, "a napari-ultratinysam project file",
                                     "not found (not an annotation project)")
            _check_state(state, path)
            project = cls(folder, state, read_only=read_only, lock_fd=lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        for note in notes:
            project._problem(note)
        if not read_only:
            project._remove_stale_temps()
        project._scan()
        return project

    @staticmethod
    def _lock(folder: Path) -> int:
        fd = try_lock(folder / LOCK_FILE)
        if fd is None:
            raise ProjectLockedError(f"{folder}: the project is open for writing in another window or process; "
                                     "close it there, or open this one read-only")
        return fd

    def close(self) -> None:
        """Release the lock; later writes raise :class:`ProjectReadOnlyError`. Reads keep working."""
        self._closed = True
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

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
            cols = [tuple(int(v) for v in c) for c in colors]
            if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in cols):
                raise ValueError("colors: each colour must be 3 integers in 0..255")
            return cols
        return list(CAMVID_COLORS) if camvid else default_colors(len(names))

    def _problem(self, note: str) -> None:
        self.problems.append(note)
        log.warning("%s", note)

    def _quarantine(self, i: int, reason: str) -> None:
        name = self.names[i]
        if name not in self.quarantined:
            self.quarantined[name] = reason
            self._problem(f"{reason} - image {name!r} quarantined: its annotation is neither shown nor overwritten "
                          f"until the file is repaired or moved away")
        self._counts.pop(i, None)

    def _remove_stale_temps(self) -> None:
        """Temporary files of writes killed half-way (``.NAME.<random>.tmp``); safe while we hold the lock."""
        for d in (self.folder, self.folder / ANNOTATIONS):
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

    def _scan(self) -> None:
        """Object counts per image from the saved records; damaged files quarantine their image, stale or missing
        sidecars are rewritten (writable projects only: the PNG is authoritative anyway)."""
        try:
            present = set(os.listdir(self.folder / ANNOTATIONS))
        except OSError:
            present = set()
        for i, name in enumerate(self.names):
            png, side = self._png(i), self._sidecar(i)
            if f"{name}.png" not in present:
                if f"{name}.json" in present:
                    try:
                        lost = len(json.loads(side.read_text(encoding="utf-8")).get("instances") or {})
                    except (OSError, ValueError, AttributeError):
                        lost = 0
                    if lost:
                        self._quarantine(i, f"{png}: missing, but {side.name} lists {lost} objects")
                continue
            try:
                rec = self._read_png(i, pixels=False, verify=True)[1]
            except (OSError, ValueError) as e:
                self._quarantine(i, str(e))
                continue
            self._counts[i] = len(rec["instances"])
            if self.read_only:
                continue
            try:
                ok = json.loads(side.read_text(encoding="utf-8")).get("generation") == rec["generation"]
            except (OSError, ValueError, AttributeError):
                ok = False
            if not ok:
                atomic_write_json(side, rec)

    # ------------------------------------------------------------ images, cursor, progress

    def __len__(self) -> int:
        return len(self._state["images"])

    def __repr__(self) -> str:
        mode = ", read-only" if self.read_only else ""
        return f"Project({str(self.folder)!r}, {self.progress_text()}{mode})"

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
        """Make image ``i`` current (saved); returns it. If the save fails, the cursor stays where it was.
        A read-only project moves its cursor in memory only, so a reader can still browse."""
        j = self._index(i)
        if self.read_only and not self._closed:
            self._state = {**self._state, "cursor": j}
        else:
            self._write_state({**self._state, "cursor": j})
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
        """Replace the class list (saved); refused if an annotation uses an index that would disappear.
        If the save fails, the class list stays as it was."""
        names = [str(n).strip() for n in names]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"classes: names must be non-empty and unique, got {names}")
        self._check_writable()
        used = self._max_class_used()
        if used >= len(names):
            raise ValueError(f"classes: class index {used} is still used by an annotation; keep at least {used + 1}")
        old = dict(zip(self.classes, self.colors))
        cols = self._colors_for(names, colors, False) if colors is not None else \
            [old.get(n) or c for n, c in zip(names, default_colors(len(names)))]
        self._write_state({**self._state, "classes": [{"name": n, "color": list(c)} for n, c in zip(names, cols)]})

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
        for i in list(self._counts):
            try:
                rec = self._read_png(i, pixels=False)[1]
            except (OSError, ValueError) as e:
                self._quarantine(i, str(e))
                continue
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
        self._check_writable(i)
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
                          max(present, default=0) + 1, prev.generation, prev.on_disk)
        self._store(i, ann)

    def commit_object(self, i: int, mask: np.ndarray, class_index: int) -> int:
        """Add one object (saved); it wins where it overlaps earlier ones (overlap pixels recorded). Returns its id."""
        i = self._index(i)
        self._check_writable(i)
        m = np.asarray(mask, dtype=bool)
        if m.shape != self.image_size(i):
            raise ValueError(f"{self.names[i]}: mask shape {m.shape} does not match the image {self.image_size(i)}")
        if not m.any():
            raise ValueError(f"{self.names[i]}: empty mask, nothing to commit")
        k = self._class_index(class_index, allow_none=True)
        ann = self._load(i)
        if ann.next_id > MAX_ID:
            raise ValueError(f"{self.names[i]}: too many objects (instance ids are uint16)")
        # from here the cached annotation changes in place: _store drops it if the write fails
        new = ann.next_id
        under = np.bincount(ann.id_map[m])
        for old in np.flatnonzero(under[1:]) + 1:
            old, n = int(old), int(under[old])
            ann.overlaps.append({"instance": new, "over": old, "pixels": n})
            ann.areas[old] = ann.areas.get(old, n) - n
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
        self._check_writable(i)
        ann = self._load(i)
        self._check_id(i, ann, instance_id)
        ann.id_map[ann.id_map == instance_id] = 0
        self._forget(ann, int(instance_id))
        ann.overlaps = [o for o in ann.overlaps if instance_id not in (o["instance"], o["over"])]
        self._store(i, ann)

    def set_object_class(self, i: int, instance_id: int, class_index: int) -> None:
        """Change one object's class (saved)."""
        i = self._index(i)
        self._check_writable(i)
        ann = self._load(i)
        self._check_id(i, ann, instance_id)
        k = self._class_index(class_index, allow_none=True)
        ann.classes[int(instance_id)] = k
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

    def _check_writable(self, i: int | None = None) -> None:
        if self._closed:
            raise ProjectReadOnlyError(f"{self.folder}: the project was closed; open it again to change it")
        if self.read_only:
            raise ProjectReadOnlyError(f"{self.folder}: the project is open read-only; nothing was changed")
        if i is not None and self.names[i] in self.quarantined:
            raise ValueError(f"{self._png(i)}: damaged annotation, not overwritten "
                             f"({self.quarantined[self.names[i]]}); repair it or move it away, then reopen")

    def _annotation_file(self, i: int, ext: str) -> Path:
        name = self.names[i]
        if name_problem(name):  # validated on read; checked again because this path is written to
            raise ValueError(f"{self.folder / PROJECT_JSON}: image name {name!r} {name_problem(name)}")
        return self.folder / ANNOTATIONS / f"{name}.{ext}"

    def _png(self, i: int) -> Path:
        return self._annotation_file(i, "png")

    def _sidecar(self, i: int) -> Path:
        return self._annotation_file(i, "json")

    def _read_png(self, i: int, pixels: bool, verify: bool = False) -> tuple[np.ndarray | None, dict]:
        """(id map or None, validated record) of image ``i``'s PNG; ``verify`` decodes the pixels to check them.
        Without pixels only the header chunks are read (the record is written before the image data)."""
        png = self._png(i)
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
        if shape != self.image_size(i):
            raise ValueError(f"{png}: size mismatch, map is {shape} but the image is {self.image_size(i)}")
        _check_record(rec, png, shape, len(self.classes))
        return id_map, rec

    def _load(self, i: int) -> _Annotation:
        i = self._index(i)
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        name = self.names[i]
        if name in self.quarantined:
            raise ValueError(f"{self._png(i)}: damaged annotation ({self.quarantined[name]})")
        png = self._png(i)
        if png.is_file():
            try:
                id_map, rec = self._read_png(i, pixels=True)
            except ValueError as e:
                self._quarantine(i, str(e))
                raise
            ann = _Annotation.from_record(id_map, rec)
        else:
            ann = _Annotation(np.zeros(self.image_size(i), dtype=np.uint16))
        self._cached = (i, ann)
        return ann

    def _disk_generation(self, i: int) -> int | None:
        """Generation of the record now on disk (None: no PNG)."""
        try:
            return int(self._read_png(i, pixels=False)[1].get("generation", 0))
        except FileNotFoundError:
            return None

    def _store(self, i: int, ann: _Annotation) -> None:
        """Write the map (+ record) atomically, then the sidecar; cache and counts follow the disk."""
        with self._write_lock:
            self._cached = None  # if a write fails, the next read comes from disk
            self._check_writable(i)
            png = self._png(i)
            on_disk = self._disk_generation(i)
            if on_disk != (ann.generation if ann.on_disk else None):
                raise ProjectChangedError(
                    f"{png}: changed by another writer since it was read (generation "
                    f"{'none' if on_disk is None else on_disk} on disk, {ann.generation if ann.on_disk else 'none'} "
                    "here); nothing was written: reopen the project")
            ann.generation += 1
            rec = ann.record(self.names[i])
            info = PngInfo()
            info.add_itxt(_PNG_KEY, json.dumps(rec, separators=(",", ":")))
            try:
                with atomic_path(png) as tmp:
                    Image.fromarray(ann.id_map).save(tmp, format="PNG", pnginfo=info, compress_level=1)
            except BaseException:
                ann.generation -= 1
                raise
            ann.on_disk = True
            self._counts[i] = len(ann.classes)
            # a readable copy, rebuilt from the PNG on open when stale: atomic but not fsynced
            atomic_write_json(self._sidecar(i), rec, durable=False)
            self._cached = (i, ann)

    def _write_state(self, new: dict, expected_generation: int | None | str = "current") -> None:
        """Save ``new`` as project.json and make it the state; on any failure the state stays as it was.
        The generation on disk must still be ours (None: no file yet), else another writer changed it."""
        with self._write_lock:
            self._check_writable()
            path = self.folder / PROJECT_JSON
            expected = int(self._state.get("generation", 0)) if expected_generation == "current" \
                else expected_generation
            found = self._disk_state_generation(path)
            if found != expected:
                raise ProjectChangedError(
                    f"{path}: changed by another writer since it was read (generation {found} on disk, "
                    f"{expected} here); nothing was written: reopen the project")
            new = {**new, "generation": (expected or 0) + 1, "updated": _now()}
            atomic_write_json(path, new)
            self._state = new

    @staticmethod
    def _disk_state_generation(path: Path) -> int | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ProjectChangedError(f"{path}: unreadable ({e}); nothing was written: reopen the project") from None
        gen = data.get("generation", 0) if isinstance(data, dict) else None
        return gen if _is_int(gen) else -1
