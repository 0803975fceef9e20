import numpy as np
import pytest
import torch

from napari_ultratinysam.transforms import (geometry_for, letterbox, letterbox_masks, logits_to_image, prepare_image,
                                            to_rgb_uint8)


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
    low = torch.randn(2, 32, 32)
    full = logits_to_image(low, geo)
    crop = logits_to_image(low, geo, (30, 10, 120, 70))
    assert full.shape == (2, 90, 200)
    assert torch.allclose(full[:, 10:70, 30:120], crop, atol=1e-5)


def test_a_lowres_blob_lands_where_it_should():
    # a positive blob in the low-res grid at the model position of image pixel (x=150, y=40)
    geo = geometry_for((100, 300), 128)
    mx, my = geo.to_model(np.array([150.0, 40.0]))
    yy, xx = np.mgrid[:32, :32]
    low = np.where((xx + 0.5 - mx / 4) ** 2 + (yy + 0.5 - my / 4) ** 2 < 4, 5.0, -5.0).astype(np.float32)
    mask = logits_to_image(low[None], geo)[0].numpy() > 0
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
