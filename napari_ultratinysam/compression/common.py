"""The names every quantization step shares: its error, the install hint it names, the progress callback.

A leaf, so that calibration, mct, runner and pipeline raise one error type without importing each other.
"""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

IMX500_EXTRA = 'pip install "napari-ultratinysam[imx500]"'
Progress = Callable[[str, "float | None"], None]


class QuantizationError(RuntimeError):
    """MCT missing, calibration data unusable, or quantisation/export failed (one clear line)."""


def report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    """Tell the caller (GUI progress bar, CLI line) and the log."""
    if progress is not None:
        progress(message, fraction)
    log.info(message)
