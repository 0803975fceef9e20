"""napari-ultratinysam: UltraTinySAM as a napari plugin and a Python package."""
from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "load_model", "Predictor", "read_dataset"]


def __getattr__(name):  # lazy, so `import napari_ultratinysam` stays cheap (napari imports the manifest)
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    if name == "load_model":
        from .checkpoints import load_model

        return load_model
    if name == "read_dataset":
        from .data.readers import read_dataset

        return read_dataset
    raise AttributeError(name)
