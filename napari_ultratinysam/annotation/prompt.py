"""Prompts in the predictor's terms, from napari layer data.

``rc_to_xy`` / ``box_from_rect`` are the ONE conversion from napari layer coordinates (row, col) = (y, x) to the
predictor's image-pixel (x, y) convention; ``Prompt`` holds points, labels and a box in that convention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------- coordinates


def rc_to_xy(rc: Sequence[float] | np.ndarray) -> np.ndarray:
    """napari layer coordinates (..., 2) as (row, col) -> predictor image pixels (..., 2) as (x, y).

    The predictor takes (x, y) = (col, row); napari stores (row, col). This is the only place that swaps them.
    """
    a = np.asarray(rc, dtype=np.float32)
    if a.shape[-1] != 2:
        raise ValueError(f"rc_to_xy: expected (..., 2) (row, col) coordinates, got shape {a.shape}")
    return a[..., ::-1].copy()


def box_from_rect(vertices_rc: np.ndarray) -> np.ndarray:
    """A napari rectangle (its vertices, (4, 2) as (row, col), any order/rotation-free) -> (x0, y0, x1, y1)."""
    xy = rc_to_xy(np.asarray(vertices_rc, dtype=np.float32)[:, -2:])
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def clip_box(box: np.ndarray, hw: tuple[int, int]) -> np.ndarray | None:
    """Clip a box (x0, y0, x1, y1) to an image of (h, w); None when nothing of it is left."""
    h, w = hw
    b = np.asarray(box, dtype=np.float32).copy()
    b[[0, 2]] = np.clip(b[[0, 2]], 0, w - 1)
    b[[1, 3]] = np.clip(b[[1, 3]], 0, h - 1)
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        return None
    return b


def inside(rc: Sequence[float], hw: tuple[int, int]) -> bool:
    """Whether a (row, col) position falls on a pixel of an image of (h, w)."""
    r, c = float(rc[0]), float(rc[1])
    return -0.5 <= r < hw[0] - 0.5 and -0.5 <= c < hw[1] - 0.5


# -------------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """What the predictor is asked: points (N, 2) as (x, y) image pixels, labels (N,) 1/0, optional box."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    @classmethod
    def from_layers(cls, points_rc: np.ndarray, positive: Sequence[bool] | np.ndarray, box_rect_rc=None,
                    image_hw: tuple[int, int] | None = None) -> "Prompt":
        """Build from napari data: Points data (N, >=2) rows/cols last, a positive flag per point, a rectangle."""
        pts = np.asarray(points_rc, dtype=np.float32)
        xy = rc_to_xy(pts.reshape(len(pts), -1)[:, -2:]) if pts.size else np.zeros((0, 2), np.float32)
        lab = np.asarray(positive, dtype=bool).astype(np.int64).reshape(-1)
        if len(lab) != len(xy):
            raise ValueError(f"Prompt: {len(xy)} points but {len(lab)} labels")
        box = None
        if box_rect_rc is not None:
            box = box_from_rect(box_rect_rc)
            if image_hw is not None:
                box = clip_box(box, image_hw)
        return cls(xy, lab, box)

    def predictor_kwargs(self) -> dict:
        return {
            "points": self.points if len(self.points) else None,
            "labels": self.labels if len(self.labels) else None,
            "box": self.box,
        }
