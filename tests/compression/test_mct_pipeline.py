"""MCT PTQ/QAT of the tiny preset, the MCTQ ONNX on the CPU, float-vs-quantized agreement, calibration data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_ultratinysam.compression.calibration import CalibrationSample, load_calibration
from napari_ultratinysam.compression.deploy_graph import make_prompt
from napari_ultratinysam.compression.mct import _prompt_target, run_with_big_stack

from .conftest import needs_mct

CAMVID = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "camvid"


@needs_mct
def test_ptq_onnx_runs_in_onnxruntime_and_agrees_with_float(ptq_tiny):
    import onnx

    from napari_ultratinysam.compression.runner import QuantizedOnnxRunner

    q = ptq_tiny
    assert q.onnx_path.is_file()
    m = onnx.load(str(q.onnx_path))
    domains = {n.domain for n in m.graph.node}
    assert "mct_quantizers" in domains  # MCTQ custom quantizer ops
    runner = QuantizedOnnxRunner(q.onnx_path)
    assert runner.output_names == ["masks", "iou", "object_score"]
    logits, iou = runner.predict_lowres(np.zeros((90, 200, 3), np.uint8))  # any size: letterboxed
    assert logits.shape == (3, 32, 32) and iou.shape == (3,)
    mask, score = runner.predict_mask(np.zeros((90, 200, 3), np.uint8))
    assert mask.shape == (90, 200) and 0.0 <= score <= 1.0
    agree = q.agreement
    print(f"\nPTQ tiny preset: float vs quantized mean mask IoU {agree['mean_iou']:.3f} "
          f"(chosen {agree['mean_iou_chosen']:.3f}, min {agree['min_iou']:.3f}) on {agree['num_images']} images")
    assert agree["num_images"] == 8
    assert agree["mean_iou"] > 0.8, agree
    assert q.float_check_max_abs_diff < 1e-4
    meta = json.loads((q.onnx_path.parent / "metadata.json").read_text())  # the baked prompt beside the ONNX
    assert meta["prompt"]["mode"] == "center-point" and meta["prompt"]["points"] == [[64.0, 64.0]]
    assert meta["quantization"]["method"] == "ptq" and meta["roi"]["pad_value"] == 0


@needs_mct
def test_qat_runs_and_finalizes(tmp_path):
    """QAT init -> a few training steps with the training losses -> finalize -> MCTQ ONNX that runs."""
    from napari_ultratinysam.compression.pipeline import quantize_to_onnx
    from napari_ultratinysam.compression.runner import QuantizedOnnxRunner

    q = quantize_to_onnx(config="tiny_test", method="qat", out=tmp_path, num_images=4, qat_steps=3,
                         agreement_images=2)
    try:
        assert q.onnx_path.is_file() and q.times["qat_s"] > 0
        outs = QuantizedOnnxRunner(q.onnx_path).run(q.samples[0].input.numpy())
        assert outs[0].shape == (1, 3, 32, 32) and np.isfinite(outs[0]).all()
    finally:
        q.graph.release()


def test_run_with_big_stack_propagates_results_and_errors():
    assert run_with_big_stack(lambda: 41 + 1, stack_bytes=64 << 20) == 42

    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_with_big_stack(boom, stack_bytes=64 << 20)


def test_calibration_default_fills_up_with_crops():
    s = load_calibration(None, num_images=9, image_size=128)
    assert len(s) == 9
    for x in s:
        assert x.image.shape == (128, 128, 3) and x.image.dtype == np.uint8
        assert x.valid.any() and x.masks.shape[1:] == (128, 128)
    assert len({x.name for x in s}) == 9


def test_calibration_from_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    ids = np.zeros((80, 40), np.uint16)
    ids[10:30, 5:20] = 1
    Image.fromarray(ids).save(tmp_path / "b_instances.png")
    s = load_calibration(tmp_path, num_images=3)
    assert [x.name for x in s[:2]] == ["a", "b"] and len(s) == 3
    assert s[1].masks.shape[0] == 1 and s[0].masks.shape[0] == 0
    with pytest.raises(FileNotFoundError, match="not found"):
        load_calibration(tmp_path / "nope", num_images=2)


@pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid not available under shared/datasets")
def test_calibration_from_camvid_uses_the_train_split():
    s = load_calibration(CAMVID, num_images=4)
    assert len(s) == 4 and all(x.masks.shape[0] > 0 for x in s)


def test_prompt_target_picks_the_object_under_the_click():
    masks = np.zeros((3, 128, 128), bool)
    masks[0, 40:90, 40:90] = True      # contains (64, 64)
    masks[1, 60:70, 60:70] = True      # smaller, contains (64, 64)
    masks[2, 0:20, 0:20] = True
    s = CalibrationSample(np.zeros((128, 128, 3), np.uint8), masks, np.ones((128, 128), bool))
    t = _prompt_target(s, make_prompt("center-point"))
    assert t is not None and t.sum() == 100
    assert _prompt_target(s, make_prompt("points", points=[(5, 5)])).sum() == 400
    assert _prompt_target(s, make_prompt("points", points=[(120, 5)])) is None
    assert _prompt_target(s, make_prompt("box", box=(40, 40, 90, 90))).sum() == 2500


@needs_mct
def test_bounded_histograms_keep_memory_flat_and_counts_exact():
    from model_compression_toolkit.core.common.collectors.histogram_collector import HistogramCollector

    from napari_ultratinysam.compression.mct import bounded_histograms

    rng = np.random.default_rng(0)
    xs = [rng.normal(i * 0.1, 1.0 + i * 0.05, size=5000) for i in range(11)]
    plain = HistogramCollector()
    with bounded_histograms(every=4):
        bounded = HistogramCollector()
        for x in xs:
            bounded.update(x)
            assert len(bounded._histogram_per_iteration) < 4
    for x in xs:
        plain.update(x)
    assert HistogramCollector.update is not None and len(plain._histogram_per_iteration) == 11  # restored
    bb, bc = bounded.get_histogram()
    pb, pc = plain.get_histogram()
    assert bc.sum() == pytest.approx(sum(x.size for x in xs))
    assert bb[0] == pytest.approx(min(x.min() for x in xs)) and bb[-1] == pytest.approx(max(x.max() for x in xs))
    # the merged distributions agree (a few per cent of mass moved between neighbouring bins at most)
    assert np.abs(np.cumsum(bc) - np.cumsum(pc)).max() / pc.sum() < 0.01
