"""Full-resolution refinement (refine.py) and how the predictor applies it."""
import numpy as np
import pytest

from napari_ultratinysam.inference.predictor import Predictor
from napari_ultratinysam.inference.refine import RefineConfig, merge_at_click, obey_clicks, refine


def _square_image(h=256, w=256, box=(60, 70, 190, 180)):
    """A bright square (x0, y0, x1, y1) on a dark, slightly textured background, and its mask."""
    rng = np.random.default_rng(0)
    img = rng.integers(20, 40, size=(h, w, 3)).astype(np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 200
    gt = np.zeros((h, w), bool)
    gt[y0:y1, x0:x1] = True
    return img, gt


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


class ScriptedBackend:
    """Returns the low-res logits it is given for every decode (all 4 tokens), whatever the prompt."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.lowres_size = cfg.image_size // 4
        self.logits = None

    def encode(self, x):
        return {"x": x}

    def decode(self, feats, coords, labels, mask_input):
        lg = np.repeat(self.logits[None], 4, axis=0).astype(np.float32)
        return lg, np.array([0.9, 0.8, 0.7, 0.6], np.float32), 1.0


def _lowres_of(mask, size=128):
    """Coarse low-res logits (size/4 grid over the letterboxed square) of an image-resolution mask."""
    h, w = mask.shape
    l = size // 4
    s = size / max(h, w)
    nh, nw = round(h * s), round(w * s)
    out = np.full((l, l), -6.0, np.float32)
    ys = np.minimum(((np.arange(l) + 0.5) * 4 / s).astype(int), h - 1)
    xs = np.minimum(((np.arange(l) + 0.5) * 4 / s).astype(int), w - 1)
    grid = mask[ys][:, xs]
    valid_y, valid_x = (np.arange(l) * 4 < nh), (np.arange(l) * 4 < nw)
    out[np.ix_(valid_y, valid_x)] = np.where(grid[np.ix_(valid_y, valid_x)], 6.0, -6.0)
    return out


def test_obey_clicks_puts_a_disc_in_or_out():
    m = np.zeros((50, 50), bool)
    m[10:40, 10:40] = True
    out = obey_clicks(m, np.array([[45, 45], [25, 25]]), np.array([1, 0]), radius=3)
    assert out[45, 45] and out[42, 45] and not out[25, 25] and not out[25, 28]
    assert out[12, 12] and not m[45, 45]  # the rest is kept; the input is not changed
    assert obey_clicks(m, np.array([[20, 20]]), np.array([1]), radius=3) is m  # already obeyed: no copy


def test_refine_snaps_a_coarse_boundary_to_the_image_edges():
    img, gt = _square_image()
    coarse = np.zeros_like(gt)
    coarse[60:190, 50:200] = True  # the model's mask: ~10 px too large on every side
    logits = np.where(coarse, 3.0, -3.0).astype(np.float32)
    seg = refine(img, logits, np.array([[120, 120]]), np.array([1]), cell_px=16.0)
    assert _iou(coarse, gt) < 0.8
    assert _iou(seg, gt) > 0.97


def test_merge_at_click_changes_only_the_region_at_the_click():
    prev = np.zeros((100, 100), bool)
    prev[20:80, 20:80] = True
    new = np.zeros_like(prev)  # a model that dropped everything after a negative click at (30, 30)
    out = merge_at_click(prev, new, (30, 30), radius=12)
    assert not out[30, 30] and out[60, 60]
    assert out.sum() > 0.8 * prev.sum()
    grow = prev.copy()
    grow[20:80, 80:95] = True  # a positive click at (88, 50) in a missing strip
    grow[0:5, 0:5] = True       # ... and a change elsewhere that the click did not ask for
    out = merge_at_click(prev, grow, (88, 50), radius=100)
    assert out[50, 90] and not out[2, 2]


@pytest.fixture
def scripted(tiny_model):
    return ScriptedBackend(tiny_model.cfg)


def test_a_click_is_always_obeyed(scripted):
    img, gt = _square_image()
    p = Predictor(scripted, zoom_refine=False)
    p.set_image(img)
    scripted.logits = np.full((32, 32), -6.0, np.float32)  # the model sees nothing at all
    r = p.predict(points=[[120, 120]], labels=[1])
    assert all(r.mask(i)[120, 120] for i in range(len(r)))
    scripted.logits = _lowres_of(gt)
    r1 = p.predict(points=[[120, 120]], labels=[1])
    r2 = p.predict(points=[[120, 120], [125, 125]], labels=[1, 0], mask_input=r1.lowres[0])
    assert not r2.mask(0)[125, 125] and r2.mask(0)[120, 120]  # the model ignored the negative click: obeyed anyway


def test_predict_with_mask_input_refines_at_full_resolution(scripted):
    """The plain SAM-style call (all clicks, the previous lowres as mask_input) gives the refined mask."""
    img, gt = _square_image()
    plain = Predictor(scripted, zoom_refine=False, refine=False)
    p = Predictor(scripted, zoom_refine=False)
    coarse = np.zeros_like(gt)
    coarse[60:190, 50:200] = True
    scripted.logits = _lowres_of(coarse)
    for pred in (plain, p):
        pred.set_image(img)
    pts, lab = [[120, 120]], [1]
    r1, q1 = p.predict(points=pts, labels=lab), plain.predict(points=pts, labels=lab)
    pts2, lab2 = pts + [[55, 65]], lab + [0]  # a negative click in the too-large corner
    r2 = p.predict(points=pts2, labels=lab2, mask_input=r1.lowres[0])
    q2 = plain.predict(points=pts2, labels=lab2, mask_input=q1.lowres[0])
    assert _iou(r1.mask(0), gt) > max(0.95, _iou(q1.mask(0), gt) + 0.1)  # the first click is refined too
    assert _iou(r2.mask(0), gt) >= _iou(r1.mask(0), gt) and _iou(r2.mask(0), gt) > _iou(q2.mask(0), gt)
    assert not r2.mask(0)[65, 55] and q2.mask(0)[65, 55]


def test_refine_config_switches_it_off(scripted):
    img, gt = _square_image()
    scripted.logits = np.full((32, 32), -6.0, np.float32)
    p = Predictor(scripted, zoom_refine=False, refine=False)
    p.set_image(img)
    assert not p.predict(points=[[120, 120]], labels=[1]).mask(0).any()
    p2 = Predictor(scripted, zoom_refine=False, refine=RefineConfig(click_radius_px=5, first_click=False))
    p2.set_image(img)
    assert p2.predict(points=[[120, 120]], labels=[1]).mask(0).sum() == pytest.approx(np.pi * 25, rel=0.2)
    p3 = Predictor(scripted, zoom_refine=False)  # refined: the click's surroundings up to the image's edges
    p3.set_image(img)
    m = p3.predict(points=[[120, 120]], labels=[1]).mask(0)
    assert m[120, 120] and 100 < m.sum() and (m & ~gt).sum() == 0


def test_refine_false_for_one_call_gives_the_models_mask(scripted):
    """A hover preview asks for the model's mask (fast); the click that follows is refined."""
    img, gt = _square_image()
    scripted.logits = np.full((32, 32), -6.0, np.float32)
    p = Predictor(scripted, zoom_refine=False)
    p.set_image(img)
    assert not p.predict(points=[[120, 120]], labels=[1], refine=False).mask(0).any()
    assert p.predict(points=[[120, 120]], labels=[1]).mask(0)[120, 120]


def test_prompts_outside_the_image_are_refused_and_boxes_clipped(scripted):
    img, gt = _square_image()
    scripted.logits = _lowres_of(gt)
    p = Predictor(scripted, zoom_refine=False)
    p.set_image(img)
    with pytest.raises(ValueError, match=r"points: \(300, 10\) lies outside the image \(256 x 256"):
        p.predict(points=[[120, 120], [300, 10]], labels=[1, 0])
    with pytest.raises(ValueError, match="box: .* lies outside the image"):
        p.predict(box=[300, 300, 400, 400])
    r = p.predict(box=[50, 60, 400, 200])  # partly outside: clipped, a mask all the same
    assert r.mask(0).any()
    assert p.predict(points=[[256, 256]], labels=[1]).mask(0)[255, 255]  # the far edge is still inside


def test_click_depth_is_the_chessboard_distance_to_the_other_label():
    from scipy import ndimage

    from napari_ultratinysam.inference.refine import click_depth

    rng = np.random.default_rng(3)
    for _ in range(30):
        m = ndimage.binary_opening(rng.random((60, 80)) < 0.6, iterations=2)
        y, x = int(rng.integers(60)), int(rng.integers(80))
        src = m if m[y, x] else ~m
        if src.all():
            continue
        want = ndimage.distance_transform_cdt(src, metric="chessboard")[y, x]
        assert click_depth(m, x, y) == want


def test_a_large_region_is_decided_at_a_fraction_of_the_resolution():
    """A region over max_side px is refined on block means and upsampled: nearly the full-resolution answer, and
    the clicks still obeyed exactly."""
    from napari_ultratinysam.inference.refine import Refiner

    img, gt = _square_image(h=512, w=512, box=(120, 140, 380, 360))
    coarse = np.zeros_like(gt)
    coarse[120:360, 100:400] = True  # ~20 px too wide on both sides
    region = ((90, 90, 430, 400), np.where(coarse, 3.0, -3.0).astype(np.float32)[90:400, 90:430])
    pts, lab = np.array([[250.0, 250.0], [110.0, 250.0]]), np.array([1, 0])
    full = Refiner(RefineConfig(max_side=4096)).correct("k", img, region, pts, lab, 32.0, None)
    small = Refiner(RefineConfig(max_side=128)).correct("k", img, region, pts, lab, 32.0, None)
    assert _iou(full, gt) > 0.97 and _iou(small, gt) > 0.95
    assert _iou(small, full) > 0.95
    assert small[250, 250] and not small[250, 110]
