"""Propagate in the annotator: a stack layer, commit, Propagate -> every slice has the object, one undo step; the
embedding keys are cheap (layer, data version, slice), never a hash of the pixels."""
from __future__ import annotations

import numpy as np
import pytest


def moving_square_stack(n=9, h=64, w=80):
    st = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        st[i, 20:40, 20 + 3 * i:40 + 3 * i] = 200
    return st


def click_and_wait(qtbot, w, row, col):
    with qtbot.waitSignal(w.preview_updated, timeout=5000):
        w.add_point(row, col)
    qtbot.waitUntil(lambda: not w._pending_points, timeout=2000)


def test_commit_propagate_undo_redo(annotator, qtbot):
    viewer, w = annotator(image=moving_square_stack())
    assert w._plane == (4,) and w.propagate_btn.isEnabled()
    assert "Shift+P" in {str(k) for k in viewer.keymap} and "Shift+P" in w.help_label.text()
    click_and_wait(qtbot, w, 30, 42)
    oid = w.commit()
    assert oid == 1
    start = (w.annotations.data[4] == oid).copy()
    with qtbot.waitSignal(w.propagated, timeout=10000):
        w.propagate_btn.click()
    ann = w.annotations.data
    assert all((ann[i] == oid).any() for i in range(9)), "every slice has the object"
    assert np.array_equal(ann[4] == oid, start)  # the committed slice is kept as it was
    keys = w.session.predictor.set_image_calls
    assert None not in keys and {k[1] for k in keys} == {(i,) for i in range(9)}  # one cheap key per slice
    assert "propagated #1 to 8 slice(s)" in w.status_label.text()
    w.undo()  # the whole propagation is one step
    assert [(ann[i] == oid).any() for i in range(9)] == [i == 4 for i in range(9)]
    assert np.array_equal(ann[4] == oid, start)
    w.undo()  # then the commit
    assert not ann.any()
    w.redo()
    w.redo()
    assert all((ann[i] == oid).any() for i in range(9))


def test_shift_p_propagates_the_preview(annotator, qtbot):
    viewer, w = annotator(image=moving_square_stack())
    w.annotations.data[0, 29:31, :] = 7  # another object across slice 0, kept: only unlabelled pixels are taken
    w.model.object_class[7] = 0
    click_and_wait(qtbot, w, 30, 42)
    shift_p = next(fn for k, fn in viewer.keymap.items() if str(k) == "Shift+P")
    with qtbot.waitSignal(w.propagated, timeout=10000):
        shift_p(viewer)  # the preview is committed first, then carried
    ann, oid = w.annotations.data, w.selected_id
    assert oid == 8 and w.model.object_class[oid] == w.current_class()
    assert all((ann[i] == oid).any() for i in range(9)) and (ann[0, 29:31] == 7).all()
    w.undo()
    assert [(ann[i] == oid).any() for i in range(9)] == [i == 4 for i in range(9)]


def test_propagate_needs_a_stack_and_an_object(annotator, qtbot):
    viewer, w = annotator()  # a 2-D image
    assert not w.propagate_btn.isEnabled()
    assert w.propagate_object() is None and "3-D" in w.status_label.text()
    viewer2, w2 = annotator(image=moving_square_stack())
    assert w2.propagate_object() is None and "commit an object" in w2.status_label.text()
    assert not w2.annotations.data.any()


def test_replaced_layer_data_gets_new_embedding_keys(annotator, qtbot):
    viewer, w = annotator(image=moving_square_stack())
    before = w._embedding_key()
    viewer.layers["img"].data = moving_square_stack()[::-1].copy()
    after = w._embedding_key()
    assert after != before and after[1:] == before[1:]  # same slice, new data version
    click_and_wait(qtbot, w, 30, 42)
    assert w.session.predictor.set_image_calls[-1] == after


@pytest.fixture(scope="module")
def real_predictor():
    from napari_ultratinysam import Predictor

    return Predictor.from_default()


def test_real_model_moving_disc(make_napari_viewer, qtbot, real_predictor, disc_stack):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    stack, gt = disc_stack()
    viewer = make_napari_viewer()
    w = AnnotatorWidget(viewer, predictor=real_predictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=60000):
            viewer.add_image(stack, name="disc", rgb=True)
        if w._plane != (10,):
            with qtbot.waitSignal(w.embedding_ready, timeout=60000):
                viewer.dims.set_current_step(0, 10)
        ys, xs = np.nonzero(gt[10])
        click_and_wait(qtbot, w, float(ys.mean()), float(xs.mean()))
        oid = w.commit()
        with qtbot.waitSignal(w.propagated, timeout=120000):
            w.propagate_object()
        ann = w.annotations.data
        ious = [((ann[i] == oid) & gt[i]).sum() / ((ann[i] == oid) | gt[i]).sum() for i in range(20)]
        assert min(ious) >= 0.9, [round(float(v), 3) for v in ious]
        w.undo()
        assert [(ann[i] == oid).any() for i in range(20)] == [i == 10 for i in range(20)]
    finally:
        w.cleanup()
