"""The OpenVINO backend: same outputs as onnxruntime on the same float ONNX pair (float32 exactly, bf16 closely),
the static single-click decoder and the dynamic one agree, and bad input gets one clear error."""
import json

import numpy as np
import pytest

from napari_ultratinysam.core.paths import SAMPLE_DIR
from napari_ultratinysam.inference import int8 as rq
from napari_ultratinysam.inference.backends.onnx import OnnxBackend
from napari_ultratinysam.inference.onnx_export import export_onnx
from napari_ultratinysam.inference.predictor import Predictor
from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

pytest.importorskip("openvino")
from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend  # noqa: E402

SAMPLES = SAMPLE_DIR
BF16_CPU = {"avx2": True, "avx512_bf16": True, "amx_bf16": True}
_caps = rq.cpu_capabilities()
HAS_BF16 = bool(_caps.get("avx512_bf16") or _caps.get("amx_bf16"))  # OpenVINO refuses bf16 on other CPUs
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no avx512_bf16 / amx_bf16")


@pytest.fixture(scope="module")
def onnx_folder(tiny_model, tmp_path_factory):
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx"))


def _prompts(rng, size):
    yield np.array([[size * 0.4, size * 0.6]], np.float32), np.array([1.0], np.float32), None  # one click (+pad)
    yield (rng.random((3, 2)) * size).astype(np.float32), np.array([1, 0, 1], np.float32), None
    yield (np.array([[10.0, 12.0], [50.0, 40.0]], np.float32), np.array([2.0, 3.0], np.float32),
           rng.standard_normal((size // 4, size // 4)).astype(np.float32))  # a box + a previous mask


@pytest.mark.parametrize("precision,atol", [("float", 1e-3), pytest.param("bf16", 0.25, marks=needs_bf16)])
def test_matches_onnxruntime(onnx_folder, precision, atol):
    rng = np.random.default_rng(0)
    ort, ov = OnnxBackend(onnx_folder), OpenVinoBackend(onnx_folder, precision=precision)
    assert ov.precision == precision and ov.image_size == ort.image_size
    x = rng.standard_normal((1, 3, ort.image_size, ort.image_size)).astype(np.float32)
    fa, fb = ort.encode(x), ov.encode(x)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fb[k].shape == fa[k].shape and np.abs(fb[k] - fa[k]).max() <= atol * max(1.0, np.abs(fa[k]).max())
    for coords, labels, mask_in in _prompts(rng, ort.image_size):
        pad = coords if mask_in is not None or labels[0] >= 2 else np.concatenate([coords, [[0.0, 0.0]]])
        lab = labels if len(pad) == len(coords) else np.concatenate([labels, [-1.0]]).astype(np.float32)
        la, ia, oa = ort.decode(fa, pad.astype(np.float32), lab, mask_in)
        lb, ib, ob = ov.decode(fa, pad.astype(np.float32), lab, mask_in)  # the same features: decoder alone
        assert lb.shape == la.shape and ib.shape == ia.shape
        scale = max(1.0, np.abs(la).max())
        assert np.abs(lb - la).max() <= atol * scale, len(pad)
        assert np.abs(ib - ia).max() <= atol and abs(ob - oa) <= atol * max(1.0, abs(oa))
        # sign agreement: the masks (logits > 0) are the same almost everywhere
        assert np.mean((lb > 0) == (la > 0)) >= (0.999 if precision == "float" else 0.97)


def test_static_and_dynamic_decoders_agree(onnx_folder):
    ov = OpenVinoBackend(onnx_folder, precision="float")
    x = np.random.default_rng(1).standard_normal((1, 3, ov.image_size, ov.image_size)).astype(np.float32)
    f = ov.encode(x)
    coords = np.array([[20.0, 30.0], [0.0, 0.0]], np.float32)
    labels = np.array([1.0, -1.0], np.float32)
    assert set(ov._nomask) == {None, 1, 2}  # one click and a box are also compiled with static shapes
    a = ov.decode(f, coords, labels, None)
    static, ov._nomask = ov._nomask, {None: ov._nomask[None]}
    try:
        b = ov.decode(f, coords, labels, None)  # the dynamic graph
    finally:
        ov._nomask = static
    assert np.abs(a[0] - b[0]).max() < 1e-4 and np.abs(a[1] - b[1]).max() < 1e-5


@pytest.mark.parametrize("precision,atol", [("float", 1e-3), pytest.param("bf16", 0.25, marks=needs_bf16)])
def test_static_request_follows_the_image(onnx_folder, precision, atol):
    """The single-click request binds an image's features once; a new image (or the previous one again) rebinds;
    every click's outputs are its own."""
    ort, ov = OnnxBackend(onnx_folder), OpenVinoBackend(onnx_folder, precision=precision)
    rng = np.random.default_rng(3)
    feats = [ort.encode(rng.standard_normal((1, 3, ort.image_size, ort.image_size)).astype(np.float32))
             for _ in range(2)]
    for n in (1, 2):  # a click, a box: both static requests
        coords = np.array([[30.0, 40.0], [80.0, 90.0]], np.float32)[:n]
        labels = np.array([1.0] if n == 1 else [2.0, 3.0], np.float32)
        outs = []
        for f in (feats[0], feats[1], feats[0], feats[0]):
            a, b = ort.decode(f, coords, labels, None), ov.decode(f, coords, labels, None)
            scale = max(1.0, np.abs(a[0]).max())
            assert np.abs(a[0] - b[0]).max() <= atol * scale and np.abs(a[1] - b[1]).max() <= atol
            assert np.mean((a[0] > 0) == (b[0] > 0)) >= 0.97
            outs.append(b)
            coords = coords + 7.0  # and a new click each time
        assert not np.shares_memory(outs[0][0], outs[1][0])  # results are copies, not views of the request


@needs_bf16
def test_predictor_bf16(tiny_model, monkeypatch):
    monkeypatch.setattr(rq, "cpu_capabilities", lambda *a: dict(BF16_CPU))
    p = Predictor.from_model(tiny_model, backend="onnx", precision="bf16")
    assert isinstance(p.backend, OpenVinoBackend) and p.backend.precision == "bf16"
    img = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    p.set_image(img)
    r = p.predict(points=[[30, 20]])
    assert r.masks.shape[1:] == (50, 70) and np.all((r.scores >= 0) & (r.scores <= 1))
    assert Predictor.from_model(tiny_model, backend="onnx", precision="auto").backend.precision == "bf16"


def test_bad_input(onnx_folder, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of float, bf16"):
        OpenVinoBackend(onnx_folder, precision="int8")
    with pytest.raises(FileNotFoundError, match="encoder.onnx is missing"):
        OpenVinoBackend(tmp_path)
    q = tmp_path / "q"
    q.mkdir()
    for f in ("encoder.onnx", "decoder.onnx"):
        (q / f).write_bytes((onnx_folder / f).read_bytes())
    meta = json.loads((onnx_folder / "config.json").read_text())
    (q / "config.json").write_text(json.dumps({**meta, "precision": "int8"}))
    with pytest.raises(ValueError, match="holds int8 graphs"):
        OpenVinoBackend(q)
    (q / "config.json").write_text(json.dumps(meta))
    (q / "decoder.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="OpenVINO cannot load it"):
        OpenVinoBackend(q)
    monkeypatch.setattr(rq, "cpu_capabilities", lambda *a: {"avx2": True})
    with pytest.raises(ValueError, match="no avx512_bf16"):
        Predictor.from_onnx(onnx_folder, precision="bf16")
    with pytest.raises(ValueError, match="an ONNX folder runs as exported"):
        Predictor.from_onnx(onnx_folder, precision="int8")


def test_predictor_falls_back_to_float_when_openvino_fails(tiny_model, monkeypatch, caplog):
    import napari_ultratinysam.inference.backends.openvino as ro

    monkeypatch.setattr(rq, "cpu_capabilities", lambda *a: dict(BF16_CPU))

    def broken(*a, **kw):
        raise ValueError("ONNX model folder x: OpenVINO cannot load it (no bf16 here)")

    monkeypatch.setattr(ro, "OpenVinoBackend", broken)
    with caplog.at_level("WARNING"):
        p = Predictor.from_model(tiny_model, backend="onnx", precision="bf16")
    assert isinstance(p.backend, OnnxBackend) and p.backend.precision == "float"
    assert "OpenVINO bf16 failed to load" in caplog.text


@needs_bf16
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no default weights in the package")
def test_bf16_masks_agree_with_float_on_the_shipped_model():
    """bf16 (encoder and decoder) against onnxruntime float, shipped weights, one click and one box per object of
    the shapes and coins samples (measured: mean mask IoU 0.998, median 0.999, lowest 0.975, with the trunk's
    high-resolution layers in float32; 0.99 with every layer in bf16). Catches miscompiled graphs: a wrong static
    single-click graph gave ~0.3."""
    from PIL import Image

    from napari_ultratinysam.core.prompts import interior_point
    from napari_ultratinysam.evaluation.metrics import agreement_iou

    fp = Predictor.from_default(backend="onnx")
    bp = Predictor.from_default(backend="onnx", precision="bf16")
    assert isinstance(bp.backend, OpenVinoBackend)
    ious = []
    for name in ("shapes", "coins"):
        img = np.array(Image.open(SAMPLES / f"{name}.png").convert("RGB"))
        ids = np.array(Image.open(SAMPLES / f"{name}_instances.png"))
        fp.set_image(img)
        bp.set_image(img)
        for v in [v for v in np.unique(ids) if v]:
            pt = [interior_point(ids == v)]
            ious.append(agreement_iou(fp.predict(points=pt).mask(0), bp.predict(points=pt).mask(0)))
            ys, xs = np.nonzero(ids == v)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            ious.append(agreement_iou(fp.predict(box=box).mask(0), bp.predict(box=box).mask(0)))
    assert len(ious) == 56 and np.mean(ious) >= 0.98 and np.median(ious) >= 0.99, ious


@needs_bf16
def test_bf16_keeps_the_high_resolution_trunk_layers_in_float32(onnx_folder):
    """Under bf16 the trunk's layers at >= 1/4 of the input side run in float32 (the rest in bf16); the float
    backend runs every convolution in float32."""
    import openvino as ov

    from napari_ultratinysam.inference.backends.openvino import highres_trunk_layers

    model = ov.Core().read_model(str(onnx_folder / "encoder.onnx"))
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    highres = highres_trunk_layers(model, OnnxBackend(onnx_folder).image_size)
    n_high = sum(op.get_friendly_name() in highres for op in convs)
    assert 0 < n_high < len(convs)  # the stem and first stage, not the whole encoder
    bf = OpenVinoBackend(onnx_folder, precision="bf16")
    assert bf.float32_convolutions == n_high
    assert OpenVinoBackend(onnx_folder, precision="float").float32_convolutions == len(convs)


@needs_bf16
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no default weights in the package")
def test_bf16_agrees_on_camvid_val_objects(real):
    """The issue's check on a small set (the full split is in BENCHMARKS.md: mean mask IoU 0.983 over 764 objects):
    one click at the interior of each object of the first 10 CamVid val images (70 objects; measured 0.988 on an
    AMD Zen 4 with the decoder's int8 weights, 0.990 on an AMX Xeon before them)."""
    from napari_ultratinysam.core.prompts import interior_point
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.evaluation.metrics import agreement_iou

    ds = read_dataset(real("camvid"), split="val", min_area=2110)  # >= 150 px at 128x128 (the paper's size filter)
    fp = Predictor.from_default(backend="onnx")
    bp = Predictor.from_default(backend="onnx", precision="bf16")
    ious = []
    for i in range(10):
        d = ds[i]
        fp.set_image(d.image)
        bp.set_image(d.image)
        for m in d.masks:
            pt = [interior_point(m)]
            ious.append(agreement_iou(fp.predict(points=pt).mask(0), bp.predict(points=pt).mask(0)))
    assert len(ious) >= 50 and np.mean(ious) >= 0.98, (len(ious), np.mean(ious))


def test_int8_matmul_weights_quantizes_per_output_channel(onnx_folder):
    """The decoder's matrix products get int8 weights + one scale per output channel; the graph computes the same
    products within int8 rounding (float precision, so only the weights differ)."""
    import openvino as ov

    from napari_ultratinysam.inference.backends.openvino import _compile, int8_matmul_weights

    core = ov.Core()
    plain = core.read_model(str(onnx_folder / "decoder_nomask.onnx"))
    m = core.read_model(str(onnx_folder / "decoder_nomask.onnx"))
    n_big = int8_matmul_weights(m)  # the default size floor
    m = core.read_model(str(onnx_folder / "decoder_nomask.onnx"))
    n_all = int8_matmul_weights(m, min_size=1)
    assert n_all >= 10 and n_all >= n_big
    consts = [op for op in m.get_ordered_ops() if op.get_type_name() == "Constant"
              and op.get_output_element_type(0) == ov.Type.i8]
    assert len(consts) == n_all and all(np.abs(op.get_data()).max() == 127 for op in consts)
    rng = np.random.default_rng(0)
    feed = {p.get_any_name(): rng.standard_normal([d.get_length() if d.is_static else 1
                                                  for d in p.get_partial_shape()]).astype(np.float32)
            for p in plain.inputs if p.get_any_name() not in ("point_coords", "point_labels")}
    feed.update(point_coords=np.array([[[30.0, 40.0], [0.0, 0.0]]], np.float32),
                point_labels=np.array([[1.0, -1.0]], np.float32))
    a = _compile(core, plain, 1, "float").create_infer_request().infer(feed)
    b = _compile(core, m, 1, "float").create_infer_request().infer(feed)
    la, lb = np.array(a.to_tuple()[0]), np.array(b.to_tuple()[0])
    assert 0 < np.abs(lb - la).max() <= 0.05 * max(1.0, np.abs(la).max())
    assert np.mean((la > 0) == (lb > 0)) >= 0.99


@needs_bf16
def test_bf16_decoder_has_int8_weights(onnx_folder):
    assert OpenVinoBackend(onnx_folder, precision="bf16").int8_weight_matmuls > 0
    assert OpenVinoBackend(onnx_folder, precision="bf16", int8_weights=False).int8_weight_matmuls == 0
    assert OpenVinoBackend(onnx_folder, precision="float").int8_weight_matmuls == 0


def test_exit_right_after_load_waits_for_the_background_compile():
    """Exiting while the other decoder graphs still compile in the background used to abort the process
    (exit 134, "terminate called without an active exception"): the compile thread is waited for."""
    import subprocess
    import sys

    from napari_ultratinysam.inference.int8 import SHIPPED_ONNX_DIR

    script = ("from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend\n"
              f"b = OpenVinoBackend({str(SHIPPED_ONNX_DIR)!r}, precision='float', background=True)\n"
              "assert not b._compiled.is_set(), 'compiled before the exit: nothing tested'\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
