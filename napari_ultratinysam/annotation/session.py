"""The model the annotator uses: which one (``PredictorSpec``), loading it, and the per-image session.

- ``default_backend``: the start-up backend, from a quick capability check;
- ``load_predictor`` / ``load_device_predictor``: one clear error for bad input;
- ``model_status_text``: what the model picker says, so it never names a backend that is not in use;
- ``PredictorSession``: the predictor plus the per-image embedding bookkeeping, used only on the worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from napari_ultratinysam.annotation.prompt import Prompt

# the widget's backends -> the predictor's precision (None: the torch backend)
BACKEND_PRECISION = {"torch": None, "onnxruntime": "float", "onnxruntime int8": "int8", "openvino bf16": "bf16"}
BACKENDS = tuple(BACKEND_PRECISION)


def default_backend(caps: dict | None = None, openvino: bool | None = None) -> str:
    """The annotator's start-up backend, from a quick capability check: "openvino bf16" where the CPU has bf16
    units (AMX / AVX512-BF16) and openvino is installed (faster than onnxruntime float at float's accuracy:
    docs/history.md), else "onnxruntime" (float; "onnxruntime int8" stays a choice: its graphs are made on first
    use)."""
    from napari_ultratinysam.inference.int8 import choose_precision

    return "openvino bf16" if choose_precision("auto", caps, openvino) == "bf16" else "onnxruntime"


@dataclass(frozen=True)
class PredictorSpec:
    """Which model the annotator should load: source "default" | "checkpoint" | "onnx", a path, a backend."""

    source: str = "default"
    path: str = ""
    backend: str = "torch"

    def describe(self) -> str:
        return {"default": "default weights", "checkpoint": f"checkpoint {self.path}",
                "onnx": f"ONNX {self.path}"}.get(self.source, self.source) + f" ({self.backend})"

    @property
    def loadable(self) -> bool:
        """Whether the spec names something to load (a checkpoint or ONNX source needs its path first)."""
        return self.source == "default" or bool(self.path.strip())


def model_status_text(in_use: PredictorSpec | None, chosen: PredictorSpec, given: bool = False) -> str:
    """The model picker's line: what is in use, and whether the choice differs from it (then it must be loaded).

    ``in_use``: the spec of the loaded predictor (None: nothing loaded yet); ``given``: a predictor handed over by
    the caller, whose spec is unknown."""
    if in_use is None:
        # a given predictor's backend is unknown: the picker's choice applies once loaded
        return "in use: a predictor given by the caller" if given else f"{chosen.describe()}: loaded on first use"
    if in_use == chosen:
        return f"in use: {in_use.describe()}"
    return f"in use: {in_use.describe()}; press Load model for {chosen.describe()}"


def load_predictor(spec: PredictorSpec, predictor_cls: Any = None):
    """Construct a predictor for ``spec`` through the Predictor factories; one clear error for bad input.

    Backends as the widget names them: "torch", "onnxruntime", "onnxruntime int8" or "openvino bf16" (the
    predictor calls the last three "onnx" with precision float / int8 / bf16; for the default weights or a
    checkpoint it exports an ONNX pair to a temporary folder first, and the int8 graphs once into a cache, see
    inference.int8; bf16 runs the float pair on OpenVINO)."""
    if predictor_cls is None:
        from napari_ultratinysam.inference.predictor import Predictor as predictor_cls  # noqa: N813 (lazy: the torch import is slow)
    src, backend = spec.source, spec.backend
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    runtime = "torch" if backend == "torch" else "onnx"
    precision = BACKEND_PRECISION[backend]
    kw = {} if precision in (None, "float") else {"precision": precision}
    if src == "default":
        return predictor_cls.from_default(backend=runtime, **kw)
    if not spec.path:
        raise ValueError(f"model: choose a {'checkpoint file' if src == 'checkpoint' else 'ONNX folder'} first")
    if src == "checkpoint":
        return predictor_cls.from_checkpoint(spec.path, backend=runtime, **kw)
    if src == "onnx":
        if precision not in ("float", "bf16"):
            raise ValueError("model: an ONNX folder runs with the onnxruntime or openvino bf16 backend; choose one "
                             "under 'Backend'")
        return predictor_cls.from_onnx(spec.path, **kw)
    raise ValueError(f"model source: expected default, checkpoint or onnx, got {src!r}")


def load_device_predictor(path: str):
    """The IMX500 device-faithful predictor for an ``utsam export-imx500`` folder or its quantized ONNX: the
    quantized graph (onnxruntime + mct-quantizers) with its baked prompt, steered by moving the ROI as the Pi does
    (compression.device_predictor)."""
    if not path:
        raise ValueError("IMX500 preview: choose an export folder (utsam export-imx500 -o DIR) or its quantized .onnx")
    from napari_ultratinysam.compression.device_predictor import DevicePredictor

    return DevicePredictor.from_quantized_onnx(path)


class PredictorSession:
    """The predictor and the image it holds. Used ONLY on the worker thread (the predictor is not thread-safe);
    the GUI thread only sets the plain attributes ``zoom_refine``, ``flip_tta`` and ``spec``."""

    def __init__(self, predictor: Any = None, spec: PredictorSpec | None = None,
                 loader: Callable[[PredictorSpec], Any] = load_predictor):
        self.predictor = predictor
        self.spec = spec or PredictorSpec()
        self.loader = loader
        self.zoom_refine = False
        self.flip_tta = False
        self.loaded_spec: PredictorSpec | None = None  # the spec the session loaded (None: given, or none yet)
        self._key: Hashable | None = None

    def ensure_predictor(self):
        if self.predictor is None:
            spec = self.spec
            self.predictor = self.loader(spec)
            self.loaded_spec = spec
            self._key = None
        p = self.predictor
        if getattr(p, "flip_tta", None) is not None and p.flip_tta != self.flip_tta:
            p.flip_tta = self.flip_tta  # drops the predictor's embeddings: the current image is encoded again
            self._key = None
        return p

    def load(self, spec: PredictorSpec):
        self.predictor = self.loader(spec)
        self.spec = self.loaded_spec = spec
        self._key = None
        return self.predictor

    def ensure_image(self, key: Hashable, get_image: Callable[[], np.ndarray]) -> bool:
        """Make ``key`` the predictor's current image; True if an embedding had to be computed."""
        p = self.ensure_predictor()
        if self._key == key:
            return False
        computed = True
        has = getattr(p, "has_image", None)
        if has is not None and has(key):
            computed = False  # LRU-cached: set_image with the key is cheap
        p.set_image(np.asarray(get_image()), key=key)
        self._key = key
        return computed

    def prefetch(self, key: Hashable, get_image: Callable[[], np.ndarray]) -> bool:
        """Compute an embedding ahead (e.g. the next image of a project) without changing the current image."""
        p = self.ensure_predictor()
        has = getattr(p, "has_image", None)
        if has is not None and has(key):
            return False
        cur = self._key
        p.set_image(np.asarray(get_image()), key=key)
        self._key = key if cur is None else None  # the current image is set again (from the cache) on next use
        return True

    def predict(self, key: Hashable, get_image: Callable[[], np.ndarray], prompt: Prompt,
                mask_input: np.ndarray | None = None, multimask: bool | None = None,
                zoom_refine: bool | None = None, refine: bool | None = None):
        """``zoom_refine``: None = the session's setting; False = full view only (a first, fast stage).
        ``refine=False``: without full-resolution refinement (hover previews), where the predictor has it."""
        self.ensure_image(key, get_image)
        p = self.predictor
        if hasattr(p, "zoom_refine"):
            p.zoom_refine = bool(self.zoom_refine if zoom_refine is None else (zoom_refine and self.zoom_refine))
        kw = {"refine": False} if refine is False and getattr(p, "refiner", None) is not None else {}
        return p.predict(**prompt.predictor_kwargs(), mask_input=mask_input, multimask=multimask, **kw)

    def zoom_in(self, key: Hashable, get_image: Callable[[], np.ndarray], prompt: Prompt, first,
                mask_input: np.ndarray | None = None, refine: bool | None = None):
        """The zoom-refined version of ``first`` (the full-view result of :meth:`predict` for ``prompt`` on
        ``key``), or None when zooming does not apply. A predictor with ``zoom_in`` refines ``first`` without
        decoding the full view again; others predict again with the session's zoom setting."""
        p = self.ensure_predictor()
        if hasattr(p, "zoom_in") and first is not None:
            self.ensure_image(key, get_image)
            return p.zoom_in(first, refine=False) if refine is False and getattr(p, "refiner", None) else \
                p.zoom_in(first)
        r = self.predict(key, get_image, prompt, mask_input=mask_input, refine=refine)
        return r if getattr(r, "zoomed", False) else None
