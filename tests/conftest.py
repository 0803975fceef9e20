import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_onnx_cache(tmp_path_factory):
    """Exported / quantized ONNX folders go to a folder of this test session, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UTSAM_CACHE_DIR", str(tmp_path_factory.mktemp("onnx-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def datasets() -> Path:
    """Root of the shared real datasets (UTSAM_DATASETS or <repo>/../shared/datasets); skips when absent."""
    root = Path(os.environ.get("UTSAM_DATASETS", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.skip(f"real datasets not available at {root}")
    return root


@pytest.fixture
def real(datasets: Path):
    """real(name) -> path of one shared dataset, skipping when that one is absent."""

    def get(name: str) -> Path:
        p = datasets / name
        if not p.is_dir():
            pytest.skip(f"{p} not available")
        return p

    return get


@pytest.fixture(scope="session")
def tiny_model():
    from napari_ultratinysam.model.build import build_model

    return build_model("tiny_test")


@pytest.fixture(scope="session")
def paper_model():
    from napari_ultratinysam.model.build import build_model

    return build_model("ultratinysam")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


GUI_FIXTURES = {"qtbot", "make_napari_viewer", "annotator"}


def pytest_collection_modifyitems(config, items):
    # the `gui` marker (setup.cfg): every test that opens Qt or a napari viewer, so `-m "not gui"` runs the rest
    # without a display
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
