"""An annotation project's folder layout and its ``project.json``: the image names, building a new state, and the
validation of a state read from disk (untrusted input: one ValueError naming the file and the field).

Image names become file names (``annotations/NAME.png``), so a name can never point outside the project.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from napari_ultratinysam.data.classes import CAMVID_CLASSES, CAMVID_COLORS
from napari_ultratinysam.data.readers._common import Color, default_colors, image_size

PROJECT_JSON = "project.json"
ANNOTATIONS = "annotations"
LOCK_FILE = ".project.lock"
PROJECT_FORMAT = "napari-ultratinysam/project"
PROJECT_VERSION = 1
_NAME_BYTES = 200  # NAME.png / .NAME.png.<random>.png.tmp must stay under the usual 255-byte file name limit
_BAD_NAME_CHARS = set("/\\\0") | ({":"} if os.name == "nt" else set())


def is_int(v) -> bool:
    """An int that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stored_generation(path: Path) -> int | None:
    """The generation of the project.json now on disk: None when there is none, -1 when it holds no valid one;
    an unreadable file raises a one-line ValueError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    gen = data.get("generation", 0) if isinstance(data, dict) else None
    return gen if is_int(gen) else -1


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


def check_state(state: dict, where: Path) -> None:
    """Schema of project.json; one ValueError naming the file and the field."""

    def bad(fld: str, why: str):
        raise ValueError(f"{where}: field '{fld}' {why}")

    version = state.get("version")
    if not is_int(version):
        bad("version", "is missing or not an integer")
    if version > PROJECT_VERSION:
        bad("version", f"is {version}: made by a newer napari-ultratinysam, update it to open this project")
    if "generation" in state and not (is_int(state["generation"]) and state["generation"] >= 0):
        bad("generation", "must be a non-negative integer")
    classes = state.get("classes")
    if not isinstance(classes, list):
        bad("classes", "is missing or not a list")
    for k, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            bad(f"classes[{k}].name", "is missing or not a non-empty string")
        col = c.get("color")
        if not (isinstance(col, list) and len(col) == 3 and all(is_int(v) and 0 <= v <= 255 for v in col)):
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
        if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and 0 < v <= 1 << 20 for v in size)):
            bad(f"images[{k}].size", "must be [height, width], positive integers")
    cursor = state.get("cursor")
    if not is_int(cursor) or not 0 <= cursor < len(images):
        bad("cursor", f"must be an image index in 0..{len(images) - 1}")


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


def _rel(folder: Path, p: Path) -> str:
    try:
        return os.path.relpath(p.resolve(), folder.resolve())
    except ValueError:  # another drive on Windows
        return str(p.resolve())


def class_colors(names: list[str], colors: Sequence[Color] | None, camvid: bool) -> list[Color]:
    """The colours given for ``names`` (checked), else CamVid's (``camvid``) or generated ones."""
    if colors is not None:
        if len(colors) != len(names):
            raise ValueError(f"colors: {len(colors)} colours for {len(names)} classes")
        cols = [tuple(int(v) for v in c) for c in colors]
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in cols):
            raise ValueError("colors: each colour must be 3 integers in 0..255")
        return cols
    return list(CAMVID_COLORS) if camvid else default_colors(len(names))


def new_state(folder: Path, paths: Sequence[Path], classes: Sequence[str] | None,
              colors: Sequence[Color] | None) -> dict:
    """The project.json of a new project in ``folder`` over the images ``paths`` (default: CamVid classes)."""
    names = _unique_names(paths)
    entries = [{"name": n, "path": _rel(folder, p), "size": list(image_size(p))} for n, p in zip(names, paths)]
    cls_names = list(classes) if classes is not None else list(CAMVID_CLASSES)
    cls_colors = class_colors(cls_names, colors, classes is None)
    from napari_ultratinysam._version import __version__

    state = {"format": PROJECT_FORMAT, "version": PROJECT_VERSION, "tool_version": __version__,
             "created": utc_now(), "generation": 0,
             "classes": [{"name": n, "color": list(c)} for n, c in zip(cls_names, cls_colors)],
             "images": entries, "cursor": 0}
    check_state(state, folder / PROJECT_JSON)
    return state
