"""The annotator widget driven through the same code paths as the mouse and keyboard (fake predictor)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

from napari_ultratinysam.annotation import CAMVID_CLASSES

CAMVID = "CamVid (11 classes)"  # the class preset these tests annotate with (the default is one neutral class)
CAR = [c.name for c in CAMVID_CLASSES].index("Car")
PEDESTRIAN = [c.name for c in CAMVID_CLASSES].index("Pedestrian")


@dataclass
class MouseEvent:
    """What napari hands to layer mouse callbacks (NapariMouseEvent), with the fields our callbacks read."""

    type: str
    position: tuple  # world coordinates
    button: int = 1
    modifiers: tuple = ()
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))  # canvas pixels
    is_dragging: bool = False
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    handled: bool = False


def press(layer, position, button=1, modifiers=(), pos=(0, 0)):
    ev = ReadOnlyWrapper(MouseEvent("mouse_press", tuple(position), button, tuple(modifiers), np.asarray(pos, float)),
                         exceptions=("handled",))
    mouse_press_callbacks(layer, ev)
    return ev


def release(layer, position, pos=(0, 0)):
    mouse_release_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_release", tuple(position),
                                                              pos=np.asarray(pos, float)), exceptions=("handled",)))


def click(qtbot, widget, position, button=1, modifiers=(), wait=True):
    """A full mouse click on the prompts layer; waits for the preview of that click and for its point to reach the
    prompts layer (it is added right after the preview is shown)."""
    if wait:
        with qtbot.waitSignal(widget.preview_updated, timeout=5000):
            press(widget.prompts, position, button, modifiers)
        qtbot.waitUntil(lambda: not widget._pending_points, timeout=2000)
    else:
        press(widget.prompts, position, button, modifiers)
    release(widget.prompts, position)


def hover(layer, position):
    mouse_move_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_move", tuple(position)), exceptions=("handled",)))


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_layers_created_once_and_embedding_off_gui_thread(annotator):
    viewer, w = annotator()
    names = [l.name for l in viewer.layers]
    assert names == ["img", "annotations", "preview", "box", "prompts"]
    assert viewer.layers.selection.active is w.prompts
    p = w.session.predictor
    assert p.set_image_calls and "MainThread" not in p.threads
    assert "ready" in w.status_label.text()


def test_click_updates_preview_in_place(annotator, qtbot):
    viewer, w = annotator()
    preview, data = w.preview, w.preview.data
    click(qtbot, w, (30, 40))  # world (row, col) = image pixel: scale 1
    call = w.session.predictor.calls[-1]
    np.testing.assert_array_equal(call["points"], [[40, 30]])  # predictor gets (x, y)
    assert call["labels"].tolist() == [1] and call["box"] is None and call["mask_input"] is None
    # best candidate first: radius 10 (score 0.9), though the fake returned it second
    np.testing.assert_array_equal(data.astype(bool), disc(data.shape, 30, 40, 10))
    assert "mask 1/3" in w.mask_label.text() and "0.900" in w.mask_label.text()
    # the second click refines: a negative point, previous low-res mask fed back, same layer object and array
    click(qtbot, w, (30, 45), button=2)
    call = w.session.predictor.calls[-1]
    assert call["labels"].tolist() == [1, 0] and call["mask_input"] is not None
    assert w.prompts.features["label"].tolist() == [1, 0]
    assert w.preview is preview and w.preview.data is data
    assert data[30, 45] == 0 and data[30, 32] == 1
    fc = w.prompts.face_color
    assert fc[0][1] > 0.5 and fc[1][0] > 0.5  # positive green, negative red
    assert [l.name for l in viewer.layers].count("preview") == 1


def test_modifier_click_is_negative_and_outside_ignored(annotator, qtbot):
    viewer, w = annotator()
    click(qtbot, w, (30, 40))
    click(qtbot, w, (31, 41), modifiers=("Control",))
    click(qtbot, w, (32, 42), modifiers=("Shift",))
    assert w.prompts.features["label"].tolist() == [1, 0, 0]
    n = len(w.session.predictor.calls)
    press(w.prompts, (500, 500))  # outside the image: nothing
    assert len(w.prompts.data) == 3 and len(w.session.predictor.calls) == n


@pytest.mark.parametrize("flushed", [False, True], ids=["pending", "in-layer"])
def test_drag_takes_the_point_back(annotator, qtbot, flushed):
    """A press that turns into a pan takes its point back, whether it already reached the prompts layer or not."""
    viewer, w = annotator()
    click(qtbot, w, (30, 40))
    n_calls = len(w.session.predictor.calls)
    press(w.prompts, (20, 20), pos=(100, 100))
    assert len(w._prompt().points) == 2  # the press made a point (and a prediction) at once
    assert w.session.predictor.calls and len(w.prompts.data) + len(w._pending_points) == 2
    if flushed:
        qtbot.waitUntil(lambda: len(w.prompts.data) == 2, timeout=2000)
    ev = ReadOnlyWrapper(MouseEvent("mouse_move", (21, 21), pos=np.array([130.0, 100.0]), is_dragging=True),
                         exceptions=("handled",))
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        mouse_move_callbacks(w.prompts, ev)
    release(w.prompts, (21, 21))
    qtbot.wait(50)
    assert len(w.prompts.data) == 1 and not w._pending_points and len(w._prompt().points) == 1
    assert len(w.session.predictor.calls) > n_calls
    assert w.session.predictor.calls[-1]["points"].tolist() == [[40, 30]]  # predicted again without the point


def test_box_prompt(annotator, qtbot):
    viewer, w = annotator()
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        w.set_box(10, 5, 30, 25)  # x0, y0, x1, y1
    call = w.session.predictor.calls[-1]
    np.testing.assert_array_equal(call["box"], [10, 5, 30, 25])
    assert call["points"] is None
    assert w.preview.data[5:26, 10:31].all() and w.preview.data.sum() == 21 * 21
    # a second box replaces the first (one box per object)
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        w.set_box(40, 40, 50, 50)
    qtbot.waitUntil(lambda: len(w.box.data) == 1, timeout=2000)
    np.testing.assert_array_equal(w.session.predictor.calls[-1]["box"], [40, 40, 50, 50])
    assert w.preview.data[45, 45] == 1 and w.preview.data[10, 10] == 0
    # box + click together
    click(qtbot, w, (45, 45))
    call = w.session.predictor.calls[-1]
    assert call["box"] is not None and call["points"].tolist() == [[45, 45]]


def test_drawn_box_through_the_shapes_mouse_path(annotator, qtbot):
    viewer, w = annotator()
    w.start_box()
    assert viewer.layers.selection.active is w.box and w.box.mode == "add_rectangle"
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        press(w.box, (5, 10))
        mouse_move_callbacks(w.box, ReadOnlyWrapper(MouseEvent("mouse_move", (25, 30), is_dragging=True),
                                                    exceptions=("handled",)))
        release(w.box, (25, 30))
    np.testing.assert_allclose(w.session.predictor.calls[-1]["box"], [10, 5, 30, 25], atol=1)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is w.prompts, timeout=2000)


def test_multimask_cycle(annotator, qtbot):
    viewer, w = annotator()
    click(qtbot, w, (30, 40))
    sizes = []
    for _ in range(3):
        sizes.append(int(w.preview.data.sum()))
        w.cycle_mask()
    assert sizes[0] == disc((64, 80), 30, 40, 10).sum()
    assert len(set(sizes)) == 3
    assert "mask 1/3" in w.mask_label.text()  # wrapped around
    w.cycle_mask()
    assert "mask 2/3" in w.mask_label.text() and "0.800" in w.mask_label.text()


def test_commit_writes_ids_and_classes(annotator, qtbot):
    viewer, w = annotator()
    assert w.apply_class_preset(CAMVID)
    w.class_list.setCurrentRow(CAR)
    click(qtbot, w, (30, 40))
    oid = w.commit()
    assert oid == 1
    ann = w.annotations.data
    np.testing.assert_array_equal(ann == 1, disc(ann.shape, 30, 40, 10))
    assert w.model.object_class == {1: CAR}
    assert len(w.prompts.data) == 0 and w.preview.data.sum() == 0  # prompts and preview cleared
    assert w.selected_id == 1 and w.annotations.selected_label == 1
    w.class_list.setCurrentRow(PEDESTRIAN)
    click(qtbot, w, (10, 10))
    assert w.commit() == 2
    assert w.model.object_class == {1: CAR, 2: PEDESTRIAN}
    assert (ann == 2).sum() == disc(ann.shape, 10, 10, 10).sum()
    # class colours
    cmap = w.annotations.colormap
    np.testing.assert_allclose(cmap.color_dict[1][:3], np.array([64, 0, 128]) / 255, atol=1e-3)
    np.testing.assert_allclose(cmap.color_dict[2][:3], np.array([64, 64, 0]) / 255, atol=1e-3)
    w.by_class_check.setChecked(False)
    assert type(w.annotations.colormap).__name__ == "CyclicLabelColormap"
    assert "2 object(s)" in w.objects_label.text()
    assert w.commit() is None  # nothing to commit


def test_undo_redo_keep_brush_edits(annotator, qtbot):
    viewer, w = annotator()
    click(qtbot, w, (30, 40))
    w.commit()
    ann = w.annotations
    snap = ann.data.copy()
    # a brush stroke in napari's Labels layer (its own paint path), crossing the object
    ann.selected_label = 9
    ann.brush_size = 3
    ann.paint((30, 20), 9)
    ann.paint((30, 60), 9)
    brushed = ann.data == 9
    assert brushed.any()
    w.undo()
    assert (ann.data == 1).sum() == 0 and (ann.data[brushed] == 9).all()
    assert w.model.object_class == {}
    w.redo()
    assert (ann.data[brushed] == 9).all()
    assert ((ann.data == 1) == (snap == 1) & ~brushed).all()
    assert w.model.object_class == {1: 0}


def test_select_delete_reclass(annotator, qtbot):
    viewer, w = annotator()
    assert w.apply_class_preset(CAMVID)
    click(qtbot, w, (30, 40))
    w.commit()
    click(qtbot, w, (10, 10))
    w.commit()
    press(w.prompts, (30, 40), modifiers=("Alt",))  # Alt+click picks, adds no point
    release(w.prompts, (30, 40))
    assert w.selected_id == 1 and len(w.prompts.data) == 0
    assert "#1 (Sky)" in w.selected_label.text()
    w.class_list.setCurrentRow(CAR)
    w.set_selected_class(w.current_class())
    assert w.model.object_class[1] == CAR and "#1 (Car)" in w.selected_label.text()
    np.testing.assert_allclose(w.annotations.colormap.color_dict[1][:3], np.array([64, 0, 128]) / 255, atol=1e-3)
    w.delete_selected()
    assert (w.annotations.data == 1).sum() == 0 and 1 not in w.model.object_class
    w.undo()  # delete undone
    assert (w.annotations.data == 1).sum() > 0 and w.model.object_class[1] == CAR
    w.undo()  # re-class undone
    assert w.model.object_class[1] == 0
    # napari's own label picker selects too
    w.annotations.selected_label = 2
    assert w.selected_id == 2


def test_class_editing(annotator, qtbot):
    viewer, w = annotator()
    assert w.apply_class_preset(CAMVID)
    i = w.add_class("Dog", (10, 20, 30))
    assert w.class_list.count() == 12 and w.class_list.item(i).text() == "Dog"
    assert w.current_class() == i
    w.class_list.item(i).setText("Hound")  # edited in the list
    assert w.model.classes[i].name == "Hound"
    w.recolor_class(i, (1, 2, 3))
    click(qtbot, w, (30, 40))
    oid = w.commit()
    assert w.model.object_class[oid] == i
    np.testing.assert_allclose(w.annotations.colormap.color_dict[oid][:3], np.array([1, 2, 3]) / 255, atol=1e-3)
    assert not w.remove_class(i) and "used by" in w.status_label.text()
    assert w.remove_class(0) and w.class_list.count() == 11 and w.model.object_class[oid] == i - 1


def test_escape_clears_without_commit(annotator, qtbot):
    viewer, w = annotator()
    click(qtbot, w, (30, 40))
    w.set_box(1, 1, 20, 20)
    qtbot.wait(100)
    w.viewer.window._qt_viewer._key_map_handler.press_key("Escape")
    assert len(w.prompts.data) == 0 and len(w.box.data) == 0
    assert w.preview.data.sum() == 0 and w.annotations.data.sum() == 0 and w.candidates is None


def test_keyboard_shortcuts(annotator, qtbot):
    viewer, w = annotator()
    keys = w.viewer.window._qt_viewer._key_map_handler
    click(qtbot, w, (30, 40))
    keys.press_key("M")
    keys.release_key("M")
    assert "mask 2/3" in w.mask_label.text()
    keys.press_key("M")
    keys.release_key("M")
    keys.press_key("M")
    keys.release_key("M")
    keys.press_key("C")
    keys.release_key("C")
    assert w.model.object_class == {1: 0}
    keys.press_key("Control-Z")
    assert w.model.object_class == {} and w.annotations.data.sum() == 0
    keys.press_key("Control-Shift-Z")
    assert w.model.object_class == {1: 0}
    keys.press_key("H")
    assert not w.hover_check.isChecked()
    keys.press_key("B")
    assert w.box.mode == "add_rectangle"


def test_hover_preview_follows_mouse_until_click(annotator, qtbot):
    viewer, w = annotator()
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        hover(w.prompts, (20, 20))
    assert w.preview.data[20, 20] == 1 and w.preview.data[50, 60] == 0
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        hover(w.prompts, (50, 60))
    assert w.preview.data[50, 60] == 1 and w.preview.data[20, 20] == 0
    n = len(w.session.predictor.calls)
    hover(w.prompts, (50, 60))  # same pixel: no new request
    qtbot.wait(50)
    assert len(w.session.predictor.calls) == n
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        hover(w.prompts, (500, 500))  # off the image: preview cleared
    assert w.preview.data.sum() == 0
    click(qtbot, w, (30, 40))
    n = len(w.session.predictor.calls)
    hover(w.prompts, (10, 10))  # a prompt exists: hover does nothing
    qtbot.wait(50)
    assert len(w.session.predictor.calls) == n and w.preview.data[30, 40] == 1
    w.clear_prompts()
    w.hover_check.setChecked(False)
    hover(w.prompts, (10, 12))
    qtbot.wait(50)
    assert len(w.session.predictor.calls) == n


def test_hover_is_throttled_to_one_in_flight(annotator, qtbot, FakePredictor):
    slow = FakePredictor(delays=[0.2])
    viewer, w = annotator(predictor=slow)
    for i in range(20):
        hover(w.prompts, (10 + i, 10 + i))
    qtbot.waitUntil(lambda: w.preview.data[29, 29] == 1, timeout=5000)
    # the first one, then (coalesced) the newest position; a third only if submitting took longer than the first
    assert len(slow.calls) <= 3 and slow.max_in_flight == 1
    np.testing.assert_array_equal(slow.calls[-1]["points"], [[29, 29]])


def test_stale_click_result_is_dropped(annotator, qtbot, FakePredictor):
    slow = FakePredictor(delays=[0.4])  # the first prediction is slow
    viewer, w = annotator(predictor=slow)
    dropped = []
    w.worker.dropped.connect(lambda seq, g: dropped.append((seq, g)))
    shown = []
    w.preview_updated.connect(shown.append)
    click(qtbot, w, (10, 10), wait=False)
    qtbot.waitUntil(lambda: len(slow.calls) == 1, timeout=2000)  # the slow one is running
    click(qtbot, w, (50, 60), modifiers=("Control",), wait=False)
    click(qtbot, w, (30, 40), wait=False)  # replaces the pending second request
    qtbot.waitUntil(lambda: len(shown) >= 1, timeout=5000)
    qtbot.wait(500)
    assert len(shown) == 1  # only the newest request reached the preview
    assert len(slow.calls) == 2  # the middle request never ran
    assert [g for _, g in dropped].count("preview") == 2
    np.testing.assert_array_equal(slow.calls[-1]["points"], [[10, 10], [60, 50], [40, 30]])
    assert w.preview.data[30, 40] == 1 and w.preview.data[10, 10] == 0


def test_escape_drops_in_flight_prediction(annotator, qtbot, FakePredictor):
    slow = FakePredictor(delays=[0.3])
    viewer, w = annotator(predictor=slow)
    click(qtbot, w, (10, 10), wait=False)
    qtbot.waitUntil(lambda: len(slow.calls) == 1, timeout=2000)
    w.clear_prompts()
    qtbot.wait(500)
    assert w.preview.data.sum() == 0 and w.candidates is None


def test_gui_thread_not_blocked_by_slow_embedding(qtbot, make_napari_viewer, FakePredictor):
    import time

    from qtpy.QtCore import QTimer

    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    p = FakePredictor(embed_delay=1.0)
    w = AnnotatorWidget(viewer, predictor=p)
    try:
        viewer.add_image(np.zeros((32, 32), np.uint8))
        qtbot.waitUntil(lambda: w.busy_bar.isVisibleTo(w), timeout=3000)
        assert "computing" in w.status_label.text()
        # the event loop keeps running while the embedding is computed on the worker
        fired = []
        t0 = time.perf_counter()
        QTimer.singleShot(0, lambda: fired.append(time.perf_counter() - t0))
        qtbot.waitUntil(lambda: bool(fired), timeout=3000)
        assert fired[0] < 0.3 and w.busy_bar.isVisibleTo(w) and not p.set_image_calls
        qtbot.waitUntil(lambda: not w.busy_bar.isVisibleTo(w), timeout=5000)
        assert "ready" in w.status_label.text() and p.set_image_calls
    finally:
        w.cleanup()


def test_rgb_and_float_images(annotator, qtbot):
    rgb = np.zeros((40, 50, 3), np.uint8)
    viewer, w = annotator(image=rgb)
    assert w.annotations.data.shape == (40, 50)
    click(qtbot, w, (20, 25))
    assert w.preview.data[20, 25] == 1
    assert w.session.predictor._image.shape == (40, 50, 3)
    f = (np.arange(40 * 50, dtype=np.float32).reshape(40, 50) * 3.0)
    viewer2, w2 = annotator(image=f)
    img = w2.session.predictor._image
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1  # the layer's contrast limits applied


def test_stack_slice_by_slice(annotator, qtbot):
    stack = np.zeros((3, 40, 50), np.uint8)
    viewer, w = annotator(image=stack)
    assert w.annotations.data.shape == (3, 40, 50) and w.prompts.ndim == 3
    assert w._plane == (1,)  # napari opens a stack at its middle slice
    click(qtbot, w, (1, 20, 25))
    w.commit()
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        viewer.dims.set_current_step(0, 2)
    assert w._plane == (2,)
    click(qtbot, w, (2, 10, 10))
    assert w.preview.data[2, 10, 10] == 1 and w.preview.data[1].sum() == 0
    assert w.prompts.data[:, 0].tolist() == [2]  # the prompts of slice 1 were cleared
    w.class_list.setCurrentRow(CAR)
    w.commit()
    ann = w.annotations.data
    assert ann[1, 20, 25] == 1 and ann[2, 10, 10] == 2 and ann[0].sum() == 0
    keys = w.session.predictor.set_image_calls
    assert {k[1] for k in keys} == {(1,), (2,)}  # one embedding per slice, keyed by slice
    assert w.session.predictor._image.shape == (40, 50)
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        viewer.dims.set_current_step(0, 1)
    assert w.session.predictor.set_image_calls[-1][1] == (1,) and "cached" in w.status_label.text()


def test_zoom_refine_flag_reaches_predictor(annotator, qtbot):
    viewer, w = annotator()
    w.zoom_check.setChecked(False)
    click(qtbot, w, (30, 40))
    assert w.session.predictor.calls[-1]["zoom_refine"] is False
    w.zoom_check.setChecked(True)
    click(qtbot, w, (31, 40))
    assert w.session.predictor.calls[-1]["zoom_refine"] is True


def test_flip_averaging_checkbox_reaches_predictor_and_reencodes(annotator, qtbot, FakePredictor):
    pred = FakePredictor()
    pred.flip_tta = False  # a predictor with the switch (the real one drops its embeddings when it flips)
    viewer, w = annotator(predictor=pred)
    n = len(pred.set_image_calls)
    click(qtbot, w, (30, 40))
    assert pred.flip_tta is False and len(pred.set_image_calls) == n
    w.flip_check.setChecked(True)
    click(qtbot, w, (31, 40))
    assert pred.flip_tta is True and len(pred.set_image_calls) == n + 1  # the image encoded again, with flips
    assert w.preview.data.sum() > 0


def test_model_picker_loads_off_thread(annotator, qtbot, FakePredictor):
    new = FakePredictor(radius=5)
    specs = []

    def loader(spec):
        specs.append(spec)
        return new

    viewer, w = annotator(loader=loader)
    w.source_combo.setCurrentIndex(2)  # ONNX folder
    assert w.backend_combo.currentText() == "onnxruntime" and w.path_edit.isEnabled()
    w.path_edit.setText("/models/onnx")
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        w.load_model()
    assert specs[-1].source == "onnx" and specs[-1].path == "/models/onnx"
    assert w.session.predictor is new and "loaded" in w.model_label.text()
    click(qtbot, w, (30, 40))
    assert w.preview.data.sum() == disc((64, 80), 30, 40, 5).sum()


def test_model_error_is_reported(annotator, qtbot):
    def loader(spec):
        raise FileNotFoundError("/nope.safetensors: no such checkpoint")

    viewer, w = annotator(loader=loader)
    w.source_combo.setCurrentIndex(1)
    with qtbot.waitSignal(w.worker.delivered, timeout=5000):
        w.load_model()
    assert "no such checkpoint" in w.model_label.text()


def test_help_lists_every_shortcut(annotator):
    viewer, w = annotator()
    text = w.help_label.text()
    for key in ("Left click", "Right click", "Alt+click", "B", "M", "C", "Esc", "Ctrl+Z", "Ctrl+Shift+Z", "H"):
        assert key in text
    bound = {str(k) for k in viewer.keymap}
    for k in ("C", "M", "B", "H", "Escape", "Ctrl+Z", "Ctrl+Shift+Z"):
        assert k in bound
    w.cleanup()
    assert "C" not in {str(k) for k in viewer.keymap}


def test_removed_layers_are_recreated(annotator, qtbot):
    viewer, w = annotator()
    viewer.layers.remove(w.preview)
    assert w.preview is None
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        w.set_image_layer(viewer.layers["img"])
    assert w.preview is not None and "preview" in [l.name for l in viewer.layers]
    click(qtbot, w, (30, 40))
    assert w.preview.data[30, 40] == 1


def test_project_autosave_navigation_and_prefetch(make_napari_viewer, qtbot, tmp_path, FakePredictor):
    from PIL import Image

    from napari_ultratinysam.data.project import Project
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    imgs = tmp_path / "images"
    imgs.mkdir()
    for k, shape in enumerate([(64, 80), (50, 70)]):
        Image.fromarray(np.full((*shape, 3), 40 * (k + 1), np.uint8)).save(imgs / f"im{k}.png")
    viewer = make_napari_viewer()
    p = FakePredictor()
    w = AnnotatorWidget(viewer, predictor=p)
    try:
        assert w.apply_class_preset(CAMVID)
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", imgs)
        assert w.project_index == 0 and w.annotations.data.shape == (64, 80)
        assert "image 1/2" in w.project_label.text() and "0 / 2 annotated" in w.project_label.text()
        qtbot.waitUntil(lambda: p.has_image((("project", str(tmp_path / "proj"), 1), (), ())), timeout=5000)
        w.class_list.setCurrentRow(CAR)
        click(qtbot, w, (30, 40))
        assert w.commit() == 1
        w.flush_autosave()
        ids, classes, _ = Project.open(tmp_path / "proj", read_only=True).get_annotation(0)
        assert classes == {1: CAR} and (ids == 1).sum() == disc((64, 80), 30, 40, 10).sum()
        assert "1 / 2 annotated" in w.project_label.text()
        w.undo()
        w.flush_autosave()
        assert Project.open(tmp_path / "proj", read_only=True).get_annotation(0)[1] == {}
        w.redo()
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            w.go_to_image(1)
        assert w.annotations.data.shape == (50, 70) and w.annotations.data.sum() == 0
        assert "cached" in w.status_label.text()  # computed ahead while image 1 was being annotated
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            w.go_to_image(0)
        assert (w.annotations.data == 1).sum() > 0 and w.model.object_class == {1: CAR}
        w.add_class("Dog")
        assert Project.open(tmp_path / "proj", read_only=True).classes[-1] == "Dog"
        assert Project.open(tmp_path / "proj", read_only=True).cursor == 0
    finally:
        w.cleanup()


def test_imx500_device_preview_beside_the_float_one(annotator, qtbot, FakePredictor):
    """The device-faithful preview: loaded off the GUI thread from the path given, run after each click (never on
    hover), shown as an outline layer with its IoU against the float mask; errors are one line; off removes it."""
    loaded = []

    def device_loader(path):
        if path != "/exports/imx500":
            raise FileNotFoundError(f"{path}: no quantized ONNX here")
        loaded.append(path)
        return FakePredictor(radius=5)  # a different mask than the float fake (radius 10)

    viewer, w = annotator(device_loader=device_loader)
    w.device_edit.setText("/nowhere")
    with qtbot.waitSignal(w.worker.delivered, timeout=5000):
        w.device_check.setChecked(True)
    assert "no quantized ONNX" in w.device_label.text() and not w.device_check.isChecked()
    assert w.device_session is None and "preview (IMX500)" not in [l.name for l in viewer.layers]

    w.device_edit.setText("/exports/imx500")
    with qtbot.waitSignal(w.worker.delivered, timeout=5000):
        w.device_check.setChecked(True)
    assert loaded == ["/exports/imx500"] and w.device_session is not None
    with qtbot.waitSignal(w.device_updated, timeout=5000) as sig:
        click(qtbot, w, (30, 40))
    dev = viewer.layers["preview (IMX500)"]
    assert sig.args[0] == int(dev.data.sum()) > 0 and dev.contour >= 1
    assert dev.data[30, 40] == 1 and dev.data[30, 48] == 0  # radius-5 disc around the click
    assert w.preview.data[30, 48] == 1  # the float preview (radius 10) is untouched
    iou = float((dev.data.astype(bool) & w.preview.data.astype(bool)).sum() / w.preview.data.astype(bool).sum())
    assert f"IoU with the float mask {iou:.3f}" in w.device_label.text()
    assert viewer.layers.selection.active is w.prompts  # clicks still go to the prompts layer
    n = len(w.device_session.predictor.calls)
    w.clear_prompts()
    qtbot.waitUntil(lambda: dev.data.sum() == 0, timeout=2000)  # Esc clears both previews
    w.hover_check.setChecked(True)
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        hover(w.prompts, (20, 20))
    qtbot.wait(100)
    assert len(w.device_session.predictor.calls) == n  # hover never runs the device graph
    w.device_check.setChecked(False)
    assert "preview (IMX500)" not in [l.name for l in viewer.layers] and w.device_session is None


def test_two_stage_preview_on_large_images(annotator, qtbot, FakePredictor):
    """On an image larger than twice the model input, a click shows the full-view mask first (no zoom) and then
    the zoom-refined one; a newer click drops the pending refinement; small images and zoom off: one stage."""

    class Zooming(FakePredictor):
        image_size = 16  # "model input": the 64x80 test image is more than twice as large

        def predict(self, *a, zoom_refine=None, **kw):
            r = super().predict(*a, **kw)
            r.zoomed = bool(self.zoom_refine)
            if r.zoomed:  # the refined mask differs: a smaller disc
                r.masks = r.masks & np.roll(r.masks, 3, axis=1)
            return r

    viewer, w = annotator(predictor=Zooming())
    shown = []
    w.preview_updated.connect(lambda s: shown.append(int(w.preview.data.sum())))
    click(qtbot, w, (30, 40))
    qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=5000)
    calls = w.session.predictor.calls
    assert [c["zoom_refine"] for c in calls[-2:]] == [False, True]
    assert len(shown) == 2 and shown[1] < shown[0]  # full view, then the refined (smaller) mask
    assert "click_to_refined" in w.timing and w.timing["click_to_refined"] >= w.timing["click_to_preview"]
    w.zoom_check.setChecked(False)
    qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=5000)
    n = len(calls)
    click(qtbot, w, (30, 50))
    qtbot.wait(100)
    assert [c["zoom_refine"] for c in calls[n:]] == [False]  # zoom off: one stage


def test_refinement_stage_does_not_decode_the_full_view_again(annotator, qtbot, tiny_model):
    """With the real Predictor, the two-stage preview decodes the full view once: the zoom stage refines the
    first result (Predictor.zoom_in) instead of predicting from scratch."""
    from napari_ultratinysam.inference.predictor import Predictor

    class Disc:  # a positive disc of 3 low-res cells around the first prompt point
        def __init__(self, cfg):
            self.cfg, self.image_size, self.lowres_size = cfg, cfg.image_size, cfg.image_size // 4
            self.encodes, self.decodes = 0, 0

        def encode(self, x):
            self.encodes += 1
            return {}

        def decode(self, feats, coords, labels, mask_input):
            self.decodes += 1
            l = self.lowres_size
            yy, xx = np.mgrid[:l, :l]
            cx, cy = coords[0] / 4.0
            disc = np.where((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < 9.0, 4.0, -4.0)
            return np.stack([disc, disc, disc, disc]).astype(np.float32), np.array([.5, .9, .2, .1], np.float32), 1.0

    be = Disc(tiny_model.cfg)
    size = 8 * be.image_size  # far more than twice the model input: zooming applies to a small disc
    viewer, w = annotator(image=np.zeros((size, size), np.uint8), predictor=Predictor(be))
    shown = []
    w.preview_updated.connect(lambda s: shown.append(s))
    n_dec, n_enc = be.decodes, be.encodes
    click(qtbot, w, (size // 3, size // 2))
    qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=5000)
    assert len([s for s in shown if s]) == 2 and w.candidates is not None
    assert be.decodes == n_dec + 2  # the full view once, then the crop: not the full view a second time
    assert be.encodes == n_enc + 1  # the crop's embedding
    assert w.preview.data[size // 3, size // 2]


def test_hover_does_not_refine_a_position_the_mouse_has_left(annotator, qtbot, FakePredictor):
    """Hover on a large image: when the mouse has moved on while a position was predicted, that position's zoom
    refinement is not queued (it would take the newer position's place); the newest position is refined."""

    class Zooming(FakePredictor):
        image_size = 16

        def predict(self, *a, zoom_refine=None, **kw):
            r = super().predict(*a, **kw)
            r.zoomed = bool(self.zoom_refine)
            return r

    viewer, w = annotator(predictor=Zooming(delays=[0.3]))  # the first hover's prediction is slow
    n = len(w.session.predictor.calls)
    hover(w.prompts, (20, 20))
    qtbot.wait(50)
    hover(w.prompts, (30, 50))  # while the first is still predicting
    qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=5000)
    qtbot.wait(100)
    calls = w.session.predictor.calls[n:]
    assert [(c["zoom_refine"], tuple(np.round(c["points"][-1]).astype(int))) for c in calls] == [
        (False, (20, 20)), (False, (50, 30)), (True, (50, 30))]
