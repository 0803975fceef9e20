"""The wheel is self-contained: it carries the shipped weights, the model presets and the sample images, and a copy
unpacked outside the checkout finds them through napari_ultratinysam.core.paths."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "napari_ultratinysam")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (offline: no build isolation) from a copy of the sources, so the checkout gets no build/."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif p.is_file():
            shutil.copy2(p, src / name)
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", str(src), "-w", str(out)], capture_output=True, text=True, cwd=tmp, timeout=600)
    wheels = sorted(out.glob("napari_ultratinysam-*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.skip(f"cannot build a wheel here (setuptools / wheel missing offline?): {r.stderr.strip()[-300:]}")
    return wheels[0]


def test_wheel_carries_weights_configs_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("weights/ultratinysam.safetensors", "configs/ultratinysam.yaml", "configs/ultratinysam_effnet.yaml",
                "configs/tiny_test.yaml", "samples/coins.png", "samples/coins_instances.png", "samples/shapes.png",
                "samples/coffee.jpg", "samples/chelsea.jpg", "samples/LICENSE.md", "napari.yaml"):
        assert f"napari_ultratinysam/{rel}" in names, rel
    # the training presets stay in the checkout's model/configs, with the model card
    assert not any(n.startswith("model/") for n in names)


def test_unpacked_wheel_finds_its_files_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = """
import sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import napari_ultratinysam as pkg
from napari_ultratinysam.core import paths
from napari_ultratinysam.core.config import resolve_model_config
from napari_ultratinysam.widgets.samples import load_sample
from safetensors import safe_open

assert Path(pkg.__file__).resolve().is_relative_to(site), pkg.__file__
assert paths.DEFAULT_CHECKPOINT.resolve().is_relative_to(site) and paths.DEFAULT_CHECKPOINT.is_file()
with safe_open(str(paths.DEFAULT_CHECKPOINT), "np") as f:
    assert f.metadata()["format"] == "utsam-checkpoint-v1"
assert resolve_model_config("tiny_test").name == "tiny_test"
assert [t[1]["name"] for t in load_sample("coins")] == ["coins", "coins instances"]
assert not paths.TRAINING_CONFIG_DIR.is_dir()
try:
    paths.training_preset("finetune")
except FileNotFoundError as e:
    assert "no training preset" in str(e) and "installed" in str(e) and "\\n" not in str(e)
else:
    raise AssertionError("a training preset was found outside a checkout")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_preset_lookup_from_a_checkout(tmp_path):
    from napari_ultratinysam.core import paths
    from napari_ultratinysam.core.config import resolve_model_config
    from napari_ultratinysam.training.config import load_train_config

    assert paths.model_preset("ultratinysam") == paths.MODEL_CONFIG_DIR / "ultratinysam.yaml"
    assert paths.model_preset("ultratinysam.yaml") is None and paths.model_preset("../configs/tiny_test") is None
    assert set(paths.model_presets()) >= {"ultratinysam", "ultratinysam_effnet", "tiny_test"}
    assert resolve_model_config("ultratinysam_effnet").trunk == "efficientnet_lite0"
    if not (REPO / "model" / "configs" / "finetune.yaml").is_file():
        pytest.skip("not a source checkout")
    assert paths.training_preset("finetune") == REPO / "model" / "configs" / "finetune.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("train: {steps: 3}\n")
    assert paths.training_preset(own) == own and load_train_config(own).steps == 3
    with pytest.raises(FileNotFoundError, match="no training preset") as e:
        load_train_config("no_such_preset")
    assert "finetune" in str(e.value) and "\n" not in str(e.value)
