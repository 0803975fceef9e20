"""A learned choice among a single click's candidate masks.

One click is ambiguous (a wheel, the car, the street), so the decoder returns three candidates and the predictor
shows the one with the highest predicted IoU. The IoU head judges each candidate alone, and on data it was
fine-tuned for it picks the best of the three less than half of the time. A :class:`~napari_ultratinysam.config.
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

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .config import CandidatePick

PICK_FEATURES = ("score", "token_1", "token_2", "token_3", "log_area", "stability", "click_inside", "centrality",
                 "fill", "border", "zoomed", "object_score", "score_gap", "log_area_rel")
# where the three kinds of first click of fit_pick_data lie in the object
CLICK_STYLES = ("centre", "interior", "random")


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


def check_pick(pick: CandidatePick, where: str = "candidate_pick") -> None:
    """One clear ValueError when ``pick`` does not fit these features (e.g. written by another version)."""
    n, hdim = len(PICK_FEATURES), len(pick.b1)
    if list(pick.features) != list(PICK_FEATURES):
        raise ValueError(f"{where}: fitted on features {list(pick.features)}, this version computes "
                         f"{list(PICK_FEATURES)}; fit it again (utsam fit-pick)")
    sizes = {"mean": (len(pick.mean), n), "std": (len(pick.std), n), "w1": (len(pick.w1), hdim * n),
             "w2": (len(pick.w2), hdim)}
    bad = [f"{k} has {a} values, expected {b}" for k, (a, b) in sizes.items() if a != b]
    if bad or hdim == 0:
        raise ValueError(f"{where}: malformed ({'; '.join(bad) or 'no hidden units'})")


@dataclass
class PickData:
    """What :func:`fit_candidate_pick` learns from: per prompt, the candidates' features and real IoUs."""

    features: list[np.ndarray]  # each (K, F)
    ious: list[np.ndarray]      # each (K,)

    def __len__(self) -> int:
        return len(self.features)


def first_clicks(mask: np.ndarray, styles: Sequence[str], rng: np.random.Generator) -> list[np.ndarray]:
    """One (x, y) click per style on ``mask``: "centre" (centre of mass, may lie outside a concave object),
    "interior" (farthest from the boundary), "random" (a uniform pixel of the object)."""
    from . import prompts

    out = []
    for s in styles:
        if s == "centre":
            out.append(prompts.centre_of_mass(mask))
        elif s == "interior":
            out.append(prompts.interior_point(mask))
        elif s == "random":
            ys, xs = np.nonzero(mask)
            j = int(rng.integers(len(ys)))
            out.append(np.array([xs[j], ys[j]], np.float32))
        else:
            raise ValueError(f"click style {s!r}: choose from {', '.join(CLICK_STYLES)}")
    return out


def collect_pick_data(predictor, images: Iterable, styles: Sequence[str] = CLICK_STYLES, seed: int = 0,
                      min_area: int = 0, min_area_128: int = 0, progress=None) -> PickData:
    """Run the predictor's single-click multimask prediction for every object of every (image, masks) item with
    a click of each style; record each candidate's features and its IoU with the object. Objects of fewer than
    ``min_area`` pixels, or ``min_area_128`` pixels once squashed to 128 x 128 (the paper protocol's object filter),
    are skipped. ``progress(n)`` is called after each image. The predictor's own pick is bypassed, so the data do
    not depend on it."""
    from .evaluation import metrics
    from .evaluation.protocols import squashed_area

    data = PickData([], [])
    for n, (image, masks) in enumerate(images):
        masks = np.asarray(masks, dtype=bool)
        if not len(masks):
            continue
        keep = (masks.reshape(len(masks), -1).sum(1) >= max(1, min_area)) & \
            (squashed_area(masks) >= max(0, min_area_128))
        if not keep.any():
            if progress is not None:
                progress(n + 1)
            continue
        predictor.set_image(image)
        for j, m in enumerate(masks):
            if not keep[j]:
                continue
            rng = np.random.default_rng([seed, n, j])
            for c in first_clicks(m, styles, rng):
                r = predictor.predict(points=np.asarray(c, np.float32).reshape(1, 2), labels=np.ones(1, np.int64),
                                      multimask=True, use_pick=False)
                if r.features is None:
                    continue
                data.features.append(r.features)
                data.ious.append(np.array([metrics.mask_iou(r.mask(i), m) for i in range(len(r))], np.float32))
        if progress is not None:
            progress(n + 1)
    return data


def fit_candidate_pick(data: PickData, hidden: int = 16, epochs: int = 400, tau: float = 0.05,
                       weight_decay: float = 1e-3, seed: int = 0, fitted_on: str = "") -> CandidatePick:
    """Fit the MLP on all of ``data`` at once (full-batch Adam, cosine schedule): the softmax of its scores over a
    prompt's candidates learns the softmax of their real IoUs at temperature ``tau`` (a listwise cross-entropy,
    which, unlike the expected IoU of the choice, has no flat start)."""
    import torch

    if len(data) < 10:
        raise ValueError(f"fit_candidate_pick: {len(data)} prompts are too few to fit a pick (need >= 10)")
    k = {len(f) for f in data.features}
    if len(k) != 1:
        raise ValueError(f"fit_candidate_pick: prompts have different numbers of candidates {sorted(k)}")
    x = np.stack(data.features).astype(np.float32)
    y = torch.tensor(np.stack(data.ious).astype(np.float32))
    mean = x.reshape(-1, x.shape[-1]).mean(0)
    std = x.reshape(-1, x.shape[-1]).std(0) + 1e-3
    xt = torch.tensor((x - mean) / std)
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / np.sqrt(p.shape[-1])))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    target = torch.softmax(y / tau, dim=1)
    for _ in range(epochs):
        s = net(xt).squeeze(-1)
        loss = -(target * torch.log_softmax(s, dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    l1, l2 = net[0], net[2]
    return CandidatePick(features=list(PICK_FEATURES), mean=mean.tolist(), std=std.tolist(),
                         w1=l1.weight.detach().reshape(-1).tolist(), b1=l1.bias.detach().tolist(),
                         w2=l2.weight.detach().reshape(-1).tolist(), b2=float(l2.bias.detach()[0]),
                         fitted_on=fitted_on)


def chosen_iou(pick: CandidatePick | None, data: PickData) -> float:
    """Mean real IoU of the candidate ``pick`` chooses (None: the highest predicted IoU) over ``data``."""
    if not len(data):
        return float("nan")
    got = []
    for f, iou in zip(data.features, data.ious):
        s = f[:, 0] if pick is None else pick_scores(pick, f)
        got.append(iou[int(np.argmax(s))])
    return float(np.mean(got))
