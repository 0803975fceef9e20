"""Fitting the learned candidate pick (``utsam fit-pick``): the data it learns from (each first click's candidates,
their features and real IoUs) and the fit itself. The pick's use at prediction time is ``inference.pick``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from napari_ultratinysam.core.config import PICK_FEATURES, CandidatePick
from napari_ultratinysam.inference.pick import pick_scores

# where the three kinds of first click of collect_pick_data lie in the object
CLICK_STYLES = ("centre", "interior", "random")


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
    from napari_ultratinysam.core import prompts

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
    from napari_ultratinysam.evaluation import metrics
    from napari_ultratinysam.evaluation.protocols import squashed_area

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
