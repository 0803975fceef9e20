"""A learned choice among a single click's candidate masks.

One click is ambiguous (a wheel, the car, the street), so the decoder returns three candidates and the predictor
shows the one with the highest predicted IoU. The IoU head judges each candidate alone, and on data it was
fine-tuned for it picks the best of the three less than half of the time. A :class:`~napari_ultratinysam.core.config.
CandidatePick` is a tiny MLP (14 inputs, 16 hidden units) over cheap features of the three candidates (their
predicted IoUs, which output token made them, area, stability, whether the click lies inside, how far the click is
from the mask's centre, ...), fitted after training by ``utsam fit-pick`` on the training data: the predicted IoU
of every candidate and its real IoU with the object the click was on. It travels in the checkpoint's config (and
the ONNX folder's), and the predictor uses it for single positive clicks only; every other prompt, and a model
without one, keeps the highest predicted IoU.

Features are computed on the low-resolution logits (the decoder's own grid), so the choice costs a few
microseconds and no upsampling.
"""
from __future__ import annotations

import numpy as np

from napari_ultratinysam.core.config import PICK_FEATURES, CandidatePick


def candidate_features(logits: np.ndarray, scores: np.ndarray, click_xy: np.ndarray, valid_hw: tuple[int, int],
                       object_score: float, zoomed: bool) -> np.ndarray:
    """(K, len(PICK_FEATURES)) float32 features of the K multimask candidates, in token order.

    ``logits`` (K, l, l) low-res logits; ``scores`` (K,) predicted IoUs; ``click_xy`` the click (x, y) in low-res
    cells; ``valid_hw`` the low-res cells (h, w) covered by the image (the rest of the square is padding);
    ``zoomed``: the candidates were predicted on a zoom-in crop.
    """
    logits = np.asarray(logits, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    k, l = logits.shape[0], logits.shape[-1]
    if k != len(scores) or k > 3:
        raise ValueError(f"candidate_features: {k} candidates with {len(scores)} scores (at most 3)")
    h, w = (int(np.clip(v, 1, l)) for v in valid_hw)
    lg = logits[:, :h, :w]
    pos = lg > 0
    area = pos.sum(axis=(1, 2)).astype(np.float32)
    cx, cy = (float(v) for v in np.asarray(click_xy, dtype=np.float32).reshape(2))
    ix, iy = int(np.clip(np.floor(cx), 0, w - 1)), int(np.clip(np.floor(cy), 0, h - 1))
    f = np.zeros((k, len(PICK_FEATURES)), np.float32)
    f[:, 0] = scores
    f[np.arange(k), 1 + np.arange(k)] = 1.0
    f[:, 4] = np.log((area + 1.0) / (h * w))
    f[:, 5] = ((lg > 1).sum(axis=(1, 2)) + 1.0) / ((lg > -1).sum(axis=(1, 2)) + 1.0)
    f[:, 6] = pos[:, iy, ix]
    rows, cols = pos.any(axis=2), pos.any(axis=1)  # (K, h), (K, w): which rows / columns the mask reaches
    some = area > 0
    safe = np.maximum(area, 1.0)
    mx = pos.sum(axis=1) @ (np.arange(w, dtype=np.float32) + 0.5) / safe  # centroid in cell units
    my = pos.sum(axis=2) @ (np.arange(h, dtype=np.float32) + 0.5) / safe
    f[:, 7] = np.where(some, np.minimum(5.0, np.hypot(mx - cx, my - cy) / np.sqrt(safe)), 5.0)
    bw = w - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1)
    bh = h - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
    f[:, 8] = np.where(some, area / np.maximum(bw * bh, 1), 0.0)
    f[:, 9] = rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]
    f[:, 10] = float(zoomed)
    f[:, 11] = float(object_score)
    f[:, 12] = scores - scores.max()
    f[:, 13] = f[:, 4] - f[:, 4].mean()
    return f


def pick_scores(pick: CandidatePick, features: np.ndarray) -> np.ndarray:
    """(K,) how good each candidate is according to ``pick`` (higher is better; not an IoU)."""
    x = (np.asarray(features, np.float32) - np.asarray(pick.mean, np.float32)) / np.asarray(pick.std, np.float32)
    n_in = x.shape[-1]
    w1 = np.asarray(pick.w1, np.float32).reshape(-1, n_in)
    hid = np.maximum(x @ w1.T + np.asarray(pick.b1, np.float32), 0.0)
    return hid @ np.asarray(pick.w2, np.float32) + np.float32(pick.b2)
