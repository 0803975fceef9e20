import numpy as np
import pytest

from napari_ultratinysam.core.transforms import (
    bilinear_weights,
    geometry_for,
    letterbox,
    letterbox_masks,
    logits_to_image,
    normalize_np,
    prepare_image,
    resize_mask,
    resize_uint8,
    to_rgb_uint8,
)


def test_geometry_asymmetric_image_maps_points_both_ways():
    geo = geometry_for((100, 300), 128)  # H=100, W=300
    assert geo.new_hw == (43, 128)
    p = np.array([[150.0, 50.0], [0.0, 0.0], [300.0, 100.0]])
    m = geo.to_model(p)
    assert np.allclose(m[0], [64.0, 21.5], atol=1e-4)
    assert np.allclose(m[2], [128.0, 43.0], atol=1e-4)
    assert np.allclose(geo.to_image(m), p, atol=1e-3)


def test_letterbox_pads_bottom_right():
    img = np.full((100, 300, 3), 200, np.uint8)
    boxed, geo = letterbox(img, 128)
    assert boxed.shape == (128, 128, 3)
    assert boxed[:43].min() > 150 and boxed[44:].max() == 0
    masks = np.zeros((1, 100, 300), bool)
    masks[0, 50:, 150:] = True  # bottom-right quadrant
    lm = letterbox_masks(masks, 128)
    ys, xs = np.nonzero(lm[0])
    assert 20 <= ys.min() <= 23 and ys.max() == 42 and 63 <= xs.min() <= 65 and xs.max() == 127


def test_logits_to_image_crop_equals_full():
    geo = geometry_for((90, 200), 128)
    low = np.random.default_rng(0).standard_normal((2, 32, 32)).astype(np.float32)
    full = logits_to_image(low, geo)
    crop = logits_to_image(low, geo, (30, 10, 120, 70))
    assert isinstance(full, np.ndarray) and full.dtype == np.float32 and full.shape == (2, 90, 200)
    assert np.allclose(full[:, 10:70, 30:120], crop, atol=1e-5)


def test_a_lowres_blob_lands_where_it_should():
    # a positive blob in the low-res grid at the model position of image pixel (x=150, y=40)
    geo = geometry_for((100, 300), 128)
    mx, my = geo.to_model(np.array([150.0, 40.0]))
    yy, xx = np.mgrid[:32, :32]
    low = np.where((xx + 0.5 - mx / 4) ** 2 + (yy + 0.5 - my / 4) ** 2 < 4, 5.0, -5.0).astype(np.float32)
    mask = logits_to_image(low[None], geo)[0] > 0
    assert mask[40, 150] and not mask[40, 20] and not mask[95, 150]


@pytest.mark.parametrize("img", [
    np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8),
    np.random.default_rng(0).integers(0, 65535, (40, 50), dtype=np.uint16),
    np.random.default_rng(0).random((40, 50, 3)).astype(np.float32),
    np.random.default_rng(0).random((40, 50, 4)) * 1000.0,
    np.random.default_rng(0).integers(0, 255, (40, 50, 1), dtype=np.uint8),
])
def test_to_rgb_uint8_accepts_common_images(img):
    out = to_rgb_uint8(img)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert out.max() > 200  # scaled to the full range


@pytest.mark.parametrize("img, msg", [
    (np.zeros((4, 5, 6, 3), np.uint8), "expected a 2-D grayscale, RGB or RGBA"),
    (np.zeros((10, 10, 2), np.uint8), "expected a 2-D grayscale, RGB or RGBA"),
    (np.zeros((10, 10), bool), "unsupported dtype"),
    (np.array([["a"]]), "unsupported dtype"),
    (np.full((10, 10), np.nan, np.float32), "NaN"),
    (np.zeros((1, 10), np.uint8), "too small"),
])
def test_to_rgb_uint8_rejects_bad_images(img, msg):
    with pytest.raises(ValueError, match=msg):
        to_rgb_uint8(img)


def test_prepare_image_normalises():
    x, geo = prepare_image(np.zeros((64, 32), np.uint8), 128)
    assert x.shape == (1, 3, 128, 128) and x.dtype == np.float32
    assert np.allclose(x[0, 0, 0, 0], -0.485 / 0.229, atol=1e-5)


# ------------------------------------------------------------------ the numpy transforms against torch's
# The inference path runs without torch; these pin its numpy transforms to the torch operations that training
# used (skipped where torch is not installed).
_RESIZES = [(100, 300, 43, 128), (480, 640, 96, 128), (37, 53, 128, 128), (7, 5, 128, 91), (300, 300, 128, 128),
            (129, 128, 128, 127), (2000, 3000, 85, 128), (64, 32, 128, 64), (1, 200, 1, 128), (5, 5, 3, 200),
            (3000, 20, 128, 2)]


@pytest.mark.parametrize("hw_in, hw_out", [((a, b), (c, d)) for a, b, c, d in _RESIZES])
def test_resize_uint8_matches_torch_antialiased_bilinear(hw_in, hw_out):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(hash(hw_in + hw_out) % 2**32)
    ramp = (np.add.outer(np.arange(hw_in[0]), 3 * np.arange(hw_in[1])) % 256).astype(np.uint8)
    for img in (rng.integers(0, 256, hw_in + (3,), dtype=np.uint8), np.repeat(ramp[..., None], 3, axis=2),
                rng.integers(0, 256, hw_in + (4,), dtype=np.uint8)):
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        ref = F.interpolate(t, size=hw_out, mode="bilinear", align_corners=False, antialias=True)
        ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        out = resize_uint8(img, hw_out)
        assert out.shape == ref.shape and out.dtype == np.uint8 and out.flags.writeable
        diff = np.abs(out.astype(int) - ref.astype(int))
        # within 1 grey level, and nearly every pixel equal (a fixed-point resize, e.g. Pillow's, is off by one at
        # a few per cent of the pixels, which moved the masks of borderline clicks)
        assert diff.max() <= 1 and diff.mean() < 0.005


def test_resize_uint8_in_strips_equals_whole(monkeypatch):
    """A huge image's vertical pass runs on strips of rows; the result is the one in one piece (up to float
    rounding: the matrix products' summation order depends on their shapes), and a read-only input is accepted
    (np.asarray of a PIL image)."""
    import napari_ultratinysam.core.transforms as T

    img = np.random.default_rng(1).integers(0, 256, (301, 257, 3), dtype=np.uint8)
    whole = resize_uint8(img, (97, 128))
    monkeypatch.setattr(T, "_STRIP_VALUES", 7 * 257 * 3)
    img.flags.writeable = False
    strips = resize_uint8(img, (97, 128))
    diff = np.abs(strips.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3
    assert resize_uint8(img[..., 0], (97, 128)).shape == (97, 128)  # a 2-D image
    assert np.array_equal(resize_uint8(img, (301, 257)), img)  # nothing to resize: a writable copy
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(img.astype(np.float32), (10, 10))


@pytest.mark.parametrize("hw_in, hw_out", [((100, 300), (43, 128)), ((37, 53), (128, 128)), ((1000, 7), (128, 1)),
                                           ((129, 128), (128, 127)), ((3, 3), (128, 128))])
def test_resize_mask_matches_torch_nearest_exact(hw_in, hw_out):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    m = np.random.default_rng(2).integers(0, 5, (2,) + hw_in).astype(np.uint8)
    ref = F.interpolate(torch.from_numpy(m.astype(np.float32))[None], size=hw_out, mode="nearest-exact")[0]
    assert np.array_equal(resize_mask(m, hw_out), ref.numpy().astype(np.uint8))
    assert resize_mask(m[0] > 2, hw_out).dtype == bool


def test_normalize_np_equals_torch_normalize():
    pytest.importorskip("torch")
    from napari_ultratinysam.core.transforms import normalize

    img = np.random.default_rng(3).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    out = normalize_np(img)
    assert out.dtype == np.float32 and out.shape == (2, 3, 16, 24)
    assert np.array_equal(out, normalize(img).numpy())


def test_logits_to_image_matches_torch_matmul():
    torch = pytest.importorskip("torch")
    from napari_ultratinysam.core.transforms import _bilinear_weights

    geo = geometry_for((300, 500), 128)
    low = np.random.default_rng(4).standard_normal((3, 32, 32)).astype(np.float32)
    nh, nw = geo.new_hw
    wy = _bilinear_weights(300, 0, (nh / 300) * 32 / 128, 32)
    wx = _bilinear_weights(500, 0, (nw / 500) * 32 / 128, 32)
    assert np.array_equal(wy.numpy(), bilinear_weights(300, 0, (nh / 300) * 32 / 128, 32))
    ref = (wy @ torch.from_numpy(low) @ wx.T).numpy()
    assert np.allclose(logits_to_image(low, geo), ref, atol=1e-5)
