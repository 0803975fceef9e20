"""Where the package's own files are: the shipped weights, the model presets and the sample images.

Everything that runs is read from inside the installed package through ``importlib.resources``, so a wheel works
the same as a source checkout. The one exception is the training presets (``model/configs/train_scratch.yaml``,
``finetune.yaml``): they point at datasets of a checkout, stay there with the model card, and are found only from
a checkout. This module is a leaf: it imports nothing from the package.
"""
from __future__ import annotations

import atexit
import contextlib
import os
from importlib import resources
from pathlib import Path

PACKAGE = "napari_ultratinysam"

# Resources inside a zip are extracted once per process and removed at exit.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def package_path(*parts: str) -> Path:
    """A file or folder inside the installed package, as a real filesystem path."""
    res = resources.files(PACKAGE)
    for part in parts:
        res = res.joinpath(part)
    if isinstance(res, Path):
        return res
    return _extracted.enter_context(resources.as_file(res))


WEIGHTS_DIR = package_path("weights")
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "ultratinysam.safetensors"
MODEL_CONFIG_DIR = package_path("configs")
SAMPLE_DIR = package_path("samples")
# Training presets live in a source checkout next to the package (absent from an installed wheel).
TRAINING_CONFIG_DIR = Path(__file__).resolve().parents[2] / "model" / "configs"


def model_preset(name: str | Path) -> Path | None:
    """The YAML of a model preset name ('ultratinysam', 'ultratinysam_effnet', 'tiny_test'), or None when
    ``name`` is not a bare preset name or no such preset ships."""
    p = Path(name)
    if p.suffix or len(p.parts) != 1:
        return None
    cand = MODEL_CONFIG_DIR / f"{p.name}.yaml"
    return cand if cand.is_file() else None


def model_presets() -> list[str]:
    """The names of the shipped model presets."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml")) if MODEL_CONFIG_DIR.is_dir() else []


def training_presets() -> list[str]:
    """The names of the training presets of a source checkout (none in an installed wheel)."""
    d = TRAINING_CONFIG_DIR
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def training_preset(name: str | Path) -> Path:
    """A training config: an existing YAML path as given, or a preset name ('finetune', 'train_scratch') looked
    up in the checkout's model/configs. A bare name that is not there raises FileNotFoundError (one line)."""
    p = Path(name)
    if p.suffix or len(p.parts) != 1:
        return p
    for cand in (TRAINING_CONFIG_DIR / f"{p.name}.yaml", model_preset(p)):
        if cand is not None and cand.is_file():
            return cand
    if p.is_file():
        return p
    known = training_presets()
    where = (f"presets here: {', '.join(known)}" if known else
             "training presets (finetune, train_scratch) ship only with a source checkout's model/configs")
    raise FileNotFoundError(f"training config {name}: no such file, and no training preset of that name is "
                            f"installed ({where}); pass the path of a training YAML")


def sample_dir() -> Path:
    """The folder of the sample images (File > Open Sample, calibration, tests)."""
    if not SAMPLE_DIR.is_dir():
        raise FileNotFoundError(f"{SAMPLE_DIR}: the package's sample images are missing (reinstall the package)")
    return SAMPLE_DIR


def sample_path(name: str) -> Path:
    """One sample file by name (e.g. 'coins.png'); FileNotFoundError (one line) when it is missing."""
    p = sample_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"{p}: sample image missing (reinstall the package)")
    return p


def cache_root() -> Path:
    """Where built graphs are cached (ONNX exports, int8 graphs, the batched decoder): ``UTSAM_CACHE_DIR``, else
    ``~/.cache/napari-ultratinysam``."""
    env = os.environ.get("UTSAM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "napari-ultratinysam"
