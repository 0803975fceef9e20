"""Fixtures for the data tests: the shared real datasets (skipped when absent) and tiny synthetic files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

def _write_rgb(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return img


def _write_array(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def write_rgb():
    """write_rgb(path, h, w, seed=0) -> the random RGB pixels written as PNG."""
    return _write_rgb


@pytest.fixture
def write_array():
    """write_array(path, array) writes a single-channel (uint8 -> L, uint16 -> I;16) or RGB image."""
    return _write_array
