"""Test-time flip averaging around any backend (opt-in, twice the time)."""
from __future__ import annotations

import numpy as np


class FlipAveragedBackend:
    """Test-time flip averaging around any backend: the image and its mirror image are encoded, every prompt is
    decoded on both (mirrored coordinates, mirrored mask input), and the low-res logits (mirrored back), predicted
    IoUs and object scores are averaged. Twice the encoder and decoder time, for better later clicks more than a
    better first one (docs/history.md). The whole padded model square is mirrored, so the logits map back exactly
    whatever the image's aspect ratio."""

    def __init__(self, inner):
        if isinstance(inner, FlipAveragedBackend):
            raise ValueError("the backend already averages over flips")
        self.inner = inner

    def __getattr__(self, name):  # cfg, image_size, lowres_size, precision, ... of the wrapped backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:
        return f"{self.inner.name} + flip"

    def encode(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        return self.inner.encode(x), self.inner.encode(np.ascontiguousarray(x[..., ::-1]))

    def mirror_prompt(self, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Model-square coordinates of the mirrored prompt. Clicks use the pixel-index convention (the prompt
        encoder adds 0.5: the centre of pixel x mirrors to that of S - 1 - x); a box's corners are edges (x0, x1 ->
        S - x1, S - x0: the top-left corner keeps label 2)."""
        s = float(self.inner.image_size)
        out = np.array(coords, dtype=np.float32, copy=True)
        out[:, 0] = s - 1.0 - out[:, 0]
        tl, br = np.flatnonzero(labels == 2), np.flatnonzero(labels == 3)
        for i, j in zip(tl, br):
            out[i, 0], out[j, 0] = s - coords[j, 0], s - coords[i, 0]
        return out

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        f, g = feats
        la, ia, oa = self.inner.decode(f, coords, labels, mask_input)
        mi = None if mask_input is None else np.ascontiguousarray(np.asarray(mask_input)[..., ::-1])
        lb, ib, ob = self.inner.decode(g, self.mirror_prompt(coords, labels), labels, mi)
        return (np.asarray(la) + np.asarray(lb)[..., ::-1]) / 2, (np.asarray(ia) + np.asarray(ib)) / 2, \
            (float(oa) + float(ob)) / 2
