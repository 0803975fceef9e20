import numpy as np
import pytest

from napari_ultratinysam.inference.predictor import Predictor


class RecordingBackend:
    """Decoder returns a positive disc at the first prompt's model coordinates; records every call."""

    def __init__(self, cfg, radius_cells=3.0):
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.lowres_size = cfg.image_size // 4
        self.encode_calls = 0
        self.decode_calls = []
        self.r = radius_cells

    def encode(self, x):
        self.encode_calls += 1
        return {"x": x}

    def decode(self, feats, coords, labels, mask_input):
        self.decode_calls.append((coords.copy(), labels.copy(), mask_input))
        l = self.lowres_size
        yy, xx = np.mgrid[:l, :l]
        cx, cy = coords[0] / 4.0
        disc = np.where((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < self.r ** 2, 4.0, -4.0)
        logits = np.stack([disc, disc, -disc, disc * 0 - 4]).astype(np.float32)
        return logits, np.array([0.5, 0.9, 0.2, 0.1], np.float32), 1.0


@pytest.fixture
def rec(tiny_model):
    return RecordingBackend(tiny_model.cfg)


def test_click_maps_to_model_coordinates_on_an_asymmetric_image(rec):
    p = Predictor(rec, zoom_refine=False)
    img = np.zeros((100, 300, 3), np.uint8)
    p.set_image(img)
    r = p.predict(points=[[150, 50]], labels=[1])
    coords, labels, _ = rec.decode_calls[-1]
    assert np.allclose(coords, [[64.0, 21.5]], atol=1e-3) and labels.tolist() == [1.0]
    assert r.masks.shape == (3, 100, 300)
    assert r.masks[0][50, 150]  # the disc lands under the click
    assert list(r.scores) == sorted(r.scores, reverse=True) and r.scores[0] == pytest.approx(0.9)


def test_box_in_a_corner(rec):
    p = Predictor(rec, zoom_refine=False)
    p.set_image(np.zeros((200, 100), np.uint16))
    r = p.predict(box=[100, 200, 80, 170])  # corners given in any order, bottom-right corner of the image
    coords, labels, _ = rec.decode_calls[-1]
    assert labels.tolist() == [2.0, 3.0]
    assert np.allclose(coords, [[51.2, 108.8], [64.0, 128.0]], atol=1e-3)
    assert r.masks.shape == (1, 200, 100)  # a box gives the single-mask output


def test_encoder_runs_once_per_image_and_cache_is_lru(rec):
    p = Predictor(rec, zoom_refine=False, cache_size=2)
    a, b, c = (np.full((50, 60), v, np.uint8) for v in (1, 2, 3))
    p.set_image(a)
    for _ in range(5):
        p.predict(points=[[10, 10]])
    assert rec.encode_calls == 1
    p.set_image(b)
    p.set_image(a)
    assert rec.encode_calls == 2
    p.set_image(c)  # evicts b
    p.set_image(a)
    assert rec.encode_calls == 3
    p.set_image(b)
    assert rec.encode_calls == 4


def test_multimask_only_for_a_single_click(rec):
    p = Predictor(rec, zoom_refine=False)
    p.set_image(np.zeros((64, 64, 3), np.uint8))
    assert len(p.predict(points=[[5, 5]]).masks) == 3
    assert len(p.predict(points=[[5, 5], [9, 9]], labels=[1, 0]).masks) == 1
    assert len(p.predict(points=[[5, 5]], box=[0, 0, 20, 20]).masks) == 1
    assert len(p.predict(points=[[5, 5]], multimask=False).masks) == 1


def test_mask_input_is_passed_through(rec):
    p = Predictor(rec, zoom_refine=False)
    p.set_image(np.zeros((64, 64, 3), np.uint8))
    r = p.predict(points=[[5, 5]])
    p.predict(points=[[5, 5], [20, 20]], labels=[1, 1], mask_input=r.lowres[0])
    assert rec.decode_calls[-1][2].shape == (32, 32)


@pytest.mark.parametrize("kw, msg", [
    (dict(), "at least one point or a box"),
    (dict(points=[[1, 2, 3]]), r"\(N, 2\) array"),
    (dict(points=[[1, 2]], labels=[1, 0]), "2 labels for 1 points"),
    (dict(points=[[1, 2]], labels=[5]), "must be 1 .* or 0"),
    (dict(points=[[np.nan, 2]]), "finite"),
    (dict(box=[1, 2, 3]), "box: expected"),
    (dict(points=[[1, 2]], mask_input=np.zeros((16, 16))), "mask_input: expected low-res logits"),
])
def test_bad_prompts_get_one_clear_error(rec, kw, msg):
    p = Predictor(rec, zoom_refine=False)
    p.set_image(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=msg):
        p.predict(**kw)


def test_predict_before_set_image(rec):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(rec).predict(points=[[1, 1]])


def test_zoom_refine_crops_small_objects_in_big_images(rec):
    p = Predictor(rec, zoom_refine=True)
    img = np.zeros((1000, 1200, 3), np.uint8)
    p.set_image(img)
    r = p.predict(points=[[900, 700]])
    assert rec.encode_calls == 2 and r.zoomed  # the full view, then the crop around the object
    assert r.masks[0][700, 900] and r.masks.shape == (3, 1000, 1200)
    p.predict(points=[[902, 701]])
    assert rec.encode_calls == 2  # the snapped crop embedding is reused for a nearby click
    assert not Predictor(rec, zoom_refine=False).zoom_refine
    # full view only (the annotator's fast first stage): not zoomed, but says that zooming would apply
    r = p.predict(points=[[300, 200]], zoom_refine=False)
    assert not r.zoomed and r.zoomable and rec.encode_calls == 2
    assert r.mask(0)[200, 300] and r.mask(0).shape == (1000, 1200)
    # candidates are upsampled one at a time, on demand, and kept
    assert r.mask(1) is r.mask(1) and r.masks.shape == (3, 1000, 1200)
    np.testing.assert_array_equal(r.masks[0], r.mask(0))


def test_zoom_in_refines_a_first_result_without_decoding_it_again(rec):
    p = Predictor(rec, zoom_refine=True)
    img = np.zeros((1000, 1200, 3), np.uint8)
    p.set_image(img)
    full = p.predict(points=[[300, 200]], zoom_refine=False)  # the annotator's first stage
    n_dec, n_enc = len(rec.decode_calls), rec.encode_calls
    z = p.zoom_in(full)
    assert z.zoomed and len(rec.decode_calls) == n_dec + 1 and rec.encode_calls == n_enc + 1  # the crop only
    direct = p.predict(points=[[300, 200]])  # the same as zooming in one call
    np.testing.assert_array_equal(z.masks, direct.masks)
    np.testing.assert_array_equal(z.scores, direct.scores)
    assert z.lowres is full.lowres  # the full-view logits stay the ones fed back
    big = p.predict(points=[[600, 500]], zoom_refine=False)
    assert big.zoomable and p.zoom_in(big).zoomed
    p.set_image(np.ones((1000, 1200, 3), np.uint8))
    assert p.zoom_in(big) is None  # another image is current now
    small = np.zeros((2 * p.image_size, 2 * p.image_size, 3), np.uint8)
    p.set_image(small)
    r = p.predict(points=[[p.image_size // 2, p.image_size // 2]], zoom_refine=False)
    assert not r.zoomable and p.zoom_in(r) is None  # small images are never zoomed


def test_torch_and_onnx_backends_agree(paper_model):
    rng = np.random.default_rng(0)
    img = (rng.random((120, 200, 3)) * 255).astype(np.uint8)
    pt = Predictor.from_model(paper_model, backend="torch", zoom_refine=False)
    ox = Predictor.from_model(paper_model, backend="onnx", zoom_refine=False)
    assert ox.backend.dec_nomask is not None  # prompts without a mask input run the no-mask decoder graph
    for pr in (pt, ox):
        pr.set_image(img)
    prompts = [dict(points=[[50, 40]]), dict(box=[20, 10, 150, 100]), dict(points=[[50, 40], [120, 90]], labels=[1, 0])]
    for kw in prompts:
        a, b = pt.predict(**kw), ox.predict(**kw)
        assert np.abs(a.lowres - b.lowres).max() < 1e-3
        for ma, mb in zip(a.masks, b.masks):
            union = (ma | mb).sum()
            iou = (ma & mb).sum() / union if union else 1.0
            assert iou >= 0.99
    r = pt.predict(points=[[50, 40]])
    r2 = ox.predict(points=[[50, 40], [60, 50]], labels=[1, 1], mask_input=r.lowres[0])
    r1 = pt.predict(points=[[50, 40], [60, 50]], labels=[1, 1], mask_input=r.lowres[0])
    assert np.abs(r1.lowres - r2.lowres).max() < 1e-3


class ClickZoomBackend:
    """Full view (first encode): the whole image is one mask. Crops (later encodes): a disc of ``radius`` low-res
    cells at the first point, scored ``score``."""

    def __init__(self, cfg, radius=3.0, score=0.9):
        self.cfg, self.image_size, self.lowres_size = cfg, cfg.image_size, cfg.image_size // 4
        self.n, self.radius, self.score = 0, radius, score

    def encode(self, x):
        self.n += 1
        return {"view": self.n}

    def decode(self, feats, coords, labels, mask_input):
        l = self.lowres_size
        if feats["view"] == 1:
            return np.full((4, l, l), 5.0, np.float32), np.full(4, 0.8, np.float32), 1.0
        yy, xx = np.mgrid[:l, :l]
        cx, cy = coords[0] / 4.0
        disc = np.where((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < self.radius ** 2, 4.0, -4.0)
        return np.stack([disc] * 4).astype(np.float32), np.full(4, self.score, np.float32), 1.0


def test_click_zoom_finds_a_small_object_the_full_view_missed(tiny_model):
    be = ClickZoomBackend(tiny_model.cfg)
    p = Predictor(be)
    h, w = 900, 1200
    p.set_image(np.zeros((h, w, 3), np.uint8))
    r = p.predict(points=[[700, 400]])
    m = r.mask(0)
    assert r.zoomed and m[400, 700] and 0 < m.sum() < 0.05 * h * w  # the disc at the click, not the whole image
    ys, xs = np.nonzero(m)
    assert abs(xs.mean() - 700) < 5 and abs(ys.mean() - 400) < 5
    # the logits fed back on the next click describe that small mask on the full view's grid
    l = be.lowres_size
    s = p.image_size / max(h, w)
    cell = (int(400 * s * l / p.image_size), int(700 * s * l / p.image_size))
    assert r.lowres.shape == (3, l, l) and r.lowres[0][cell] > 0 and (r.lowres[0] > 0).mean() < 0.05
    # the annotator's two stages give the same
    first = p.predict(points=[[700, 400]], zoom_refine=False)
    assert first.zoomable and not first.zoomed and first.mask(0).all()
    np.testing.assert_array_equal(p.zoom_in(first).mask(0), m)


@pytest.mark.parametrize("kw,points,labels", [
    ({"score": 0.2}, [[700, 400]], None),  # the crop's mask is not confident: the full view stays
    ({"radius": 40.0}, [[700, 400]], None),  # the crop's mask reaches the crop's edges: a part of something larger
    ({}, [[700, 400], [720, 410]], None),  # two points: the user is already refining
    ({}, [[700, 400]], [0]),  # a single negative point
])
def test_click_zoom_keeps_the_full_view(tiny_model, kw, points, labels):
    p = Predictor(ClickZoomBackend(tiny_model.cfg, **kw))
    p.set_image(np.zeros((900, 1200, 3), np.uint8))
    r = p.predict(points=points, labels=labels)
    m = r.mask(0)
    if labels == [0]:  # the full view covers everything; the region at the negative click is out (obeyed)
        assert not r.zoomed and m.mean() > 0.95 and not m[400, 700] and m[400, 900] and m[0, 0]
    else:
        assert not r.zoomed and m.all()
    first = p.predict(points=points, labels=labels, zoom_refine=False)
    assert p.zoom_in(first) is None


def test_flip_tta_encodes_the_mirror_image_and_can_be_switched_off(rec):
    from napari_ultratinysam.inference.backends.flip import FlipAveragedBackend

    p = Predictor(rec, flip_tta=True)
    assert p.flip_tta and isinstance(p.backend, FlipAveragedBackend) and p.backend.lowres_size == rec.lowres_size
    img = np.zeros((40, 60, 3), np.uint8)
    p.set_image(img)
    assert rec.encode_calls == 2  # the image and its mirror image
    a = p.predict(points=[[10, 20]])
    assert len(rec.decode_calls) == 2
    (c0, l0, _), (c1, l1, _) = rec.decode_calls
    s = rec.image_size
    np.testing.assert_allclose(c1[:, 0], s - 1 - c0[:, 0])  # the click mirrored (pixel-centre convention)
    np.testing.assert_allclose(c1[:, 1], c0[:, 1])
    p.flip_tta = False
    assert p.backend is rec and not p.flip_tta
    b = p.predict(points=[[10, 20]])  # the cached embedding was of the other kind: encoded again
    assert rec.encode_calls == 3 and len(rec.decode_calls) == 3
    assert a.mask(0).any() and b.mask(0).any()
    with pytest.raises(ValueError, match="already averages"):
        FlipAveragedBackend(FlipAveragedBackend(rec))


def test_flip_tta_mirror_prompt_is_an_involution_and_keeps_box_corners():
    from napari_ultratinysam.inference.backends.flip import FlipAveragedBackend

    class B:
        image_size = 128

    f = FlipAveragedBackend(B())
    coords = np.array([[40, 30], [10, 20], [20, 25], [100, 90]], np.float32)
    labels = np.array([1, 0, 2, 3], np.float32)
    m = f.mirror_prompt(coords, labels)
    np.testing.assert_allclose(m, [[87, 30], [117, 20], [28, 25], [108, 90]])  # box x 20..100 -> 28..108
    np.testing.assert_allclose(f.mirror_prompt(m, labels), coords)


def test_flip_averaged_model_is_mirror_equivariant(tiny_model):
    """Averaging over flips makes the real network exactly mirror-equivariant: the mirror image with the mirrored
    prompt gives the mirrored logits (and the same scores), for clicks, a box and a mask input."""
    from napari_ultratinysam.inference.backends.flip import FlipAveragedBackend
    from napari_ultratinysam.inference.backends.pytorch import TorchBackend

    inner = TorchBackend(tiny_model)
    f = FlipAveragedBackend(inner)
    s, l = inner.image_size, inner.lowres_size
    x = np.random.default_rng(0).normal(size=(1, 3, s, s)).astype(np.float32)
    xm = np.ascontiguousarray(x[..., ::-1])
    coords = np.array([[40, 30], [10, 20], [20, 25], [100, 90]], np.float32)
    labels = np.array([1, 0, 2, 3], np.float32)
    mask_in = np.random.default_rng(1).normal(size=(l, l)).astype(np.float32)
    for mi in (None, mask_in):
        la, ia, oa = f.decode(f.encode(x), coords, labels, mi)
        lb, ib, ob = f.decode(f.encode(xm), f.mirror_prompt(coords, labels), labels,
                              None if mi is None else np.ascontiguousarray(mi[..., ::-1]))
        np.testing.assert_allclose(lb, la[..., ::-1], atol=1e-4)
        np.testing.assert_allclose(ib, ia, atol=1e-5)
        assert abs(ob - oa) < 1e-5
        plain = inner.decode(inner.encode(x), coords, labels, mi)[0]
        assert np.abs(plain - la).max() > 1e-3  # the average is not the plain prediction
