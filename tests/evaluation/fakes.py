"""Fake predictors implementing the predictor interface, and small synthetic datasets."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_ultratinysam.data.types import AnnotatedImage

LOWRES = 32


@dataclass
class FakeResult:
    masks: np.ndarray
    scores: np.ndarray
    lowres: np.ndarray
    object_score: float = 1.0


def _result(mask: np.ndarray, multimask: bool, call: int = 0) -> FakeResult:
    """The given mask as the best candidate; with multimask, two empty decoys with lower scores."""
    k = 3 if multimask else 1
    masks = np.zeros((k,) + mask.shape, dtype=bool)
    masks[0] = mask
    scores = np.array([0.9, 0.2, 0.1][:k])
    lowres = np.stack([np.full((LOWRES, LOWRES), 10.0 * call + i, np.float32) for i in range(k)])
    return FakeResult(masks, scores, lowres)


@dataclass
class OraclePredictor:
    """Returns the GT object under the first positive click (the smallest if several), or the object
    whose tight box best matches the box prompt; an empty mask when the click is on background."""

    dataset: list
    calls: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._gt = {it.image.tobytes(): it.masks for it in self.dataset}
        self._masks: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        self._masks = self._gt[np.asarray(image).tobytes()]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None) -> FakeResult:
        self.calls.append(dict(points=points, labels=labels, box=box, mask_input=mask_input, multimask=multimask))
        masks = self._masks
        h, w = masks.shape[1:]
        out = np.zeros((h, w), dtype=bool)
        if box is not None:
            best = -1.0
            for m in masks:
                ys, xs = np.nonzero(m)
                tb = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
                score = -np.abs(tb - np.asarray(box, np.float32)).sum()
                if score > best or best == -1.0:
                    best, out = score, m
        else:
            pts = np.asarray(points)[np.asarray(labels) == 1]
            x, y = int(round(float(pts[0][0]))), int(round(float(pts[0][1])))
            if 0 <= x < w and 0 <= y < h:
                hits = [m for m in masks if m[y, x]]
                if hits:
                    out = min(hits, key=lambda m: m.sum())
        multi = bool(multimask) if multimask is not None else (box is None and len(np.atleast_2d(points)) == 1)
        return _result(out, multi, len(self.calls) - 1)


@dataclass
class EmptyPredictor:
    """Never segments anything."""

    calls: list = field(default_factory=list)

    def set_image(self, image: np.ndarray) -> None:
        self._hw = image.shape[:2]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None) -> FakeResult:
        self.calls.append(dict(points=points, labels=labels, box=box, mask_input=mask_input, multimask=multimask))
        return _result(np.zeros(self._hw, dtype=bool), bool(multimask), len(self.calls) - 1)


def square(hw, y0, x0, size_y, size_x=None) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[y0:y0 + size_y, x0:x0 + (size_x or size_y)] = True
    return m


def ring(hw, cy, cx, r_out, r_in) -> np.ndarray:
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= r_out ** 2) & (d2 >= r_in ** 2)


def make_item(masks, name="img", hw=None, class_ids=None, seed=0, ignore=None) -> AnnotatedImage:
    masks = np.asarray(masks, dtype=bool)
    hw = hw or masks.shape[1:]
    img = np.random.default_rng(seed).integers(0, 255, size=hw + (3,), dtype=np.uint8)
    cls = np.full(len(masks), -1) if class_ids is None else np.asarray(class_ids)
    extra = {} if ignore is None else {"ignore": ignore}
    return AnnotatedImage(image=img, masks=masks, class_ids=cls, name=name, extra=extra)


def toy_dataset() -> list:
    """Two 64x80 images: three separate objects (a square, a rectangle, a ring) and one square."""
    hw = (64, 80)
    a = make_item([square(hw, 5, 5, 20), square(hw, 40, 10, 12, 30), ring(hw, 30, 55, 15, 8)], "a", seed=1)
    b = make_item([square(hw, 10, 30, 25)], "b", seed=2)
    return [a, b]
