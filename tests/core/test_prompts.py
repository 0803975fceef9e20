import numpy as np
import pytest

from napari_ultratinysam.core import prompts


def _sq(hw, y0, x0, sy, sx=None):
    m = np.zeros(hw, dtype=bool)
    m[y0:y0 + sy, x0:x0 + (sx or sy)] = True
    return m


def _inside(mask, pt):
    x, y = int(pt[0]), int(pt[1])
    return bool(mask[y, x])


def _ring(hw=(60, 60), c=(30, 30), r_out=20, r_in=12):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    d2 = (yy - c[0]) ** 2 + (xx - c[1]) ** 2
    return (d2 <= r_out ** 2) & (d2 >= r_in ** 2)


def test_interior_point_rectangle_is_centre_and_float32_xy():
    m = _sq((40, 40), 10, 5, 11, 21)  # rows 10..20, cols 5..25
    p = prompts.interior_point(m)
    assert p.dtype == np.float32 and p.shape == (2,)
    np.testing.assert_array_equal(p, [15, 15])


def test_interior_point_image_border_counts_as_boundary():
    full = np.ones((9, 13), dtype=bool)
    np.testing.assert_array_equal(prompts.interior_point(full), [6, 4])


def test_interior_point_inside_ring_where_centre_of_mass_is_not():
    m = _ring()
    com = prompts.centre_of_mass(m)
    assert not _inside(m, np.round(com))  # the paper's click lands in the hole
    p = prompts.interior_point(m)
    assert _inside(m, p)
    dist = prompts.border_distance(m)
    assert dist[int(p[1]), int(p[0])] == dist.max()


def test_interior_point_inside_u_shape():
    m = np.zeros((50, 50), dtype=bool)
    m[5:45, 5:15] = True
    m[5:45, 35:45] = True
    m[35:45, 5:45] = True
    assert not _inside(m, np.round(prompts.centre_of_mass(m)))
    assert _inside(m, prompts.interior_point(m))


def test_interior_point_ties_deterministic_or_sampled():
    m = _ring()
    a, b = prompts.interior_point(m), prompts.interior_point(m)
    np.testing.assert_array_equal(a, b)
    dist = prompts.border_distance(m)
    seen = set()
    for s in range(20):
        p = prompts.interior_point(m, rng=np.random.default_rng(s))
        assert dist[int(p[1]), int(p[0])] == dist.max()
        seen.add(tuple(p))
    assert len(seen) > 1  # the ring's ridge has many tied pixels


def test_interior_point_empty_raises():
    with pytest.raises(ValueError, match="mask"):
        prompts.interior_point(np.zeros((5, 5), bool))


def test_click_from_error_positive_in_largest_false_negative():
    hw = (80, 80)
    big, small, blob = _sq(hw, 5, 5, 21), _sq(hw, 60, 60, 5), _sq(hw, 40, 40, 10)
    gt = big | small
    pred = small | blob  # FN = big (441 px), FP = blob (100 px)
    pt, lab = prompts.click_from_error(gt, pred)
    assert lab == 1
    np.testing.assert_array_equal(pt, [15, 15])


def test_click_from_error_negative_in_largest_false_positive():
    hw = (80, 80)
    big, blob, fn = _sq(hw, 5, 5, 21), _sq(hw, 40, 40, 11), _sq(hw, 70, 70, 3)
    gt = big | fn
    pred = big | blob  # FP = blob (121 px), FN = 9 px
    pt, lab = prompts.click_from_error(gt, pred)
    assert lab == 0
    np.testing.assert_array_equal(pt, [45, 45])


def test_click_from_error_picks_largest_component_not_union():
    hw = (60, 60)
    gt = _sq(hw, 0, 0, 60)
    pred = gt.copy()
    pred[5:10, 5:10] = False      # FN 25 px
    pred[30:42, 30:42] = False    # FN 144 px
    pt, lab = prompts.click_from_error(gt, pred)
    assert lab == 1 and 30 <= pt[0] < 42 and 30 <= pt[1] < 42


def test_click_from_error_ignore_and_depth_mode():
    hw = (60, 120)
    gt = _sq(hw, 2, 2, 2, 100)              # thin FN: 200 px, depth 1
    pred = gt.copy()
    pred[:] = False
    pred |= _sq(hw, 30, 30, 10)             # compact FP: 100 px, depth 5
    pt, lab = prompts.click_from_error(gt, pred, mode="area")
    assert lab == 1 and _inside(gt, pt)
    pt, lab = prompts.click_from_error(gt, pred, mode="depth")
    assert lab == 0 and _inside(pred, pt)
    ignore = gt.copy()                      # ignoring the FN leaves only the FP
    pt, lab = prompts.click_from_error(gt, pred, ignore=ignore)
    assert lab == 0
    with pytest.raises(ValueError, match="no error"):
        prompts.click_from_error(gt, gt)
    with pytest.raises(ValueError, match="pred"):
        prompts.click_from_error(gt, pred[:10])
    with pytest.raises(ValueError, match="mode"):
        prompts.click_from_error(gt, pred, mode="nope")


def test_random_points_inside_and_distinct():
    m = _ring()
    rng = np.random.default_rng(0)
    pts = prompts.random_points(m, 50, rng)
    assert pts.shape == (50, 2) and pts.dtype == np.float32
    assert all(_inside(m, p) for p in pts)
    assert len({tuple(p) for p in pts}) == 50
    tiny = _sq((10, 10), 3, 3, 1)
    np.testing.assert_array_equal(prompts.random_points(tiny, 3, rng), [[3, 3]] * 3)
    assert _inside(m, prompts.random_point(m, rng))


def test_tight_and_noisy_box():
    m = _sq((100, 200), 10, 20, 30, 50)     # rows 10..39, cols 20..69
    np.testing.assert_array_equal(prompts.tight_box(m), [20, 10, 69, 39])
    tb = prompts.tight_box(m)
    bound = np.array([4.9, 2.9, 4.9, 2.9]) + 1e-4  # 0.1 * (49, 29, 49, 29)
    boxes = np.stack([prompts.noisy_box(m, np.random.default_rng(s)) for s in range(200)])
    assert boxes.dtype == np.float32
    assert np.all(np.abs(boxes - tb) <= bound)
    assert np.all(boxes.std(axis=0) > 0.5)
    big = _sq((100, 200), 0, 0, 100, 200)     # 20 px cap and clamping to the image
    bb = np.stack([prompts.noisy_box(big, np.random.default_rng(s), max_px=20) for s in range(100)])
    assert bb.min() >= 0 and np.all(bb[:, 2] <= 199) and np.all(bb[:, 3] <= 99)
    assert bb[:, 0].max() <= 20 + 1e-4 and bb[:, 0].max() > 5


def test_correction_click_labels_and_gt_sampling():
    hw = (40, 40)
    gt = _sq(hw, 0, 0, 20)
    pred = _sq(hw, 0, 10, 20)                # FN cols 0..9, FP cols 20..29
    fn, fp = gt & ~pred, pred & ~gt
    labs = []
    for s in range(100):
        pt, lab = prompts.correction_click(gt, pred, np.random.default_rng(s), prob_from_gt=0.0)
        assert _inside(fn if lab else fp, pt)
        labs.append(lab)
    assert 20 < sum(labs) < 80               # uniform over the union of two equal regions
    for s in range(20):
        pt, lab = prompts.correction_click(gt, pred, np.random.default_rng(s), prob_from_gt=1.0)
        assert lab == 1 and _inside(gt, pt)
    pt, lab = prompts.correction_click(gt, gt, np.random.default_rng(0), prob_from_gt=0.0)
    assert lab == 0 and not _inside(gt, pt)  # no error: negative on background
    ignore = ~gt
    ignore[39, 39] = False                   # the only background pixel outside the ignore region
    pt, lab = prompts.correction_click(gt, gt, np.random.default_rng(0), prob_from_gt=0.0, ignore=ignore)
    assert lab == 0 and tuple(pt) == (39, 39)


def test_correction_click_error_interior_places_clicks_as_the_evaluation_clicker():
    hw = (60, 60)
    gt = _sq(hw, 0, 0, 40)
    pred = _sq(hw, 0, 10, 40)                # FN cols 0..9 (400 px), FP cols 40..49 (400 px) + more FP below
    pred[40:60, 0:30] = True                 # the largest error region: a 20 x 30 false positive
    want = prompts.click_from_error(gt, pred)
    for s in range(20):
        pt, lab = prompts.correction_click(gt, pred, np.random.default_rng(s), prob_from_gt=0.0,
                                           p_error_interior=1.0)
        assert lab == want[1] == 0 and np.array_equal(pt, want[0])
    random_pts = {tuple(prompts.correction_click(gt, pred, np.random.default_rng(s), prob_from_gt=0.0)[0])
                  for s in range(20)}
    assert len(random_pts) > 10              # the default stays SAM2's uniform draw over the errors
