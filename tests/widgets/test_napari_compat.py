"""The partial Labels refresh shows exactly what a full refresh shows (on screen, in a real window), touches only
its region, and falls back to a full refresh where it does not apply."""
import numpy as np

from napari_ultratinysam.widgets.napari_compat import canvas_draw_event, refresh_labels_region


def _canvas(viewer):
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)


def test_partial_refresh_shows_the_region_on_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    data = np.zeros((120, 160), np.uint8)
    layer = viewer.add_labels(data, name="preview", opacity=1.0)
    viewer.reset_view()
    before = _canvas(viewer)
    region = (slice(30, 70), slice(50, 110))
    data[region] = 1
    assert refresh_labels_region(layer, region) is True
    # the texture values of that region only
    view = layer._slice.image.view
    np.testing.assert_array_equal(view[region], layer.colormap._data_to_texture(data[region]))
    assert not view[:30].any() and not view[70:].any()
    partial = _canvas(viewer)
    assert np.abs(partial - before).sum() > 0  # the region is drawn
    layer.refresh()  # what a full refresh shows: the same picture
    np.testing.assert_array_equal(_canvas(viewer), partial)
    data[region] = 0
    assert refresh_labels_region(layer, region) is True
    np.testing.assert_array_equal(_canvas(viewer), before)
    assert canvas_draw_event(viewer) is not None


def test_partial_refresh_on_planes_and_fallbacks(make_napari_viewer):
    viewer = make_napari_viewer()
    data = np.zeros((3, 40, 50), np.uint8)
    layer = viewer.add_labels(data)
    viewer.dims.set_current_step(0, 1)
    data[1, 5:10, 5:10] = 1
    assert refresh_labels_region(layer, (1, slice(5, 10), slice(5, 10))) is True
    assert layer._slice.image.view[5:10, 5:10].all()
    data[2, 5:10, 5:10] = 1  # a plane not displayed: a full refresh (which shows plane 1, unchanged)
    assert refresh_labels_region(layer, (2, slice(5, 10), slice(5, 10))) is False
    contour = viewer.add_labels(np.zeros((40, 50), np.uint8))
    contour.contour = 1
    contour.data[5:20, 5:20] = 1
    assert refresh_labels_region(contour, (slice(5, 20), slice(5, 20))) is False  # contours: full refresh
    assert contour._slice.image.raw[10, 10] == 1
