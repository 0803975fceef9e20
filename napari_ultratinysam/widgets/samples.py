"""Sample data for ``File > Open Sample > UltraTinySAM``: the images shipped in the package (``samples/``).

Each function returns napari layer-data tuples: the image, plus its reference instance masks as a Labels layer
(``<name> instances``) when ``<stem>_instances.png`` exists. Licences: ``napari_ultratinysam/samples/LICENSE.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ultratinysam.core.paths import sample_dir

SAMPLES: dict[str, str] = {  # sample key -> file name in the package's samples/
    "coins": "coins.png",
    "shapes": "shapes.png",
    "coffee": "coffee.jpg",
    "chelsea": "chelsea.jpg",
}


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample image missing")
    with Image.open(path) as im:
        return np.asarray(im)


def load_sample(key: str) -> list[tuple]:
    """Layer-data tuples for one sample: [(image, meta, "image"), (instances, meta, "labels")?]."""
    if key not in SAMPLES:
        raise ValueError(f"sample: unknown name {key!r}; choose one of {', '.join(SAMPLES)}")
    path = sample_dir() / SAMPLES[key]
    img = _read(path)
    out: list[tuple] = [(img, {"name": key, "rgb": img.ndim == 3}, "image")]
    inst = path.with_name(f"{path.stem}_instances.png")
    if inst.is_file():
        labels = _read(inst).astype(np.uint32)
        out.append((labels, {"name": f"{key} instances", "visible": False, "opacity": 0.5}, "labels"))
    return out


def coins() -> list[tuple]:
    """Greek coins (303x384 grayscale) with 24 reference coin masks."""
    return load_sample("coins")


def shapes() -> list[tuple]:
    """Synthetic scene (240x320 RGB): disc, square, ellipse, triangle on texture, with their masks."""
    return load_sample("shapes")


def coffee() -> list[tuple]:
    """Coffee cup (400x600 RGB)."""
    return load_sample("coffee")


def chelsea() -> list[tuple]:
    """Chelsea the cat (300x451 RGB)."""
    return load_sample("chelsea")
