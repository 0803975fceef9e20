"""Propagation through a stack: the real default model on a moving disc, and the walk's rules with a scripted
predictor (keys, directions, stops, progress, bad arguments)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_ultratinysam.core.transforms import geometry_for, logits_to_image
from napari_ultratinysam.inference.propagation import PropagationResult, mask_to_lowres, propagate


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def predictor():
    from napari_ultratinysam import Predictor

    return Predictor.from_default()


# ------------------------------------------------------------------------------------------- the real model


def test_moving_disc_every_slice(predictor, disc_stack):
    stack, gt = disc_stack()
    keys = []
    set_image = predictor.set_image

    def spy(image, key=None):
        keys.append(key)
        set_image(image, key=key)

    predictor.set_image = spy
    try:
        res = propagate(predictor, stack, 10, gt[10], key="disc-stack")
    finally:
        del predictor.set_image
    assert sorted(res) == [i for i in range(20) if i != 10]
    ious = {i: iou(res[i], gt[i]) for i in res}
    assert min(ious.values()) >= 0.9, ious
    assert res.stops["forward"].reason == "end" and res.stops["backward"].reason == "end"
    assert set(keys) == {("disc-stack", i) for i in res}  # one cheap key per slice: nothing was hashed
    # the start box alone would not do: the end slices' discs lie mostly outside the middle disc's box
    ys, xs = np.nonzero(gt[10])
    box = np.zeros_like(gt[10])
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    assert (gt[0] & box).sum() < 0.5 * gt[0].sum() and (gt[19] & box).sum() < 0.5 * gt[19].sum()


def test_stops_where_the_disc_disappears(predictor, disc_stack):
    stack, gt = disc_stack(present=lambda i: 5 <= i <= 14)
    res = propagate(predictor, stack, 10, gt[10], key="vanishing")
    assert sorted(res) == [5, 6, 7, 8, 9, 11, 12, 13, 14]
    assert res.stops["forward"].index == 15 and res.stops["backward"].index == 4
    assert res.stops["forward"].reason not in ("end", "limit", "cancelled")
    assert min(iou(res[i], gt[i]) for i in res) >= 0.9


def test_forward_only_and_hashing_without_key(predictor, disc_stack):
    stack, gt = disc_stack(n=6)
    res = propagate(predictor, stack, 2, gt[2], direction="forward")  # no key: the predictor hashes each slice
    assert sorted(res) == [3, 4, 5] and list(res.stops) == ["forward"]
    assert min(iou(res[i], gt[i]) for i in res) >= 0.9


def test_mask_to_lowres_matches_the_prediction_layout():
    h, w = 96, 200  # not square: the letterbox pads at the bottom
    yy, xx = np.mgrid[:h, :w]
    mask = (xx - 60) ** 2 + (yy - 40) ** 2 <= 30 ** 2
    low = mask_to_lowres(mask, 128, 32)
    assert low.shape == (32, 32) and low.dtype == np.float32
    assert (low[20:] < 0).all()  # the padding below the image is background
    back = np.asarray(logits_to_image(low, geometry_for((h, w), 128))) > 0
    assert iou(back, mask) >= 0.9


# ---------------------------------------------------------------------------------------- scripted predictor


class _Result:
    def __init__(self, mask, score=0.9, object_score=5.0):
        self._m, self.scores, self.object_score = mask, np.array([score], np.float32), object_score
        self.lowres = np.zeros((1, 32, 32), np.float32)

    def mask(self, i=0):
        return self._m


class ScriptedPredictor:
    """Answers each slice with its own foreground (slice > 0) and a per-slice score; records what it was asked."""

    image_size = 128

    def __init__(self, scores=None):
        self.scores = scores or {}
        self.keys, self.asked = [], []
        self._img = None

    def set_image(self, image, key=None):
        self.keys.append(key)
        self._img = image

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
        self.asked.append((np.asarray(points), np.asarray(box), mask_input))
        return _Result(self._img > 0, self.scores.get(len(self.keys) - 1, 0.9))


def blocks(n=9, h=64, w=64, sizes=None):
    """Slices holding a square of side sizes[i] (0: none)."""
    sizes = sizes or [20] * n
    st = np.zeros((n, h, w), np.uint8)
    for i, s in enumerate(sizes):
        st[i, 10:10 + s, 10:10 + s] = 1
    return st


def test_directions_keys_and_prompts():
    st = blocks()
    p = ScriptedPredictor()
    res = propagate(p, st, 4, st[4] > 0, direction="backward", key=lambda i: ("layer", 7, i))
    assert isinstance(res, PropagationResult) and sorted(res) == [0, 1, 2, 3]
    assert p.keys == [("layer", 7, i) for i in (3, 2, 1, 0)]
    pts, box, low = p.asked[0]
    assert pts.shape == (1, 2) and 10 <= pts[0, 0] < 30 and 10 <= pts[0, 1] < 30  # a click inside the object
    assert box[0] < 10 and box[2] > 29  # its box, grown a little for motion
    assert low.shape == (32, 32) and low.max() > 0  # the committed mask fed back as logits
    assert res.stops == {"backward": res.stops["backward"]} and res.stops["backward"].reason == "end"


def test_stops_on_empty_small_score_and_area_jumps():
    sizes = [20, 20, 20, 0, 20, 20, 20, 60, 20]  # slice 3 empty, slice 7 leaks to a much larger area
    res = propagate(ScriptedPredictor(), blocks(sizes=sizes), 5, blocks(sizes=sizes)[5] > 0)
    assert sorted(res) == [4, 6]
    assert (res.stops["forward"].index, res.stops["forward"].reason) == (7, "area")
    assert (res.stops["backward"].index, res.stops["backward"].reason) == (3, "empty")
    sizes = [20, 1, 20, 20, 20]  # one pixel: smaller than one low-res cell of the model
    res = propagate(ScriptedPredictor(), blocks(sizes=sizes), 3, blocks(sizes=sizes)[3] > 0, direction="backward")
    assert sorted(res) == [2] and res.stops["backward"].reason == "small"
    p = ScriptedPredictor(scores={1: 0.2})  # the second slice asked scores low
    res = propagate(p, blocks(), 4, blocks()[4] > 0, direction="forward")
    assert sorted(res) == [5] and res.stops["forward"].reason == "score" and res.stops["forward"].index == 6


def test_limit_cancel_and_progress_reaching_total():
    calls = []
    res = propagate(ScriptedPredictor(), blocks(), 4, blocks()[4] > 0, max_slices=2,
                    progress=lambda d, t: calls.append((d, t)))
    assert sorted(res) == [2, 3, 5, 6] and res.stops["forward"].reason == "limit"
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    sizes = [20] * 6 + [0, 20, 20]  # forward stops early at slice 6: its remaining share still counts as done
    res = propagate(ScriptedPredictor(), blocks(sizes=sizes), 4, blocks()[4] > 0,
                    progress=lambda d, t: calls.append((d, t)))
    assert sorted(res) == [0, 1, 2, 3, 5] and calls[-1] == (8, 8)
    p = ScriptedPredictor()
    res = propagate(p, blocks(), 4, blocks()[4] > 0, cancelled=lambda: len(p.keys) >= 2)
    assert sorted(res) == [5, 6] and {s.reason for s in res.stops.values()} == {"cancelled"}


@pytest.mark.parametrize("kwargs, field", [
    ({"start_index": 9}, "start_index"),
    ({"start_index": -1}, "start_index"),
    ({"start_mask": np.zeros((64, 64), bool)}, "start_mask"),
    ({"start_mask": np.ones((32, 64), bool)}, "start_mask"),
    ({"start_mask": np.ones((2, 64, 64), bool)}, "start_mask"),
    ({"direction": "up"}, "direction"),
    ({"min_score": 1.5}, "min_score"),
    ({"area_bounds": (2.0, 0.5)}, "area_bounds"),
    ({"area_bounds": "wide"}, "area_bounds"),
    ({"box_margin": -1}, "box_margin"),
    ({"max_slices": -2}, "max_slices"),
    ({"stack": 5}, "stack"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    args = {"stack": blocks(), "start_index": 4, "start_mask": blocks()[4] > 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        propagate(ScriptedPredictor(), **args)
