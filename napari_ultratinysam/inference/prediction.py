"""What a prediction returns (:class:`Prediction`), what zooming on it needs (:class:`ZoomRequest`), and the
one parser of prompt points the predictors share (:func:`as_points`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np


class Prediction:
    """The candidates of one prediction, best first.

    ``scores`` (K,) predicted IoU; ``lowres`` (K, l, l) float32 logits over the padded model square (feed one back
    as ``mask_input``); ``object_score`` (> 0: an object is present); ``zoomed``: zoom-in refinement made the masks;
    ``features`` (K, F) the candidates' pick features (pick.py) for a single positive click with multimask, else None.
    Candidates are best first (``best_first``): by the learned pick where one was used, so not always by score.
    Full-resolution masks are made on demand: ``mask(i)`` upsamples candidate ``i`` only (inside its own region)
    and keeps it; ``masks`` stacks all of them as (K, H, W) bool. A click that shows only the best mask pays for
    one upsampling, not K.
    """

    best_first = True  # candidate 0 is the predictor's choice (callers must not re-sort by score)

    def __init__(self, scores: np.ndarray, lowres: np.ndarray, object_score: float, *,
                 masks: np.ndarray | None = None, render: Callable[[int], np.ndarray] | None = None,
                 zoomed: bool = False, features: np.ndarray | Callable[[], np.ndarray | None] | None = None):
        if masks is None and render is None:
            raise ValueError("Prediction needs masks or a render function")
        self.scores = scores
        self.lowres = lowres
        self.object_score = float(object_score)
        self.zoomed = zoomed
        self._features = features  # or a function that computes them on first use
        self.zoomable = False  # set by the predictor: zoom-in refinement would apply to this prompt
        self.zoom_from: tuple | None = None  # set with zoomable: what Predictor.zoom_in needs (image key, crop, prompt)
        self._render = render
        # candidate i -> (box (x0, y0, x1, y1), logits of that box at image resolution, image px per low-res cell)
        # of the model's mask, or None (empty); set by the predictor for its refinement
        self.region: Callable[[int], tuple | None] | None = None
        self.unrefined: Prediction | None = None  # set by the predictor's refinement: the model's own result
        self._masks: dict[int, np.ndarray] = {}
        if masks is not None:
            self._masks = {i: m for i, m in enumerate(np.asarray(masks, dtype=bool))}

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def features(self) -> np.ndarray | None:
        if callable(self._features):
            self._features = self._features()
        return self._features

    def mask(self, i: int = 0) -> np.ndarray:
        """Candidate ``i`` (0 = best) at image resolution, (H, W) bool."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"candidate {i} of {len(self)}")
        i %= len(self)
        m = self._masks.get(i)
        if m is None:
            m = self._masks[i] = self._render(i)
        return m

    @property
    def masks(self) -> np.ndarray:
        """(K, H, W) bool, best first."""
        return np.stack([self.mask(i) for i in range(len(self))])


def as_points(points, labels, name="points") -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float32 (x, y) points and (N,) float32 labels (1 positive, 0 negative; default all 1) from what a
    caller passes; one ValueError naming the argument otherwise."""
    if points is None:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
    p = np.asarray(points, dtype=np.float32)
    if p.ndim == 1 and p.size == 2:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{name}: expected an (N, 2) array of (x, y) pixels, got shape {p.shape}")
    if labels is None:
        lab = np.ones(len(p), np.float32)
    else:
        lab = np.asarray(labels, dtype=np.float32).reshape(-1)
        if len(lab) != len(p):
            raise ValueError(f"labels: {len(lab)} labels for {len(p)} points")
        if not np.all(np.isin(lab, (0, 1))):
            raise ValueError("labels: each label must be 1 (positive) or 0 (negative)")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: coordinates must be finite")
    return p, lab


@dataclass(frozen=True)
class ZoomRequest:
    """What :meth:`Predictor.zoom_in` needs to zoom on a full-view result: its image, the crop and the prompt."""

    image_key: Hashable
    crop: tuple[int, int, int, int]
    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None
    multimask: bool
    click: bool
    pick: bool
    mask_input: np.ndarray | None
