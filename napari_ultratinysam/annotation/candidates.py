"""A prediction's masks and how one is shown, without Qt.

- ``Candidates``: the multimask results of one prediction, best first, with a cursor for cycling;
- ``PreviewBuffer``: writes a mask into an existing preview array in place, touching only the changed region;
- ``mask_bbox`` / ``union_bbox``: the bounding boxes both of them (and the annotation edits) work in.
"""
from __future__ import annotations

import numpy as np


class Candidates:
    """The masks of one prediction, best first, with a cursor for multimask cycling.

    Built from full masks (K, H, W), or from a predictor result whose ``mask(i)`` makes candidate ``i`` on demand
    (our :class:`~napari_ultratinysam.inference.prediction.Prediction`, which keeps each mask it made):
    then only the masks actually shown are upsampled.
    """

    def __init__(self, masks: np.ndarray | None, scores: np.ndarray, lowres: np.ndarray | None = None,
                 get_mask=None, best_first: bool = False):
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        # best first: as given when the predictor says so (a learned pick), else by score
        order = np.arange(len(scores)) if best_first else np.argsort(-scores, kind="stable")
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.ndim == 2:
                masks = masks[None]
            if len(scores) != len(masks):
                raise ValueError(f"Candidates: {len(masks)} masks but {len(scores)} scores")
            masks = masks[order]
            get_mask = masks.__getitem__
        elif get_mask is None:
            raise ValueError("Candidates: masks or get_mask is required")
        else:
            inner = get_mask
            get_mask = lambda i: np.asarray(inner(int(order[i])), dtype=bool)  # noqa: E731
        self._get = get_mask
        self.scores = scores[order]
        self.lowres = None if lowres is None else np.asarray(lowres, dtype=np.float32)[order]
        self.index = 0

    @classmethod
    def from_result(cls, r) -> "Candidates":
        lowres = getattr(r, "lowres", None)
        if callable(getattr(r, "mask", None)):
            return cls(None, r.scores, lowres, get_mask=r.mask, best_first=getattr(r, "best_first", False))
        return cls(r.masks, r.scores, lowres, best_first=getattr(r, "best_first", False))

    def __len__(self) -> int:
        return len(self.scores)

    def cycle(self, step: int = 1) -> int:
        self.index = (self.index + step) % len(self)
        return self.index

    def mask_at(self, i: int) -> np.ndarray:
        return self._get(i)

    @property
    def masks(self) -> np.ndarray:
        return np.stack([self.mask_at(i) for i in range(len(self))])

    @property
    def mask(self) -> np.ndarray:
        return self.mask_at(self.index)

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    @property
    def current_lowres(self) -> np.ndarray | None:
        return None if self.lowres is None else self.lowres[self.index]

    def describe(self) -> str:
        return f"mask {self.index + 1}/{len(self)}  score {self.score:.3f}"


# -------------------------------------------------------------------------------------------------------- preview


def mask_bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of a 2-D bool mask as slices; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def union_bbox(a: tuple[slice, slice] | None, b: tuple[slice, slice] | None) -> tuple[slice, slice] | None:
    """The smallest box holding both boxes (either may be None: nothing)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


class PreviewBuffer:
    """Writes preview masks into an existing array (the preview layer's data) in place.

    Only the union of the previous and the new mask's bounding boxes is touched. ``show`` returns that region (or
    None when nothing changed) so the caller refreshes the layer once.
    """

    def __init__(self, data: np.ndarray, value: int = 1):
        self.data = data
        self.value = value
        self._last: tuple[tuple, tuple[slice, slice]] | None = None  # (plane, bbox)

    def clear(self) -> tuple | None:
        if self._last is None:
            return None
        plane, bb = self._last
        self.data[plane + bb] = 0
        self._last = None
        return plane + bb

    def show(self, mask: np.ndarray | None, plane: tuple = ()) -> tuple | None:
        if mask is None:
            return self.clear()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.data.shape[len(plane):]:
            raise ValueError(f"preview: mask shape {mask.shape} does not match the image "
                             f"{self.data.shape[len(plane):]}")
        bb = mask_bbox(mask)
        if self._last is not None and self._last[0] != plane:
            self.clear()
        old = self._last[1] if self._last is not None else None
        region = union_bbox(old, bb)
        if region is None:
            return None
        view = self.data[plane + region]
        view[...] = 0
        if bb is not None:
            rel = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(bb, region))
            view[rel][mask[bb]] = self.value
            self._last = (plane, bb)
        else:
            self._last = None
        return plane + region

    @property
    def showing(self) -> bool:
        return self._last is not None
