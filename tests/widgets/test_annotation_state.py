"""Pure annotation logic (no Qt): coordinates, prompts, candidates, preview buffer, commits and undo."""
import numpy as np
import pytest

from napari_ultratinysam.annotation import (
    CAMVID_CLASSES,
    AnnotationModel,
    Candidates,
    PredictorSession,
    PredictorSpec,
    PreviewBuffer,
    Prompt,
    box_from_rect,
    class_color_dict,
    clip_box,
    default_backend,
    inside,
    load_predictor,
    mask_bbox,
    rc_to_xy,
)


def test_rc_to_xy_swaps_row_col():
    np.testing.assert_array_equal(rc_to_xy([10, 20]), [20, 10])
    np.testing.assert_array_equal(rc_to_xy([[1, 2], [3, 4]]), [[2, 1], [4, 3]])
    with pytest.raises(ValueError, match="row, col"):
        rc_to_xy([1, 2, 3])


def test_box_from_rect_any_vertex_order_and_3d():
    rect = np.array([[30, 5], [30, 40], [10, 40], [10, 5]])  # (row, col)
    np.testing.assert_array_equal(box_from_rect(rect), [5, 10, 40, 30])
    rect3 = np.c_[np.full(4, 7), rect]  # plane index first
    np.testing.assert_array_equal(box_from_rect(rect3), [5, 10, 40, 30])
    assert clip_box(np.array([-5, -5, 500, 20]), (50, 60)).tolist() == [0, 0, 59, 20]
    assert clip_box(np.array([70, 5, 90, 20]), (50, 60)) is None


def test_inside():
    assert inside((0, 0), (10, 10)) and inside((9.4, 9.4), (10, 10))
    assert not inside((-0.6, 3), (10, 10)) and not inside((3, 9.6), (10, 10))


def test_prompt_from_layers():
    p = Prompt.from_layers(np.array([[2, 10, 20], [2, 11, 21]]), [True, False],
                           np.array([[0, 1, 1], [0, 1, 9], [0, 5, 9], [0, 5, 1]]), image_hw=(64, 64))
    np.testing.assert_array_equal(p.points, [[20, 10], [21, 11]])
    np.testing.assert_array_equal(p.labels, [1, 0])
    np.testing.assert_array_equal(p.box, [1, 1, 9, 5])
    assert not p.empty and Prompt().empty
    kw = Prompt().predictor_kwargs()
    assert kw == {"points": None, "labels": None, "box": None}
    with pytest.raises(ValueError, match="labels"):
        Prompt.from_layers(np.zeros((2, 2)), [True])


def test_candidates_sorted_best_first_and_cycle():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    c = Candidates(masks, [0.5, 0.9, 0.7], np.arange(3)[:, None, None] * np.ones((3, 2, 2)))
    assert c.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert c.mask[1, 1] and c.current_lowres[0, 0] == 1
    assert c.cycle() == 1 and c.mask[2, 2]
    c.cycle(), c.cycle()
    assert c.index == 0
    assert "mask 1/3" in c.describe() and "0.900" in c.describe()


def test_preview_buffer_in_place_and_minimal_region():
    data = np.zeros((2, 50, 60), np.uint8)
    buf = PreviewBuffer(data)
    m = np.zeros((50, 60), bool)
    m[10:20, 5:15] = True
    region = buf.show(m, (1,))
    assert region == (1, slice(10, 20), slice(5, 15))
    assert data[1].sum() == 100 and data[0].sum() == 0
    m2 = np.zeros((50, 60), bool)
    m2[30:32, 40:42] = True
    region = buf.show(m2, (1,))
    assert region == (1, slice(10, 32), slice(5, 42))  # union of old and new boxes
    assert data[1].sum() == 4 and data[1, 30, 40] == 1
    buf.show(m, (0,))  # another plane: the old one is cleared
    assert data[1].sum() == 0 and data[0].sum() == 100
    assert buf.clear() == (0, slice(10, 20), slice(5, 15)) and data.sum() == 0
    assert buf.show(np.zeros((50, 60), bool), (0,)) is None and not buf.showing
    with pytest.raises(ValueError, match="does not match"):
        buf.show(np.zeros((5, 5), bool), (0,))


def test_mask_bbox():
    assert mask_bbox(np.zeros((4, 4), bool)) is None
    m = np.zeros((6, 7), bool)
    m[2, 3] = m[4, 5] = True
    assert mask_bbox(m) == (slice(2, 5), slice(3, 6))


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_commit_ids_classes_and_no_overwrite_by_default():
    labels = np.zeros((40, 40), np.uint32)
    model = AnnotationModel(labels)
    a, _ = model.commit(_disc(labels.shape, 10, 10, 5), 8)
    b, _ = model.commit(_disc(labels.shape, 14, 14, 5), 9)  # overlaps a: only free pixels
    assert (a, b) == (1, 2)
    assert model.object_class == {1: 8, 2: 9}
    assert labels[10, 10] == 1 and labels[14, 14] == 2 and labels[12, 12] == 1
    c, _ = model.commit(_disc(labels.shape, 12, 12, 2), 0, overwrite=True)
    assert labels[12, 12] == c == 3
    with pytest.raises(ValueError, match="empty"):
        model.commit(np.zeros_like(labels, bool), 0)
    with pytest.raises(ValueError, match="already belongs"):
        model.commit(_disc(labels.shape, 10, 10, 1), 0)
    with pytest.raises(ValueError, match="class index"):
        model.commit(_disc(labels.shape, 30, 30, 2), 42)
    assert model.class_name(1) == "Car" and model.class_name(77) == "unclassified"


def test_undo_redo_restores_exactly():
    labels = np.zeros((40, 40), np.uint16)
    model = AnnotationModel(labels)
    model.commit(_disc(labels.shape, 10, 10, 5), 1)
    snap1 = labels.copy()
    model.commit(_disc(labels.shape, 12, 12, 6), 2, overwrite=True)
    snap2 = labels.copy()
    assert model.undo().kind == "commit"
    np.testing.assert_array_equal(labels, snap1)
    assert 2 not in model.object_class
    model.redo()
    np.testing.assert_array_equal(labels, snap2)
    assert model.object_class[2] == 2
    model.undo(), model.undo()
    assert labels.sum() == 0 and model.object_class == {}
    assert model.undo() is None
    model.redo()
    np.testing.assert_array_equal(labels, snap1)
    model.commit(_disc(labels.shape, 30, 30, 3), 0)  # a new edit clears redo
    assert not model.can_redo


def test_undo_keeps_brush_edits():
    labels = np.zeros((40, 40), np.uint32)
    model = AnnotationModel(labels)
    oid, _ = model.commit(_disc(labels.shape, 20, 20, 8), 3)
    labels[20, 15:26] = 7  # a brush stroke across the object (another id)
    labels[0:3, 0:3] = 7  # and somewhere else
    labels[22, 22] = 0  # an eraser dab inside the object
    model.undo()
    assert (labels[20, 15:26] == 7).all() and (labels[0:3, 0:3] == 7).all()
    assert (labels == oid).sum() == 0
    model.redo()  # pixels painted with another id meanwhile stay as the user left them
    assert (labels[20, 15:26] == 7).all() and (labels[0:3, 0:3] == 7).all()
    assert labels[14, 20] == oid
    # the erased pixel held its pre-commit value (0) again, so redoing the commit fills it (documented behaviour)
    assert labels[22, 22] == oid


def test_delete_and_reclass_are_undoable_3d():
    labels = np.zeros((3, 30, 30), np.uint32)
    model = AnnotationModel(labels)
    a, _ = model.commit(_disc((30, 30), 10, 10, 4), 1, plane=(0,))
    b, _ = model.commit(_disc((30, 30), 10, 10, 4), 2, plane=(2,))
    assert labels[0, 10, 10] == a and labels[2, 10, 10] == b and labels[1].sum() == 0
    assert model.object_at((2,), 10, 10) == b and model.object_at((1,), 10, 10) == 0
    assert model.object_at((0,), 99, 10) == 0
    model.set_class(a, 5)
    assert model.object_class[a] == 5
    model.delete(b)
    assert (labels == b).sum() == 0 and b not in model.object_class
    model.undo()
    assert labels[2, 10, 10] == b and model.object_class[b] == 2
    model.undo()
    assert model.object_class[a] == 1
    with pytest.raises(ValueError):
        model.delete(0)
    with pytest.raises(ValueError, match="does not exist"):
        model.delete(99)


def test_class_list_editing():
    labels = np.zeros((10, 10), np.uint8)
    model = AnnotationModel(labels)
    assert [c.name for c in model.classes] == [c.name for c in CAMVID_CLASSES]
    assert model.classes[8].color == (64, 0, 128) and len(model.classes) == 11
    i = model.add_class("Dog", (1, 2, 3))
    assert i == 11 and model.classes[i].color == (1, 2, 3)
    with pytest.raises(ValueError, match="exists"):
        model.add_class("Dog")
    model.rename_class(i, "Hound")
    model.recolor_class(i, (9, 9, 9))
    assert model.classes[i].name == "Hound" and model.classes[i].color == (9, 9, 9)
    m = np.zeros((10, 10), bool)
    m[2:4, 2:4] = True
    oid, _ = model.commit(m, i)
    with pytest.raises(ValueError, match="used by 1"):
        model.remove_class(i)
    model.set_class(oid, 10)
    model.remove_class(0)  # indices above shift down
    assert model.object_class[oid] == 9 and model.classes[9].name == "Bicyclist"
    assert model.classes[0].name == "Building"


def test_color_dicts():
    classes = list(CAMVID_CLASSES)
    d = class_color_dict({3: 8, 4: 0}, classes)
    assert d[3] == pytest.approx((64 / 255, 0, 128 / 255, 1))
    assert d[0][3] == 0 and d[None][3] == 1
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 5
    model = AnnotationModel(labels, object_class={5: 1})
    assert model.color_dict()[5] == pytest.approx((128 / 255, 0, 0, 1))


class _Factories:
    calls: list = []

    @classmethod
    def from_default(cls, backend="torch", precision="float"):
        cls.calls.append(("default", backend) + ((precision,) if precision != "float" else ()))
        return "P"

    @classmethod
    def from_checkpoint(cls, path, backend="torch", precision="float"):
        cls.calls.append(("ckpt", path, backend) + ((precision,) if precision != "float" else ()))
        return "P"

    @classmethod
    def from_onnx(cls, folder, precision="float"):
        cls.calls.append(("onnx", folder) + ((precision,) if precision != "float" else ()))
        return "P"


def test_load_predictor_dispatch():
    _Factories.calls.clear()
    load_predictor(PredictorSpec(), _Factories)
    load_predictor(PredictorSpec("default", "", "onnxruntime"), _Factories)
    load_predictor(PredictorSpec("checkpoint", "/x.safetensors", "torch"), _Factories)
    load_predictor(PredictorSpec("onnx", "/d", "onnxruntime"), _Factories)
    load_predictor(PredictorSpec("default", "", "onnxruntime int8"), _Factories)
    load_predictor(PredictorSpec("checkpoint", "/x.safetensors", "onnxruntime int8"), _Factories)
    load_predictor(PredictorSpec("default", "", "openvino bf16"), _Factories)
    load_predictor(PredictorSpec("onnx", "/d", "openvino bf16"), _Factories)
    assert _Factories.calls == [("default", "torch"), ("default", "onnx"), ("ckpt", "/x.safetensors", "torch"),
                                ("onnx", "/d"), ("default", "onnx", "int8"), ("ckpt", "/x.safetensors", "onnx", "int8"),
                                ("default", "onnx", "bf16"), ("onnx", "/d", "bf16")]
    with pytest.raises(ValueError, match="choose a checkpoint"):
        load_predictor(PredictorSpec("checkpoint", "", "torch"), _Factories)
    with pytest.raises(ValueError, match="onnxruntime or openvino bf16 backend"):
        load_predictor(PredictorSpec("onnx", "/d", "torch"), _Factories)
    with pytest.raises(ValueError, match="onnxruntime or openvino bf16 backend"):
        load_predictor(PredictorSpec("onnx", "/d", "onnxruntime int8"), _Factories)
    with pytest.raises(ValueError, match="backend"):
        load_predictor(PredictorSpec("default", "", "tf"), _Factories)


def test_default_backend_from_capabilities():
    assert default_backend({"avx2": True, "amx_bf16": True}, openvino=True) == "openvino bf16"
    assert default_backend({"avx2": True, "amx_bf16": True}, openvino=False) == "onnxruntime"
    assert default_backend({"avx2": True, "avx512_bf16": True}, openvino=True) == "openvino bf16"  # Zen 4
    assert default_backend({"avx2": True, "avx512_vnni": True}, openvino=True) == "onnxruntime"
    assert default_backend({}, openvino=True) == "onnxruntime"


def test_predictor_session_embeds_once_per_key(fake_predictor):
    s = PredictorSession(fake_predictor)
    img = np.zeros((20, 30), np.uint8)
    assert s.ensure_image("a", lambda: img) is True
    assert s.ensure_image("a", lambda: img) is False
    s.zoom_refine = False
    r = s.predict("a", lambda: img, Prompt(np.array([[5.0, 6.0]]), np.array([1])))
    assert r.masks.shape[1:] == (20, 30) and fake_predictor.calls[-1]["zoom_refine"] is False
    assert fake_predictor.set_image_calls == ["a"]
    s.ensure_image("b", lambda: img)
    s.ensure_image("a", lambda: img)  # cached in the predictor: set again, no new embedding
    assert s.ensure_image("a", lambda: img) is False
    lazy = PredictorSession(loader=lambda spec: fake_predictor)
    assert lazy.ensure_predictor() is fake_predictor
