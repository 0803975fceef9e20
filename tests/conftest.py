import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

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


def _disc_stack(n=20, h=256, w=256, r=40, present=lambda i: True, seed=0):
    """An orange disc moving diagonally (6 px right, ~4 px down per slice) over a smooth noisy green background:
    (n, h, w, 3) uint8 slices and the (n, h, w) true masks. From the middle slice the disc moves further than its
    radius, so the start slice's box alone cannot find the end slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    bg = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 8)
    bg = (bg - bg.min()) / np.ptp(bg) * 60 + 40
    stack = np.zeros((n, h, w, 3), np.uint8)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        cx, cy = 70 + 6 * i, 80 + 4 * i + 10 * np.sin(i / 3)
        m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & present(i)
        img = np.stack([bg * 0.6, bg * 1.2, bg * 0.8], -1) + rng.normal(0, 5, (h, w, 3))
        img[m] = np.array([220, 120, 40]) + rng.normal(0, 5, (int(m.sum()), 3))
        stack[i] = np.clip(img, 0, 255).astype(np.uint8)
        masks[i] = m
    return stack, masks


@pytest.fixture(scope="session")
def disc_stack():
    """disc_stack(n=20, h=256, w=256, r=40, present=lambda i: True, seed=0) -> (stack, masks): a moving disc for
    the propagation tests of the predictor and of the annotator."""
    return _disc_stack


def _mount_tmpfs(where: Path, size_kb: int) -> bool:
    if sys.platform != "linux" or not shutil.which("mount") or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_kb) -> a folder on a fresh tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        if not _mount_tmpfs(where, size_kb):
            pytest.skip("cannot mount a tmpfs here (needs Linux and root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill_disk(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file (delete it to free space)."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):  # unbuffered: each write lands or fails whole
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


@pytest.fixture(scope="session")
def fill_disk():
    """fill_disk(folder) fills the file system of ``folder`` to the last byte; returns the filler file."""
    return _fill_disk
