import numpy as np
import pytest

from napari_ultratinysam.core import prompts
from napari_ultratinysam.evaluation import protocols as P
from napari_ultratinysam.evaluation.report import interactive_metrics

from .fakes import EmptyPredictor, FakeResult, OraclePredictor, make_item, ring, square, toy_dataset


def test_perfect_predictor_noc_one_and_miou_one():
    ds = toy_dataset()
    res = P.evaluate_interactive(OraclePredictor(ds), ds, max_clicks=5, progress=False)
    assert res.ious.shape == (4, 5)
    np.testing.assert_allclose(res.ious, 1.0)
    m = interactive_metrics(res.ious)
    assert m["noc@85"] == 1.0 and m["noc@90"] == 1.0
    assert m["failures@85"] == 0 and m["failures@90"] == 0
    assert m["miou@1"] == 1.0 and m["miou_curve"] == [1.0] * 5
    np.testing.assert_array_equal(res.image_index, [0, 0, 0, 1])
    np.testing.assert_array_equal(res.object_index, [0, 1, 2, 0])


def test_empty_predictor_fails_every_object():
    ds = toy_dataset()
    pred = EmptyPredictor()
    res = P.evaluate_interactive(pred, ds, max_clicks=4, progress=False)
    np.testing.assert_allclose(res.ious, 0.0)
    m = interactive_metrics(res.ious)
    assert m["noc@85"] == 4.0 and m["noc@90"] == 4.0
    assert m["failures@85"] == 4 and m["failures@90"] == 4 and m["num_objects"] == 4
    assert len(pred.calls) == 4 * 4


def test_clicks_multimask_and_mask_input_feedback():
    ds = toy_dataset()[1:]
    gt = ds[0].masks[0]
    blob = square(gt.shape, 45, 60, 10)

    class Sloppy(OraclePredictor):
        """First answer: the object plus a false-positive blob; once a negative click exists, the object."""

        def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
            r = super().predict(points, labels, box, mask_input, multimask)
            if not (np.asarray(labels) == 0).any():
                r.masks = r.masks.copy()
                r.masks[0] |= blob
                # best candidate is not first: the protocol must pick by score
                r.masks, r.scores, r.lowres = r.masks[::-1].copy(), r.scores[::-1].copy(), r.lowres[::-1].copy()
            return r

    pred = Sloppy(ds)
    res = P.evaluate_interactive(pred, ds, max_clicks=3, progress=False)
    iou1 = gt.sum() / (gt | blob).sum()
    np.testing.assert_allclose(res.ious[0], [iou1, 1.0, 1.0])
    # click 1 asks for the 3 candidates; later clicks leave it to the predictor (None: its own rule)
    assert [c["multimask"] for c in pred.calls] == [True, None]  # exact after click 2: no third click
    first, second = pred.calls
    np.testing.assert_array_equal(first["points"], [prompts.interior_point(gt)])
    assert first["mask_input"] is None
    np.testing.assert_array_equal(second["labels"], [1, 0])
    np.testing.assert_array_equal(second["points"][1], prompts.interior_point(blob))
    assert second["mask_input"].shape == (32, 32) and np.all(second["mask_input"] == 0.0)  # call 0, best cand 0
    assert interactive_metrics(res.ious)["noc@85"] == (1.0 if iou1 >= 0.85 else 2.0)


def test_min_area_max_objects_and_ignore():
    ds = toy_dataset()
    # areas: square 400, rectangle 360, ring 516, square 625 -> min_area 370 skips the rectangle only
    res = P.evaluate_interactive(OraclePredictor(ds), ds, max_clicks=2, min_area=370, progress=False)
    assert res.num_skipped == 1
    assert res.areas.tolist() == [400, 516, 625] and res.object_index.tolist() == [0, 2, 0]
    res = P.evaluate_interactive(OraclePredictor(ds), ds, max_clicks=2, max_objects=2, progress=False)
    assert len(res.ious) == 2
    # ignore: a predictor that is wrong only inside the ignore region scores 1.0
    hw = (40, 40)
    gt = square(hw, 5, 5, 20)
    ignore = square(hw, 5, 5, 20, 5)
    item = make_item([gt], ignore=ignore)

    class MissLeft(OraclePredictor):
        def predict(self, *a, **k):
            r = super().predict(*a, **k)
            r.masks = r.masks & ~ignore
            return r

    res = P.evaluate_interactive(MissLeft([item]), [item], max_clicks=2, progress=False)
    np.testing.assert_allclose(res.ious, 1.0)


def test_bad_predictor_output_names_the_problem():
    ds = toy_dataset()

    class Wrong(EmptyPredictor):
        def predict(self, **k):
            return FakeResult(np.zeros((1, 5, 5), bool), np.ones(1), np.zeros((1, 32, 32), np.float32))

    with pytest.raises(ValueError, match="predictor"):
        P.evaluate_interactive(Wrong(), ds, max_clicks=1, progress=False)


def test_squashed_area_is_cv2_nearest():
    m = np.zeros((1, 256, 256), bool)
    m[0, ::2, ::2] = True          # every even pixel: floor(i * 2) is always even -> all kept
    assert P.squashed_area(m, 128)[0] == 128 * 128
    m2 = np.zeros((1, 256, 256), bool)
    m2[0, 1::2, 1::2] = True
    assert P.squashed_area(m2, 128)[0] == 0


def _paper_item():
    # 512x512: 4x squash. A ring (centre of mass in the hole), a square, and a 20x20 square (400 px at full
    # resolution -> in the paper's GT pool, 25 px at 128 -> never prompted).
    hw = (512, 512)
    return make_item([ring(hw, 150, 150, 100, 50), square(hw, 300, 300, 150), square(hw, 20, 400, 20)],
                     class_ids=[1, 1, 2])


def test_paper_protocol_centre_of_mass_vs_interior_and_pool_bug():
    item = _paper_item()
    pred = OraclePredictor([item])
    res = P.evaluate_paper(pred, [item], progress=False)
    assert res.num_objects == 2 and res.num_gt_pool == 3 and res.num_images == 1
    # the ring's centre of mass is background: the oracle returns nothing there
    np.testing.assert_allclose(res.object_ious["1click"], [0.0, 1.0])
    np.testing.assert_allclose(res.object_ious["1click_interior"], [1.0, 1.0])
    np.testing.assert_allclose(res.object_ious["box"], [1.0, 1.0])
    assert res.miou["1click_interior"] == 1.0 and res.miou["1click"] == 0.5
    # perfect predictions, yet the paper's pool (3 objects, 2 prompted) caps recall at 2/3:
    # recall points 0..0.6 reach precision 1 -> 7/11 at every threshold
    assert res.paper_map["1click_interior"] == pytest.approx(7 / 11, abs=1e-5)
    assert res.paper_map_fixed["1click_interior"] == pytest.approx(1.0, abs=1e-5)
    assert res.coco_ap["1click_interior"] == pytest.approx(1.0)
    # 1click (centre of mass): ring FP first, square TP: rec [0, .5], prec [0, .5] (fixed pool) -> 6*.5/11
    assert res.paper_map_fixed["1click"] == pytest.approx(3 / 11, abs=1e-5)
    # multimask for every mode, as the paper
    assert all(c["multimask"] for c in pred.calls)
    assert len(pred.calls) == 2 * len(P.PAPER_MODES)


def test_paper_prompts_seeded_nested_and_inside():
    item = _paper_item()
    m = item.masks[1]
    a = P.paper_prompts(m, np.random.default_rng([0, 0, 1]))
    b = P.paper_prompts(m, np.random.default_rng([0, 0, 1]))
    for mode in P.PAPER_MODES:
        for k in a[mode]:
            np.testing.assert_array_equal(a[mode][k], b[mode][k])
    np.testing.assert_array_equal(a["5clicks"]["points"][:3], a["3clicks"]["points"])
    np.testing.assert_allclose(a["1click"]["points"][0], [374.5, 374.5])   # centre of mass
    extra = a["5clicks"]["points"][1:]
    assert all(m[int(y), int(x)] for x, y in extra) and len({tuple(p) for p in extra}) == 4
    np.testing.assert_array_equal(a["box"]["box"], [300, 300, 450, 450])  # COCO bbox edges
    res = P.evaluate_paper(OraclePredictor([item]), [item], modes=("box",), multimask_all_modes=False,
                           progress=False)
    assert list(res.paper_map) == ["box"]
    with pytest.raises(ValueError, match="modes"):
        P.evaluate_paper(OraclePredictor([item]), [item], modes=("2clicks",), progress=False)


def test_images_without_objects_are_skipped():
    import numpy as np

    from napari_ultratinysam.data.types import AnnotatedImage
    from napari_ultratinysam.evaluation.protocols import evaluate_interactive

    class Never:
        def set_image(self, image):
            raise AssertionError("no object: the image must not even be embedded")

    empty = AnnotatedImage(image=np.zeros((10, 12, 3), np.uint8), masks=np.zeros((0, 10, 12), bool),
                           class_ids=np.zeros(0))
    res = evaluate_interactive(Never(), [empty], max_clicks=3, progress=False)
    assert res.ious.shape == (0, 3)
