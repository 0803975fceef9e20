"""Annotation project: a folder with ``project.json`` (images, classes, cursor) and one instance map per image.

Per image, ``annotations/NAME.png`` holds the id map and the annotation record, ``NAME.json`` the same record as a
readable sidecar (project_files); the PNG is written first and is authoritative: a crash between the two writes is
repaired on open. Every change is saved at once with atomic, fsynced renames, so reopening resumes exactly.

A project has one writer: opening takes an exclusive lock on ``.project.lock`` (the OS drops it when the process
ends, so a kill never leaves it stale); a second opener gets :class:`ProjectLockedError` and may open read-only.
Generation counters (in ``project.json`` and in each record) are compared before every write as a second guard.
``project.json`` and the records are untrusted input, validated on read (project_meta, project_files); a damaged
annotation file quarantines that one image.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_ultratinysam.core.io import atomic_write_json, read_tagged_json, try_lock
from napari_ultratinysam.data.project_files import (
    MAX_ID,
    Annotation,
    annotation_file,
    read_annotation,
    remove_stale_temps,
    scan_annotations,
    write_annotation_png,
)
from napari_ultratinysam.data.project_meta import (
    ANNOTATIONS,
    LOCK_FILE,
    PROJECT_FORMAT,
    PROJECT_JSON,
    check_state,
    class_colors,
    new_state,
    stored_generation,
    utc_now,
)
from napari_ultratinysam.data.readers._common import Color, default_colors, list_images, read_rgb
from napari_ultratinysam.data.types import AnnotatedImage

log = logging.getLogger(__name__)


class ProjectError(OSError):
    """A project cannot be written now (locked, read-only, changed by another writer); one line, no traceback."""


class ProjectLockedError(ProjectError):
    """Another window or process has the project open for writing."""


class ProjectReadOnlyError(ProjectError):
    """A write to a project opened read-only (or closed)."""


class ProjectChangedError(ProjectError):
    """Another writer changed a file since this project read it; nothing was written."""


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
        self._cached: tuple[int, Annotation] | None = None
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
        state = new_state(folder, paths, classes, colors)
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
            check_state(state, path)
            project = cls(folder, state, read_only=read_only, lock_fd=lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        for note in notes:
            project._problem(note)
        if not read_only:
            remove_stale_temps(folder)  # safe: we hold the lock
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

    def _scan(self) -> None:
        """Object counts per image from the saved records; damaged files quarantine their image, stale or missing
        sidecars are rewritten (writable projects only)."""
        counts, damaged = scan_annotations(self.folder, self.names, [self.image_size(i) for i in range(len(self))],
                                           len(self.classes), repair=not self.read_only)
        self._counts.update(counts)
        for i, reason in damaged:
            self._quarantine(i, reason)

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
        cols = class_colors(names, colors, False) if colors is not None else \
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
        ann = Annotation(ids, cls, present, {k: int(areas[k]) for k in present}, [],
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
        new = ann.add(m, k)
        self._store(i, ann)
        return new

    def delete_object(self, i: int, instance_id: int) -> None:
        """Remove one object (saved); its pixels become background."""
        i = self._index(i)
        self._check_writable(i)
        ann = self._load(i)
        self._check_id(i, ann, instance_id)
        ann.remove(instance_id)
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

    def _check_id(self, i: int, ann: Annotation, instance_id: int) -> None:
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

    def _png(self, i: int) -> Path:
        return annotation_file(self.folder, self.names[i], "png")

    def _read_png(self, i: int, pixels: bool) -> tuple[np.ndarray | None, dict]:
        return read_annotation(self._png(i), self.image_size(i), len(self.classes), pixels)

    def _load(self, i: int) -> Annotation:
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
            ann = Annotation.from_record(id_map, rec)
        else:
            ann = Annotation(np.zeros(self.image_size(i), dtype=np.uint16))
        self._cached = (i, ann)
        return ann

    def _store(self, i: int, ann: Annotation) -> None:
        """Write the map (+ record) atomically, then the sidecar; cache and counts follow the disk."""
        with self._write_lock:
            self._cached = None  # if a write fails, the next read comes from disk
            self._check_writable(i)
            png = self._png(i)
            try:  # the generation of the record now on disk
                on_disk = int(self._read_png(i, pixels=False)[1].get("generation", 0))
            except FileNotFoundError:  # no PNG yet
                on_disk = None
            if on_disk != (ann.generation if ann.on_disk else None):
                raise ProjectChangedError(
                    f"{png}: changed by another writer since it was read (generation "
                    f"{'none' if on_disk is None else on_disk} on disk, {ann.generation if ann.on_disk else 'none'} "
                    "here); nothing was written: reopen the project")
            ann.generation += 1
            rec = ann.record(self.names[i])
            try:
                write_annotation_png(png, ann.id_map, rec)
            except BaseException:
                ann.generation -= 1
                raise
            ann.on_disk = True
            self._counts[i] = len(ann.classes)
            # a readable copy, rebuilt from the PNG on open when stale: atomic but not fsynced
            atomic_write_json(annotation_file(self.folder, self.names[i], "json"), rec, durable=False)
            self._cached = (i, ann)

    def _write_state(self, new: dict, expected_generation: int | None | str = "current") -> None:
        """Save ``new`` as project.json and make it the state; on any failure the state stays as it was.
        The generation on disk must still be ours (None: no file yet), else another writer changed it."""
        with self._write_lock:
            self._check_writable()
            path = self.folder / PROJECT_JSON
            expected = int(self._state.get("generation", 0)) if expected_generation == "current" \
                else expected_generation
            try:
                found = stored_generation(path)
            except ValueError as e:
                raise ProjectChangedError(f"{e}; nothing was written: reopen the project") from None
            if found != expected:
                raise ProjectChangedError(
                    f"{path}: changed by another writer since it was read (generation {found} on disk, "
                    f"{expected} here); nothing was written: reopen the project")
            new = {**new, "generation": (expected or 0) + 1, "updated": utc_now()}
            atomic_write_json(path, new)
            self._state = new
