"""Shared fixtures for the IMX500 compression tests: tiny preset model, skips when the [imx500] extra is absent."""
from __future__ import annotations

import pytest
import torch


def mct_available() -> bool:
    try:
        import mct_quantizers  # noqa: F401
        import model_compression_toolkit  # noqa: F401
    except ImportError:
        return False
    return True


def converter_available() -> tuple[bool, str]:
    from napari_ultratinysam.compression.imx500 import IMX500Error, find_converter, find_java

    try:
        find_converter()
        find_java()
    except IMX500Error as e:
        return False, str(e)
    return True, ""


needs_mct = pytest.mark.skipif(
    not mct_available(), reason='model-compression-toolkit not installed (pip install "napari-ultratinysam[imx500]")')


def needs_converter(fn):
    ok, why = converter_available()
    return pytest.mark.skipif(not ok, reason=f"IMX500 converter unavailable: {why}")(fn)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    from napari_ultratinysam.model.build import build_model

    return build_model("tiny_test")


@pytest.fixture(scope="session")
def ptq_tiny(tmp_path_factory):
    """PTQ of the tiny preset on 8 calibration images (the bundled samples + crops): its MCTQ ONNX and
    metadata.json (shared by the quantisation and the device-predictor tests)."""
    from napari_ultratinysam.compression.pipeline import quantize_to_onnx

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ptq_tiny")
    q = quantize_to_onnx(config="tiny_test", method="ptq", out=out, num_images=8, agreement_images=8)
    torch.set_num_threads(n)
    yield q
    q.graph.release()
