"""napari-ultratinysam: UltraTinySAM as a napari plugin and a Python package."""
from __future__ import annotations

from napari_ultratinysam._version import __version__

__all__ = ["__version__", "load_model", "Predictor", "read_dataset"]


def __getattr__(name):  # lazy, so `import napari_ultratinysam` stays cheap (napari imports the manifest)
    if name == "Predictor":
        from napari_ultratinysam.inference.predictor import Predictor

        return Predictor
    if name == "load_model":
        from napari_ultratinysam.model.checkpoints import load_model

        return load_model
    if name == "read_dataset":
        from napari_ultratinysam.data.readers import read_dataset

        return read_dataset
    raise AttributeError(name)
