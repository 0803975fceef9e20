"""The learned choice among a single click's candidates (inference/pick.py) and its use by the predictor."""
import copy

import numpy as np
import pytest

from napari_ultratinysam.core.config import PICK_FEATURES, CandidatePick, ModelConfig, check_pick, from_dict, to_dict
from napari_ultratinysam.inference.pick import candidate_features, pick_scores
from napari_ultratinysam.training.fit_pick import PickData, chosen_iou, fit_candidate_pick

F = {n: i for i, n in enumerate(PICK_FEATURES)}


def prefer(feature: str, sign: float = 1.0) -> CandidatePick:
    """A hand-made pick whose score is ``sign`` * the (unstandardised) ``feature``, clipped at 0 by the ReLU."""
    n = len(PICK_FEATURES)
    w1 = np.zeros((1, n))
    w1[0, F[feature]] = sign
    return CandidatePick(features=list(PICK_FEATURES), mean=[0.0] * n, std=[1.0] * n, w1=w1.ravel().tolist(),
                         b1=[10.0], w2=[1.0], b2=0.0, fitted_on="test")


def test_candidate_features_describe_the_masks():
    l = 32
    logits = np.full((3, l, l), -5.0, np.float32)
    logits[0, 9:13, 9:13] = 5.0             # small square centred on the click
    logits[1, 6:22, 6:22] = 5.0             # larger square, click off its centre
    logits[2, :, :] = 5.0                   # everything, padding included
    f = candidate_features(logits, np.array([0.9, 0.5, 0.2]), np.array([11.0, 11.0]), (24, 32), 1.5, False)
    assert f.shape == (3, len(PICK_FEATURES))
    assert f[:, F["token_1"]:F["token_3"] + 1].tolist() == np.eye(3).tolist()
    assert f[:, F["click_inside"]].tolist() == [1.0, 1.0, 1.0]
    assert f[0, F["centrality"]] == pytest.approx(0.0, abs=1e-6)
    assert f[1, F["centrality"]] > 0.1
    assert f[0, F["fill"]] == pytest.approx(1.0)
    assert f[:, F["border"]].tolist() == [0.0, 0.0, 1.0]
    # only the 24 x 32 cells covered by the image count: the third mask covers all of them
    assert f[2, F["log_area"]] == pytest.approx(np.log((24 * 32 + 1) / (24 * 32)), abs=1e-6)
    assert f[0, F["log_area"]] < f[1, F["log_area"]] < f[2, F["log_area"]]
    assert f[:, F["score_gap"]].tolist() == pytest.approx([0.0, -0.4, -0.7])
    assert np.all(f[:, F["object_score"]] == 1.5) and np.all(f[:, F["zoomed"]] == 0)
    outside = candidate_features(logits, np.array([0.9, 0.5, 0.2]), np.array([2.0, 2.0]), (24, 32), 0.0, True)
    assert outside[:, F["click_inside"]].tolist() == [0.0, 0.0, 1.0]
    assert np.all(outside[:, F["zoomed"]] == 1)


def _synthetic_pick_data(n: int, rng) -> PickData:
    """Scores that favour token 1 while token 3 is the best mask whenever its stability is high."""
    data = PickData([], [])
    for _ in range(n):
        f = np.zeros((3, len(PICK_FEATURES)), np.float32)
        f[:, F["score"]] = [0.8, 0.6, 0.5] + rng.normal(0, 0.02, 3)
        f[np.arange(3), F["token_1"] + np.arange(3)] = 1
        f[:, F["stability"]] = rng.uniform(0.3, 1.0, 3)
        good = f[2, F["stability"]] > 0.6
        data.features.append(f)
        data.ious.append(np.array([0.5, 0.3, 0.9 if good else 0.1], np.float32))
    return data


def test_fit_candidate_pick_learns_a_rule_the_scores_miss(rng):
    fit, held = _synthetic_pick_data(400, rng), _synthetic_pick_data(200, rng)
    pick = fit_candidate_pick(fit, hidden=8, epochs=300)
    check_pick(pick)
    by_score, by_pick = chosen_iou(None, held), chosen_iou(pick, held)
    assert by_score == pytest.approx(0.5)
    best = np.mean([d.max() for d in held.ious])
    assert by_pick > best - 0.03 and by_pick > by_score + 0.15
    with pytest.raises(ValueError, match="too few"):
        fit_candidate_pick(_synthetic_pick_data(3, rng))


def test_check_pick_names_what_is_wrong():
    p = prefer("token_3")
    check_pick(p)
    with pytest.raises(ValueError, match="fit it again"):
        check_pick(CandidatePick(**{**to_dict(p), "features": ["score"]}))
    with pytest.raises(ValueError, match="w2 has 2 values"):
        check_pick(CandidatePick(**{**to_dict(p), "w2": [1.0, 2.0]}))


def test_pick_travels_in_the_model_config():
    cfg = ModelConfig(candidate_pick=prefer("stability"))
    back = from_dict(ModelConfig, to_dict(cfg))
    assert isinstance(back.candidate_pick, CandidatePick)
    assert back.candidate_pick == cfg.candidate_pick
    assert from_dict(ModelConfig, {"candidate_pick": None}).candidate_pick is None


def _predictor_with(model, pick):
    from napari_ultratinysam.inference.predictor import Predictor

    m = copy.deepcopy(model)
    m.cfg = copy.deepcopy(model.cfg)
    m.cfg.candidate_pick = pick
    return Predictor.from_model(m)


def test_predictor_orders_a_single_click_by_the_pick(tiny_model, rng):
    image = rng.integers(0, 255, (96, 128, 3)).astype(np.uint8)
    plain = _predictor_with(tiny_model, None)
    plain.set_image(image)
    r0 = plain.predict(points=[[60, 40]], labels=[1])
    assert r0.features is not None and r0.features.shape == (3, len(PICK_FEATURES))
    assert np.all(np.diff(r0.scores) <= 0)  # no pick: highest predicted IoU first
    for token in ("token_1", "token_2", "token_3"):
        p = _predictor_with(tiny_model, prefer(token))
        p.set_image(image)
        r = p.predict(points=[[60, 40]], labels=[1])
        assert r.features[0, F[token]] == 1  # the preferred token's mask comes first
        assert sorted(r.scores.tolist()) == sorted(r0.scores.tolist())
        k = int(np.argmax(r0.features[:, F[token]]))
        assert np.array_equal(r.mask(0), r0.mask(k))
        off = p.predict(points=[[60, 40]], labels=[1], use_pick=False)
        assert np.array_equal(off.scores, r0.scores)
    # several clicks, a box or a negative click: the predicted IoU decides, no features
    p = _predictor_with(tiny_model, prefer("token_3"))
    p.set_image(image)
    for kw in ({"points": [[60, 40], [70, 50]], "labels": [1, 1]}, {"box": [10, 10, 80, 60]},
               {"points": [[60, 40]], "labels": [0]}):
        r = p.predict(multimask=True, **kw)
        assert r.features is None and np.all(np.diff(r.scores) <= 0)


def test_best_first_is_respected_by_the_evaluation_and_the_annotator(tiny_model, rng):
    from napari_ultratinysam.annotation import Candidates
    from napari_ultratinysam.evaluation.protocols import _best

    image = rng.integers(0, 255, (96, 128, 3)).astype(np.uint8)
    p = _predictor_with(tiny_model, prefer("score", -1.0))  # the lowest predicted IoU first
    p.set_image(image)
    r = p.predict(points=[[60, 40]], labels=[1])
    assert r.scores[0] == r.scores.min() < r.scores.max()
    mask, score, _ = _best(r, image.shape[:2], "test")
    assert score == r.scores[0] and np.array_equal(mask, r.mask(0))
    c = Candidates.from_result(r)
    assert c.score == r.scores[0] and np.array_equal(c.mask, r.mask(0))
    # results without best_first (other predictors) are still sorted by score
    c2 = Candidates(np.stack([r.mask(i) for i in range(3)]), r.scores)
    assert c2.score == r.scores.max()


def test_pick_scores_is_the_mlp():
    p = prefer("stability")
    f = np.zeros((3, len(PICK_FEATURES)), np.float32)
    f[:, F["stability"]] = [0.2, 0.9, 0.5]
    assert pick_scores(p, f).tolist() == pytest.approx([10.2, 10.9, 10.5])


def test_onnx_folder_carries_the_pick(tiny_model, tmp_path):
    from napari_ultratinysam.inference.backends.onnx import read_onnx_folder
    from napari_ultratinysam.inference.onnx_export import export_onnx

    m = copy.deepcopy(tiny_model)
    m.cfg = copy.deepcopy(tiny_model.cfg)
    m.cfg.candidate_pick = prefer("token_2")
    export_onnx(m, tmp_path)
    cfg, _ = read_onnx_folder(tmp_path)
    assert cfg.candidate_pick == m.cfg.candidate_pick


def test_collect_pick_data_clicks_each_big_enough_object_three_ways(tiny_model, rng):
    from napari_ultratinysam.training.fit_pick import collect_pick_data

    p = _predictor_with(tiny_model, prefer("token_3"))  # the data ignore the predictor's own pick
    image = rng.integers(0, 255, (96, 128, 3)).astype(np.uint8)
    masks = np.zeros((2, 96, 128), bool)
    masks[0, 10:60, 20:90] = True     # 3,500 px: about 4,670 px squashed to 128 x 128
    masks[1, 70:76, 100:106] = True   # 36 px: 48 px squashed
    seen = []
    d = collect_pick_data(p, [(image, masks)], progress=seen.append)
    assert len(d) == 6 and seen == [1]
    assert all(f.shape == (3, len(PICK_FEATURES)) and i.shape == (3,) for f, i in zip(d.features, d.ious))
    assert all(np.all((i >= 0) & (i <= 1)) for i in d.ious)
    assert all(np.all(np.diff(f[:, F["score"]]) <= 0) for f in d.features)  # the plain order, not the pick's
    assert len(collect_pick_data(p, [(image, masks)], min_area=100)) == 3
    assert len(collect_pick_data(p, [(image, masks)], min_area_128=150)) == 3
    assert len(collect_pick_data(p, [(image, masks)], styles=("centre",), min_area_128=5000)) == 0
    with pytest.raises(ValueError, match="click style 'corner'"):
        collect_pick_data(p, [(image, masks)], styles=("corner",))


def test_features_are_computed_only_when_needed(tiny_model, rng, monkeypatch):
    import napari_ultratinysam.inference.pick as pick_mod

    calls = []
    real = pick_mod.candidate_features
    monkeypatch.setattr(pick_mod, "candidate_features", lambda *a: calls.append(1) or real(*a))
    image = rng.integers(0, 255, (96, 128, 3)).astype(np.uint8)
    plain = _predictor_with(tiny_model, None)
    plain.set_image(image)
    r = plain.predict(points=[[60, 40]], labels=[1])
    assert calls == []  # no pick: the hot path does not compute them
    f = r.features
    assert f.shape == (3, len(PICK_FEATURES)) and r.features is f and len(calls) == 1
    picked = _predictor_with(tiny_model, prefer("token_3"))
    picked.set_image(image)
    r = picked.predict(points=[[60, 40]], labels=[1])
    assert len(calls) == 2 and r.features[0, F["token_3"]] == 1 and len(calls) == 2  # reused, not recomputed
