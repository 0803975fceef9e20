"""Carry one object through a 3-D stack or a time series, slice by slice (Qt-free; the annotator's Propagate).

    masks = propagate(predictor, stack, start_index=10, start_mask=mask)     # {slice index: (H, W) bool}

Each step prompts the next slice with what the previous slice gave: its low-res logits as ``mask_input``, its box
(grown by a margin, so that a moving object stays inside) and a positive click at its interior point. A direction
stops at the first slice where the object is gone: an empty mask, an object score <= 0, a predicted IoU below
``min_score``, a mask smaller than one cell of the model's low-res output, or an area that changed beyond
``area_bounds`` from the previous slice's (on a slice without the object the model keeps a speck at the click, or
leaks into the background). Embeddings are cached by the predictor per slice key: pass ``key`` (a cheap one, e.g.
layer + data version; the slice index is added) so that no slice is hashed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from napari_ultratinysam.core.prompts import interior_point, tight_box
from napari_ultratinysam.core.transforms import letterbox_masks

DIRECTIONS = ("both", "forward", "backward")
# a committed mask fed back as low-res logits: this magnitude reads as confidently in / out, like the model's own
MASK_LOGIT = 8.0


@dataclass(frozen=True)
class Stop:
    """Why a direction ended: at ``index`` (the first slice not taken, or one past the stack) for ``reason``."""

    index: int
    reason: str  # "end" | "empty" | "object score" | "score" | "small" | "area" | "limit" | "cancelled"


class PropagationResult(dict):
    """{slice index: (H, W) bool mask} for each slice reached (never the start slice), plus ``stops``: one
    :class:`Stop` per direction walked, and ``scores``: {slice index: predicted IoU}."""

    def __init__(self):
        super().__init__()
        self.stops: dict[str, Stop] = {}
        self.scores: dict[int, float] = {}


def mask_to_lowres(mask: np.ndarray, image_size: int, lowres_size: int) -> np.ndarray:
    """An (H, W) mask -> (lowres_size, lowres_size) float32 logits over the padded model square, laid out as the
    predictor's ``Prediction.lowres`` (so a committed mask can be fed back as ``mask_input``)."""
    boxed = letterbox_masks(np.asarray(mask, dtype=bool)[None], image_size)[0].astype(np.float32)
    f = image_size // lowres_size
    frac = boxed[:lowres_size * f, :lowres_size * f].reshape(lowres_size, f, lowres_size, f).mean(axis=(1, 3))
    return ((2.0 * frac - 1.0) * MASK_LOGIT).astype(np.float32)


def _grown_box(mask: np.ndarray, margin: float) -> np.ndarray:
    """The mask's tight box (x0, y0, x1, y1), grown on each side by ``margin`` times its size, inside the image."""
    h, w = mask.shape
    x0, y0, x1, y1 = tight_box(mask)
    dx, dy = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    return np.array([max(0.0, x0 - dx), max(0.0, y0 - dy), min(w - 1.0, x1 + dx), min(h - 1.0, y1 + dy)],
                    np.float32)


def _slice_key(key, i: int) -> Hashable | None:
    if key is None:
        return None  # the predictor hashes the slice: always right, but costs a pass over its pixels
    return key(i) if callable(key) else (key, i)


def _check(stack, start_index: int, start_mask: np.ndarray, direction: str, min_score: float,
           area_bounds, box_margin: float, max_slices: int | None) -> tuple[int, np.ndarray]:
    try:
        n = len(stack)
    except TypeError:
        raise ValueError(f"stack: expected a sequence of slices (an (N, H, W[, C]) array), got "
                         f"{type(stack).__name__}") from None
    if n < 1:
        raise ValueError("stack: no slices")
    if isinstance(start_index, bool) or not isinstance(start_index, (int, np.integer)) \
            or not 0 <= start_index < n:
        raise ValueError(f"start_index: expected an integer slice index in 0..{n - 1}, got {start_index!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not 0.0 <= float(min_score) <= 1.0:
        raise ValueError(f"min_score: expected a predicted IoU in [0, 1], got {min_score!r}")
    try:
        lo, hi = (float(v) for v in area_bounds)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0.0 < lo <= 1.0 <= hi:
        raise ValueError(f"area_bounds: expected (shrink, growth) factors with 0 < shrink <= 1 <= growth, got "
                         f"{area_bounds!r}")
    if not 0.0 <= float(box_margin) <= 2.0:
        raise ValueError(f"box_margin: expected a fraction of the box size in [0, 2], got {box_margin!r}")
    if max_slices is not None and (isinstance(max_slices, bool) or not isinstance(max_slices, (int, np.integer))
                                   or max_slices < 0):
        raise ValueError(f"max_slices: expected a number of slices >= 0 per direction, got {max_slices!r}")
    m = np.asarray(start_mask)
    if m.ndim != 2:
        raise ValueError(f"start_mask: expected an (H, W) mask, got shape {m.shape}")
    m = m if m.dtype == bool else m != 0
    if not m.any():
        raise ValueError("start_mask: the mask is empty (nothing to propagate)")
    return int(n), m


def propagate(predictor, stack: Sequence[np.ndarray], start_index: int, start_mask: np.ndarray,
              direction: str = "both", *, key: Hashable | Callable[[int], Hashable] | None = None,
              use_mask_input: bool = True, box_margin: float = 0.1, min_score: float = 0.5,
              area_bounds: tuple[float, float] = (0.2, 2.0), max_slices: int | None = None,
              progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> PropagationResult:
    """Carry the object ``start_mask`` of slice ``start_index`` to the next ("forward"), previous ("backward") or
    both neighbouring slices of ``stack`` until it disappears (see the module docstring).

    ``predictor``: a :class:`~.predictor.Predictor` (or anything with its ``set_image(image, key=)`` and
    ``predict(...)``). ``stack``: anything with ``len`` whose ``stack[i]`` is one (H, W[, C]) slice
    (a numpy or dask array, a list). ``key``: the embedding cache key of each slice, a function of the slice index
    or a base to which the index is added (None: the predictor hashes each slice). ``max_slices``: at most this
    many slices per direction. ``progress(done, total)`` is called after each slice; ``cancelled()`` returning
    True ends the walk (the slices reached so far are kept). The predictor's current image is left on the last
    slice visited.
    """
    n, start = _check(stack, start_index, start_mask, direction, min_score, area_bounds, box_margin, max_slices)
    shrink, growth = (float(v) for v in area_bounds)
    if start.shape != np.asarray(stack[start_index]).shape[:2]:
        raise ValueError(f"start_mask: shape {start.shape} does not match the slices "
                         f"{np.asarray(stack[start_index]).shape[:2]}")
    steps = [s for d, s in (("forward", 1), ("backward", -1)) if direction in (d, "both")]
    limit = n if max_slices is None else int(max_slices)
    total = sum(min(limit, n - 1 - start_index if s > 0 else start_index) for s in steps)
    size = int(getattr(predictor, "image_size", 0) or 0)
    lowres = int(getattr(predictor, "lowres_size", 0) or getattr(getattr(predictor, "backend", None), "lowres_size",
                                                                  size // 4))
    # the first step gets the start mask as logits; a predictor that does not say its sizes, none
    start_low = mask_to_lowres(start, size, lowres) if use_mask_input and size and lowres else None
    min_area = (max(start.shape) / lowres) ** 2 if lowres else 1  # one low-res cell: the finest detail resolved
    out = PropagationResult()
    done = 0
    for step in steps:
        name = "forward" if step > 0 else "backward"
        planned = min(limit, n - 1 - start_index if step > 0 else start_index)
        end_done = done + planned
        prev, low, prev_area = start, start_low, int(start.sum())
        i, taken = start_index + step, 0
        stop = None
        while stop is None:
            if not 0 <= i < n:
                stop = Stop(i, "end")
                break
            if taken >= limit:
                stop = Stop(i, "limit")
                break
            if cancelled is not None and cancelled():
                stop = Stop(i, "cancelled")
                break
            predictor.set_image(np.asarray(stack[i]), key=_slice_key(key, i))
            r = predictor.predict(points=interior_point(prev)[None], labels=[1], box=_grown_box(prev, box_margin),
                                  mask_input=low, multimask=False)
            m = np.asarray(r.mask(0) if callable(getattr(r, "mask", None)) else r.masks[0], dtype=bool)
            # the stops judge the model's own mask: refinement always keeps a disc at the (synthetic) click
            raw = getattr(r, "unrefined", None)
            area = int((raw.mask(0) if raw is not None else m).sum())
            score = float(r.scores[0])
            if area == 0:
                stop = Stop(i, "empty")
            elif r.object_score <= 0:
                stop = Stop(i, "object score")
            elif score < min_score:
                stop = Stop(i, "score")
            elif area < min_area:
                stop = Stop(i, "small")
            elif not shrink <= area / prev_area <= growth:
                stop = Stop(i, "area")
            else:
                out[i], out.scores[i] = m, score
                prev, low, prev_area = m, (r.lowres[0] if use_mask_input else None), area
                i += step
                taken += 1
            done += 1
            if progress is not None and stop is None:
                progress(done, total)
        out.stops[name] = stop
        if done != end_done:  # stopped early: this direction's share is done
            done = end_done
            if progress is not None:
                progress(done, total)
    return out
