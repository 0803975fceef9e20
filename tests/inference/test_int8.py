"""int8 ONNX path (runtime_quant): precision choice, the int8 folder, its agreement with float, cache, CLI."""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.core.paths import SAMPLE_DIR as SAMPLE_DATA
from napari_ultratinysam.core.paths import cache_root
from napari_ultratinysam.inference import int8 as rq
from napari_ultratinysam.inference.backends.onnx import OnnxBackend
from napari_ultratinysam.inference.predictor import Predictor
from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, save_checkpoint

AVX2_ONLY = {"avx2": True}
NONE = {}


def _iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else np.logical_and(a, b).sum() / u


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("utsam-cache")
    mp.setenv("UTSAM_CACHE_DIR", str(d))
    yield d
    mp.undo()


@pytest.fixture(scope="module")
def shipped_int8(cache_dir):
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("shipped weights absent")
    return rq.int8_folder_for_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def shipped_float():
    return Predictor.from_default(backend="onnx")


# ------------------------------------------------------------------ precision choice
def test_cpu_capabilities_reads_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor : 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n")
    caps = rq.cpu_capabilities(f)
    assert caps["avx2"] and caps["avx512_vnni"] and not caps["amx_int8"] and not caps["avx512_bf16"]
    assert not any(rq.cpu_capabilities(tmp_path / "missing").values())
    assert set(rq.cpu_capabilities()) >= {"avx2", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16"}


def test_choose_precision():
    assert rq.choose_precision("auto", AVX2_ONLY) == "int8"
    assert rq.choose_precision("auto", NONE) == "float"
    assert rq.choose_precision("int8", NONE) == "int8" and rq.choose_precision("float", AVX2_ONLY) == "float"
    with pytest.raises(ValueError, match="no avx512_bf16"):
        rq.choose_precision("bf16", AVX2_ONLY, openvino=True)
    with pytest.raises(ValueError, match=r"\[openvino\] extra"):
        rq.choose_precision("bf16", {"avx512_bf16": True}, openvino=False)
    assert rq.choose_precision("bf16", {"avx512_bf16": True}, openvino=True) == "bf16"
    amx = {**AVX2_ONLY, "amx_bf16": True, "avx512_bf16": True}
    assert rq.choose_precision("auto", amx, openvino=True) == "bf16"
    assert rq.choose_precision("auto", amx, openvino=False) == "int8"  # falls back without the package
    assert rq.choose_precision("auto", AVX2_ONLY, openvino=True) == "int8"
    zen4 = {**AVX2_ONLY, "avx512_vnni": True, "avx512_bf16": True}  # AVX512-BF16 without AMX: bf16 measured faster
    assert rq.choose_precision("auto", zen4, openvino=True) == "bf16"
    assert rq.choose_precision("auto", {**zen4, "avx512_bf16": False}, openvino=True) == "int8"
    with pytest.raises(ValueError, match="precision must be one of"):
        rq.choose_precision("fp8")


def test_precision_needs_the_onnx_backend(tiny_model):
    with pytest.raises(ValueError, match="needs backend='onnx'"):
        Predictor.from_model(tiny_model, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor.from_model(tiny_model, backend="onnx", precision="half")


def test_quantization_failure_falls_back_to_float(tiny_model, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("no quantizer here")

    real = rq.onnx_folder_for_model

    def boom_int8(model, precision="float", *a, **k):
        if precision == "int8":
            boom()
        return real(model, precision, *a, **k)

    monkeypatch.setattr(rq, "onnx_folder_for_model", boom_int8)
    with caplog.at_level(logging.WARNING):
        p = Predictor.from_model(tiny_model, backend="onnx", precision="int8", zoom_refine=False)
    assert p.backend.precision == "float"
    assert "int8 quantization failed" in caplog.text and "no quantizer here" in caplog.text


# ------------------------------------------------------------------ the folder
def test_quantize_tiny_folder_with_given_calibration(tmp_path, tiny_model, rng):
    from napari_ultratinysam.inference.onnx_export import export_onnx

    export_onnx(tiny_model, tmp_path / "float")
    calib = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    out = rq.quantize_onnx_folder(tmp_path / "float", tmp_path / "int8", calibration=calib, encoder_min_iou=None)
    meta = json.loads((out / "config.json").read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["encoder"]["int8"]
    assert meta["quantization"]["calibration_images"] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    be = OnnxBackend(out)
    assert be.precision == "int8" and OnnxBackend(tmp_path / "float").precision == "float"
    p = Predictor(be, zoom_refine=False)
    p.set_image(calib[0])
    r = p.predict(points=[[30, 20]])
    assert r.masks.shape == (3, 48, 64) and np.all(np.isfinite(r.scores))
    with pytest.raises(ValueError, match="already int8"):
        rq.quantize_onnx_folder(out, tmp_path / "again")
    with pytest.raises(ValueError, match=r"calibration image 0: expected \(H, W, 3\) uint8"):
        rq.quantize_onnx_folder(tmp_path / "float", tmp_path / "bad", calibration=[np.zeros((8, 8), np.float32)])


def _sample_clicks():
    cases = []
    for name, inst in (("coins.png", "coins_instances.png"), ("shapes.png", "shapes_instances.png")):
        from napari_ultratinysam.core.prompts import interior_point

        ids = np.asarray(Image.open(SAMPLE_DATA / inst))
        cases.append((np.asarray(Image.open(SAMPLE_DATA / name)),
                      [interior_point(ids == u) for u in np.unique(ids) if u]))
    for name in ("chelsea.jpg", "coffee.jpg"):
        img = np.asarray(Image.open(SAMPLE_DATA / name))
        h, w = img.shape[:2]
        cases.append((img, [(w * fx, h * fy) for fy in (0.25, 0.5, 0.75) for fx in (0.25, 0.5, 0.75)]))
    return cases


def _mean_iou(pa, pb, cases):
    ious = []
    for img, pts in cases:
        pa.set_image(img)
        pb.set_image(img)
        ious += [_iou(pa.predict(points=[p]).masks[0], pb.predict(points=[p]).masks[0]) for p in pts]
    return float(np.mean(ious)), len(ious)


def test_shipped_int8_masks_agree_with_float_on_samples(shipped_int8, shipped_float):
    be = OnnxBackend(shipped_int8)
    assert be.precision == "int8"
    meta = json.loads((shipped_int8 / "config.json").read_text())["quantization"]
    assert meta["decoder"]["nodes"] > 0 and 0.0 <= meta["encoder"]["int8_mask_iou_vs_float"] <= 1.0
    miou, n = _mean_iou(shipped_float, Predictor(be), _sample_clicks())
    assert n >= 40 and miou >= 0.98, f"int8 vs float mean mask IoU {miou:.4f} over {n} clicks"


def test_cache_is_reused(shipped_int8, monkeypatch):
    def no_requantize(*a, **k):
        raise AssertionError("quantized again")

    monkeypatch.setattr(rq, "quantize_onnx_folder", no_requantize)
    stamp = (shipped_int8 / "decoder.onnx").stat().st_mtime_ns
    assert rq.int8_folder_for_checkpoint(DEFAULT_CHECKPOINT) == shipped_int8
    p = Predictor.from_default(backend="onnx", precision="int8")
    assert p.backend.precision == "int8" and p.backend.folder == shipped_int8
    assert (shipped_int8 / "decoder.onnx").stat().st_mtime_ns == stamp
    assert cache_root() in shipped_int8.parents


def test_float_folder_is_cached_and_rebuilt_when_stale(tiny_model, cache_dir, monkeypatch):
    """The float export is made once per weights (keyed by their hash) and reused by later loads; a folder of an
    older export format is rebuilt."""
    import json

    import napari_ultratinysam.inference.backends.onnx as rt
    import napari_ultratinysam.inference.onnx_export as ox

    folder = rq.onnx_folder_for_model(tiny_model)
    assert cache_dir in folder.parents and folder.name == "float"
    assert json.loads((folder / "config.json").read_text())["export_format"] == rt.EXPORT_FORMAT
    calls = []
    real_export = ox.export_onnx
    monkeypatch.setattr(ox, "export_onnx", lambda *a, **k: calls.append(1) or real_export(*a, **k))
    p = Predictor.from_model(tiny_model, backend="onnx")
    assert p.backend.folder == folder and calls == []  # reused, not exported again
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "export_format": rt.EXPORT_FORMAT - 1}))
    assert rq.onnx_folder_for_model(tiny_model) == folder and calls == [1]  # stale: exported again
    assert json.loads((folder / "config.json").read_text())["export_format"] == rt.EXPORT_FORMAT
    with pytest.raises(ValueError, match="precision must be 'float' or 'int8'"):
        rq.cached_onnx_folder("k" * 64, lambda: tiny_model, "bf16")


def test_camvid_val_objects_agree(shipped_int8, shipped_float, real):
    root = real("camvid")
    from napari_ultratinysam.core.prompts import interior_point
    from napari_ultratinysam.data.readers import read_dataset

    ds = read_dataset(root, split="val", min_area=2110)  # >= 150 px at 128x128 (the paper's size filter)
    cases = []
    for i in range(3):
        d = ds[i]
        cases.append((d.image, [interior_point(m) for m in d.masks]))
    miou, n = _mean_iou(shipped_float, Predictor(OnnxBackend(shipped_int8)), cases)
    assert n >= 10 and miou >= 0.95, f"CamVid val: int8 vs float mean mask IoU {miou:.4f} over {n} objects"


# ------------------------------------------------------------------ CLI
@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")


def test_cli_segment_precision(tmp_path, tiny_ckpt, cache_dir, capsys, monkeypatch):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "m.png"
    assert main(["segment", str(img), "--point", "40,30", "--checkpoint", str(tiny_ckpt), "--precision", "int8",
                 "-o", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (60, 90)
    assert len(list(cache_dir.glob("*/int8/config.json"))) >= 1
    capsys.readouterr()
    assert main(["segment", str(img), "--point", "40,30", "--checkpoint", str(tiny_ckpt), "--precision", "int8",
                 "--backend", "torch", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --backend onnx" in err[0]
    with pytest.raises(SystemExit):  # argparse: not a precision
        main(["segment", str(img), "--point", "40,30", "--precision", "fp8", "-o", str(out)])
    capsys.readouterr()
    monkeypatch.setattr(rq, "cpu_capabilities", lambda *a: dict(AVX2_ONLY))
    assert main(["segment", str(img), "--point", "40,30", "--checkpoint", str(tiny_ckpt), "--precision", "bf16",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no avx512_bf16" in err[0]


def test_cli_export_onnx_int8(tmp_path, tiny_ckpt, capsys):
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(cal / f"{i}.png")
    (cal / "notes.txt").write_text("not an image")
    out = tmp_path / "onnx8"
    assert main(["export-onnx", "--checkpoint", str(tiny_ckpt), "--precision", "int8", "--calibration", str(cal),
                 "-o", str(out)]) == 0
    assert "int8 export" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 2
    assert Predictor.from_onnx(out).backend.precision == "int8"
    assert main(["export-onnx", "--checkpoint", str(tiny_ckpt), "--calibration", str(cal), "-o", str(out)]) == 2
    assert "only used with --precision int8" in capsys.readouterr().err
    assert main(["export-onnx", "--checkpoint", str(tiny_ckpt), "--precision", "int8", "--calibration",
                 str(tmp_path / "nope"), "-o", str(out)]) == 2
