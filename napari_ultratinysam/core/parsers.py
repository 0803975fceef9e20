"""Parsing and checking of user input shared by every command and form: the ONE point / box text parser, the
integer argument types and the output-path checks of the command line.

The text forms are image (or model) pixels: a point is ``X,Y`` or ``X,Y,LABEL`` (LABEL 1 positive, 0 negative), a
box ``X0,Y0,X1,Y1``, a list of points ``X,Y[,LABEL]; X,Y[,LABEL]`` (``;`` or new lines). The plain parsers raise
ValueError naming ``what`` (the flag or form field) and the text; :func:`point_arg` / :func:`box_arg` wrap them as
argparse types. A leaf module: it imports nothing from the package but :mod:`.errors`.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from napari_ultratinysam.core.errors import CliError

__all__ = ["parse_point", "parse_points", "parse_box", "point_arg", "box_arg", "positive_int", "nonnegative_int",
           "check_output_file", "check_output_dir"]


def _numbers(text: str, what: str, expected: str) -> list[float]:
    parts = [t.strip() for t in text.split(",")]
    try:
        vals = [float(t) for t in parts]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected {expected} (numbers)") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what} {text!r}: expected {expected} (finite numbers)")
    return vals


def parse_point(text: str, what: str = "point", default_label: int | None = None) -> tuple:
    """``'X,Y'`` or ``'X,Y,LABEL'`` -> ``(x, y)`` or ``(x, y, label)``; with ``default_label`` always
    ``(x, y, label)``."""
    if len(text.split(",")) not in (2, 3):
        raise ValueError(f"{what} {text!r}: expected X,Y or X,Y,LABEL")
    vals = _numbers(text, what, "X,Y or X,Y,LABEL")
    if len(vals) == 3:
        if vals[2] not in (0.0, 1.0):
            raise ValueError(f"{what} {text!r}: LABEL must be 1 (positive) or 0 (negative)")
        return vals[0], vals[1], int(vals[2])
    return (vals[0], vals[1]) if default_label is None else (vals[0], vals[1], int(default_label))


def parse_points(text: str, what: str = "points", default_label: int | None = None) -> list[tuple]:
    """``'X,Y[,LABEL]; X,Y[,LABEL]'`` (``;`` or new lines between points) -> a list of :func:`parse_point`."""
    parts = [p.strip() for p in text.replace("\n", ";").split(";") if p.strip()]
    if not parts:
        raise ValueError(f"{what}: give at least one X,Y")
    return [parse_point(p, what, default_label) for p in parts]


def parse_box(text: str, what: str = "box") -> tuple[float, float, float, float]:
    """``'X0,Y0,X1,Y1'`` (spaces allowed) -> ``(x0, y0, x1, y1)``."""
    if len(text.split(",")) != 4:
        raise ValueError(f"{what} {text!r}: expected X0,Y0,X1,Y1")
    x0, y0, x1, y1 = _numbers(text, what, "X0,Y0,X1,Y1")
    return x0, y0, x1, y1


def _as_argparse_type(parse, name: str):
    def parse_arg(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse_arg.__name__ = name  # argparse names the type in its messages
    return parse_arg


def point_arg(flag: str, default_label: int | None = None):
    """An argparse ``type`` for one point after ``flag`` (errors name the flag)."""
    return _as_argparse_type(lambda t: parse_point(t, flag, default_label), "point")


def box_arg(flag: str):
    """An argparse ``type`` for a box after ``flag`` (errors name the flag)."""
    return _as_argparse_type(lambda t: parse_box(t, flag), "box")


# ------------------------------------------------------------------ integer argument types


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


# ------------------------------------------------------------------ output paths, checked before long work starts


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent_writable(path: Path, flag: str) -> None:
    anc = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if not anc.is_dir():
        raise CliError(f"{flag} {path}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {path}: folder {anc} is not writable")


def check_output_file(path, flag: str) -> Path:
    """Refuse an output file path that cannot be written (a folder, or under an unwritable / non-folder parent)
    before any long work starts."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"{flag} {path}: is a folder; give a file name")
    _check_parent_writable(path, flag)
    return path


def check_output_dir(path, flag: str) -> Path:
    """Refuse an output folder that is a file or cannot be created / written, before any long work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path}: is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CliError(f"{flag} {path}: folder is not writable")
    else:
        _check_parent_writable(path, flag)
    return path
