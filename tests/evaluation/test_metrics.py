import numpy as np
import pytest

from napari_ultratinysam.evaluation import metrics as M


def test_mask_iou_and_ignore():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True          # 4 px
    b[:2, :4] = True          # 8 px, overlap 4
    assert M.mask_iou(a, b) == pytest.approx(0.5)
    ignore = np.zeros((4, 4), bool)
    ignore[:, 2:] = True      # the disagreement is ignored
    assert M.mask_iou(a, b, ignore) == pytest.approx(1.0)
    assert M.mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="pred"):
        M.mask_iou(a, b[:3])


def test_iou_matrix_matches_pairwise():
    rng = np.random.default_rng(0)
    p, g = rng.random((3, 9, 7)) > 0.5, rng.random((4, 9, 7)) > 0.5
    ig = rng.random((9, 7)) > 0.8
    mat = M.iou_matrix(p, g, ig)
    ref = np.array([[M.mask_iou(a, b, ig) for b in g] for a in p])
    np.testing.assert_allclose(mat, ref)
    assert M.iou_matrix(p[:0], g).shape == (0, 4)


def test_noc_failures_miou():
    ious = np.array([[0.9, 0.95, 0.97],      # NoC@85 = 1, NoC@90 = 1
                     [0.5, 0.86, 0.88],      # NoC@85 = 2, NoC@90 fails -> 3
                     [0.1, 0.2, 0.3]])       # fails both -> 3
    n, f = M.noc(ious, 0.85)
    np.testing.assert_array_equal(n, [1, 2, 3])
    np.testing.assert_array_equal(f, [False, False, True])
    n, f = M.noc(ious[1], 0.90)
    assert int(n) == 3 and bool(f)
    assert M.mean_noc(ious, 0.85) == pytest.approx(2.0)
    assert M.mean_noc(ious, 0.90) == pytest.approx(7 / 3)
    assert M.failures(ious, 0.85) == 1 and M.failures(ious, 0.90) == 2
    np.testing.assert_allclose(M.miou_curve(ious), [0.5, 2.01 / 3, 2.15 / 3])
    assert M.miou_at(ious, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k"):
        M.miou_at(ious, 4)


def _toy():
    # One image, 3 GT objects in stored order: g0 (cat 1), g1 (cat 1), g2 (cat 2, in the paper's pool but
    # too small at 128x128 to be prompted). Predictions in stored order: p1 (prompted from g1), p0 (from g0).
    ious = [np.array([[0.62, 0.72, 0.0],     # p1: overlaps g0 (0.62) more than needed at low thresholds
                      [0.92, 0.00, 0.0]])]   # p0
    return ious, [np.array([1, 1])], [np.array([1, 1, 2])]


def test_paper_map_three_object_toy_hand_computed():
    # Greedy, in stored order, FIRST unused same-category GT with IoU >= t; pool = 3 objects.
    # t = .50 .55 .60: p1 -> g0 (TP), p0 finds g0 used (FP): rec [1/3, 1/3], prec [1, 1/2]
    #                  11-point: recall points 0, .1, .2, .3 reach precision 1 -> AP = 4/11
    # t = .65 .70:     p1 -> g1 (TP), p0 -> g0 (TP): rec [1/3, 2/3], prec [1, 1] -> points 0...6 -> 7/11
    # t = .75 ... .90: p1 FP, p0 -> g0 TP: rec [0, 1/3], prec [0, 1/2] -> points 0...3 at 1/2 -> 2/11
    # t = .95:         both FP -> 0
    # mAP = (3 * 4/11 + 2 * 7/11 + 4 * 2/11 + 0) / 10 = 34/110 = 0.30909...
    ious, pc, gc = _toy()
    per_t = M.paper_ap_per_threshold(ious, pc, gc)
    np.testing.assert_allclose(per_t, [4 / 11] * 3 + [7 / 11] * 2 + [2 / 11] * 4 + [0], atol=1e-5)
    assert M.paper_map(ious, pc, gc) == pytest.approx(34 / 110, abs=1e-5)


def test_paper_map_fixed_pool_toy_hand_computed():
    # Same predictions, pool = the 2 prompted objects (g2 dropped):
    # t .50-.60: rec [.5, .5], prec [1, .5] -> points 0...5 -> 6/11;  t .65-.70: rec [.5, 1] -> 11/11
    # t .75-.90: rec [0, .5], prec [0, .5] -> 6 * .5 / 11;  t .95: 0
    # mAP = (3 * 6/11 + 2 * 1 + 4 * 3/11) / 10 = 52/110
    ious, pc, gc = _toy()
    assert M.paper_map([ious[0][:, :2]], pc, [gc[0][:2]]) == pytest.approx(52 / 110, abs=1e-5)


def test_paper_map_category_and_image_rules():
    # A prediction never matches a GT of another category, and an image without predictions adds no GT.
    one = [np.array([[0.99]])]
    assert M.paper_map(one, [np.array([3])], [np.array([4])]) == 0.0
    both = one + [np.zeros((0, 5))]
    assert M.paper_map(both, [np.array([1]), np.zeros(0)], [np.array([1]), np.ones(5)]) == pytest.approx(1, abs=1e-5)
    assert M.voc11_ap(np.array([1, 1]), np.array([0, 0]), 2) == pytest.approx(1.0, abs=1e-5)
    assert M.voc11_ap(np.zeros(0), np.zeros(0), 3) == 0.0


def test_coco_ap_toy_hand_computed():
    # One category, two images. A: GT gA; d1 (score .9, IoU .57), d2 (score .6, IoU .82).
    # B: GT gB; d3 (score .7, IoU .30). Ranking d1, d3, d2; 2 GT.
    # t = .50, .55: d1 takes gA (higher score first), d2 FP, d3 FP: tp [1,0,0], rec .5 -> precision 1 at
    #               recall points 0.00..0.50 (51 of 101) -> 51/101
    # t = .60 ... .80 (5): d1 FP, d2 TP: tp [0,0,1], prec [0,0,1/3] -> envelope 1/3 for 51 points -> 17/101
    # t = .85 ... .95: 0.  AP = (2 * 51 + 5 * 17) / 1010 = 187/1010
    ious = [np.array([[0.57], [0.82]]), np.array([[0.30]])]
    scores = [np.array([0.9, 0.6]), np.array([0.7])]
    pc, gc = [np.array([1, 1]), np.array([1])], [np.array([1]), np.array([1])]
    per_t = M.coco_ap_per_threshold(ious, scores, pc, gc)
    np.testing.assert_allclose(per_t, [51 / 101] * 2 + [17 / 101] * 5 + [0] * 3)
    assert M.coco_ap(ious, scores, pc, gc) == pytest.approx(187 / 1010)
    # a second category with GT but no detection counts as AP 0 -> the mean over categories halves
    gc2 = [np.array([1, 2]), np.array([1])]
    ious2 = [np.array([[0.57, 0.0], [0.82, 0.0]]), np.array([[0.30]])]
    assert M.coco_ap(ious2, scores, pc, gc2) == pytest.approx(187 / 2020)


def test_coco_ap_perfect_and_best_iou_matching():
    # Perfect predictions -> AP 1. COCO (unlike the paper) matches the unmatched GT of highest IoU.
    ious = [np.array([[0.6, 0.9], [0.0, 0.0]])]
    scores = [np.array([0.9, 0.8])]
    pc, gc = [np.array([1, 1])], [np.array([1, 1])]
    per_t = M.coco_ap_per_threshold(ious, scores, pc, gc)
    # d1 -> g1 (0.9) up to t = .9; d2 FP; recall .5 with precision 1 -> 51/101; t = .95 -> 0
    np.testing.assert_allclose(per_t, [51 / 101] * 9 + [0])
    eye = [np.eye(3)]
    assert M.coco_ap(eye, [np.array([0.5, 0.4, 0.3])], [np.ones(3)], [np.ones(3)]) == pytest.approx(1.0)
    assert np.isnan(M.coco_ap([np.zeros((0, 0))], [np.zeros(0)], [np.zeros(0)], [np.zeros(0)]))
    with pytest.raises(ValueError, match="scores"):
        M.coco_ap(eye, [np.ones(2)], [np.ones(3)], [np.ones(3)])
    with pytest.raises(ValueError, match="ious: image 0"):
        M.paper_map([np.ones((2, 3))], [np.ones(2)], [np.ones(2)])


def test_iou_matrix_exact_on_edge_cases():
    # pycocotools' RLE IoU gives the very numbers of pixel counting (mask_iou), with or without an ignore region:
    # empty masks, an all-ignored image, odd sizes, no pixels at all
    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (7, 3), (13, 17), (0, 4)]:
        p, g = rng.random((4, h, w)) < 0.4, rng.random((3, h, w)) < 0.6
        p[0], g[1] = False, False
        if h * w:
            p[1], g[2] = True, p[2]
        for ig in (None, rng.random((h, w)) < 0.3, np.ones((h, w), bool)):
            mat = M.iou_matrix(p, g, ig)
            ref = np.array([[M.mask_iou(a, b, ig) for b in g] for a in p])
            assert mat.dtype == np.float64 and mat.shape == (4, 3)
            np.testing.assert_array_equal(mat, ref)
    assert M.iou_matrix(np.zeros((2, 5, 5)), np.zeros((0, 5, 5))).shape == (2, 0)


def _coco_ap_cases():
    """Per-image IoUs with ties (equal IoUs: COCO takes the last GT; IoUs on a threshold), equal scores within and
    across images, classes with GT but no detection and the reverse, images with neither, class -1."""
    rng = np.random.default_rng(21)
    for n_img, n_cls, max_dets in [(1, 1, 100), (3, 2, 100), (5, 3, 2), (6, 4, 100), (4, 2, 1)]:
        ious, scores, pcs, gcs = [], [], [], []
        for i in range(n_img):
            p, g = int(rng.integers(0, 6)), int(rng.integers(0, 5))
            m = np.round(rng.random((p, g)), 2)
            m[m < 0.3] = 0.0
            if p and g and i % 2:
                m[0, :] = 0.75
                m[:, 0] = np.where(rng.random(p) < 0.5, 0.5, m[:, 0])
            ious.append(m)
            scores.append(np.round(rng.random(p), 1))
            pcs.append(rng.integers(-1, n_cls, p))
            gcs.append(rng.integers(-1, n_cls, g))
        yield (ious, scores, pcs, gcs), max_dets


# What the hand-written COCOeval port (before pycocotools' COCOeval) gave for _coco_ap_cases: (T,) at
# COCO_IOU_THRESHOLDS and at [0.3, 0.5, 0.75, 1.0]
COCO_AP_FIXED = [
    ([0.49999999999999994] * 3 + [0.0] * 7, [0.49999999999999994] * 2 + [0.0] * 2),
    ([0.37623762376237624] * 6 + [0.0] * 4, [0.37623762376237624] * 3 + [0.0]),
    ([0.13778877887788776] * 4 + [0.11633663366336632] * 2 + [0.08415841584158414] * 2 + [0.0] * 2,
     [0.13778877887788776] * 2 + [0.11633663366336632, 0.0]),
    ([0.13325082508250824] * 3 + [0.10169141914191418] * 3 + [0.09047029702970297] * 3 + [0.01051980198019802],
     [0.13325082508250824] * 2 + [0.10169141914191418, 0.01051980198019802]),
    ([0.5016501650165016] + [0.16831683168316827] * 5 + [0.0] * 4,
     [0.5016501650165016] * 2 + [0.16831683168316827, 0.0]),
]


def test_coco_ap_unchanged_on_fixed_cases():
    for (args, max_dets), (per_t, custom) in zip(_coco_ap_cases(), COCO_AP_FIXED, strict=True):
        assert M.coco_ap_per_threshold(*args, max_dets=max_dets).tolist() == per_t
        assert M.coco_ap(*args, max_dets=max_dets) == float(np.mean(per_t))
        got = M.coco_ap_per_threshold(*args, thresholds=np.array([0.3, 0.5, 0.75, 1.0]), max_dets=max_dets)
        assert got.tolist() == custom
