"""OpenVINO backend: the float ONNX pair (``utsam export-onnx``) run by OpenVINO's CPU plugin, in float32 or in
bf16 on CPUs with bf16 matrix units (AMX / AVX512-BF16), where OpenVINO runs the convolutions and matrix products
in bf16 (weights and activations) with float32 accumulation. Under bf16 the trunk's high-resolution layers (output
at >= 1/4 of the input side: the stem and the first stages) stay float32: rounding the image there moved the masks
most. The decoder's large matrix products keep their weights in int8 (one scale per output channel,
:func:`int8_matmul_weights`): a click streams millions of weights, and half the bytes make the decoder faster. The
measurements behind both are in docs/history.md.

    backend = OpenVinoBackend(folder, precision="bf16")     # same interface as runtime.OnnxBackend
    p = Predictor(backend)                                 # or Predictor.from_default(backend="onnx", precision="bf16")

Why OpenVINO for bf16: onnxruntime's CPU provider has no bf16 convolution / matrix kernels for x86, OpenVINO's CPU
plugin does (oneDNN with AMX); the speed-up is in BENCHMARKS.md.

The decoder is compiled with a dynamic number of prompt points for prompts with a mask input; prompts without one
(a first click, hover, a box) run ``decoder_nomask.onnx`` (no mask-input branch), also compiled with static shapes
for one click and for a box, where OpenVINO folds the shape arithmetic. The no-mask requests keep the
image's features bound between clicks (shared memory, not copied per click).

Compiling the five graphs takes seconds on a small CPU, so the load compiles what a first click needs (the encoder
and the one-click decoder) and the other three in a background thread; a prompt that needs one of those before it
is ready waits for it (``background=False`` compiles everything in the constructor).
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

from napari_ultratinysam.inference.backends.onnx import ENCODER_OUTPUTS, NOMASK_DECODER, read_onnx_folder

PRECISIONS = ("float", "bf16")
HIGHRES_DIVISOR = 4  # bf16: trunk layers whose output side is >= input side / this run in float32
INT8_WEIGHTS_MIN_SIZE = 4096  # bf16: the decoder's matrix products with at least this many weights keep them int8
STATIC_POINTS = (1, 2)  # no-mask decoder shapes compiled at load: one click (the graph appends the padding
#                           point) and two points (a box's corners)


def openvino_available() -> bool:
    """Whether the openvino package is installed. Found, not imported: importing it takes a noticeable part of a
    second, and the annotator asks on the GUI thread when it opens (a broken install fails at load, where the
    predictor falls back to onnxruntime)."""
    from importlib.util import find_spec

    try:
        return find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def highres_trunk_layers(model, size: int) -> set[str]:
    """Names of the encoder graph's trunk operations (``/trunk/`` in the name) whose first output is a static
    (N, C, H, W) map with H >= size / HIGHRES_DIVISOR."""
    names = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Constant", "Result") or "/trunk/" not in op.get_friendly_name():
            continue
        shape = op.get_output_partial_shape(0)
        if shape.rank.is_static and shape.rank.get_length() == 4 and shape[2].is_static \
                and shape[2].get_length() * HIGHRES_DIVISOR >= size:
            names.add(op.get_friendly_name())
    return names


def _keep_float(core, model, names: set[str], workdir: Path):
    """``model`` with the operations ``names`` marked to keep float32 under a bf16 inference-precision hint.
    OpenVINO's Python API cannot set that mark (a typed runtime attribute), its IR format can: the model goes
    through an IR file in ``workdir`` with the attribute added to those layers."""
    import xml.etree.ElementTree as ET

    import openvino as ov

    xml = workdir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    tree = ET.parse(xml)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in names:
            rt = layer.find("rt_info")
            if rt is None:
                rt = ET.SubElement(layer, "rt_info")
            ET.SubElement(rt, "attribute", {"name": "DisablePrecisionConversion", "version": "0",
                                            "value": "dynamic:f16"})
    tree.write(xml)
    return core.read_model(str(xml))


def int8_matmul_weights(model, min_size: int = INT8_WEIGHTS_MIN_SIZE) -> int:
    """Store the constant weights of ``model``'s matrix products (2-D, at least ``min_size`` values) as int8, one
    symmetric scale per output channel, followed by Convert + Multiply: OpenVINO's CPU plugin fuses that pattern
    into its fully connected kernel (weights expanded in registers), which halves the bytes a click streams
    through the decoder's ~4 M weights. In place; returns how many products were changed."""
    import openvino as ov
    from openvino import opset13 as ops

    n = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        attrs = node.get_attributes()
        for idx, transposed in ((1, attrs.get("transpose_b", False)), (0, attrs.get("transpose_a", False))):
            src = node.input_value(idx).get_node()
            if src.get_type_name() != "Constant":
                continue
            w = np.asarray(src.get_data(), dtype=np.float32)
            if w.ndim != 2 or w.size < min_size:
                continue
            reduce_axis = (1 if transposed else 0) if idx == 1 else (0 if transposed else 1)
            amax = np.abs(w).max(axis=reduce_axis, keepdims=True)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            dq = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
            node.input(idx).replace_source_output(dq.output(0))
            n += 1
            break
    return n


def float32_convolutions(compiled) -> int:
    """How many convolutions of a compiled model run in float32 (OpenVINO's runtime model)."""
    n = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) == "Convolution" and str(info["runtimePrecision"].astype(str)) == "f32":
            n += 1
    return n


def _compile(core, model, threads: int, precision: str, snippets: bool = True):
    cfg = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if not snippets:
        cfg["SNIPPETS_MODE"] = "DISABLE"
    return core.compile_model(model, "CPU", cfg)


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, folder: str | Path, threads: int = 1, precision: str = "bf16", int8_weights: bool = True,
                 background: bool = True):
        """``int8_weights`` (bf16 only): the decoder's large matrix products keep int8 weights
        (:func:`int8_matmul_weights`). ``background``: compile the graphs a first click does not need in a
        background thread (see the module docstring)."""
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        from napari_ultratinysam.core.extras import require

        ov = require("openvino", "the OpenVINO backend")
        folder = Path(folder)
        self.cfg, folder_precision = read_onnx_folder(folder)
        if folder_precision != "float":
            raise ValueError(f"ONNX model folder {folder}: it holds {folder_precision} graphs; the OpenVINO backend "
                             "runs the float pair (utsam export-onnx without --precision)")
        self.folder = folder
        self.precision = precision
        self.image_size = self.cfg.image_size
        self.lowres_size = self.cfg.image_size // 4
        core = ov.Core()
        self._int8_matmuls = 0  # over all decoder graphs (bf16 only)
        self._dec_any_req = None
        self._nomask_reqs: dict[int | None, object] = {}  # no-mask requests, by number of points (None: any)
        self._compiled = threading.Event()
        self._compile_error: str | None = None

        def decoder(path: Path, points: int | None = None):
            m = core.read_model(str(path))
            if points is not None:
                m.reshape({"point_coords": [1, points, 2], "point_labels": [1, points]})
            if precision == "bf16" and int8_weights:
                self._int8_matmuls += int8_matmul_weights(m)
            return m

        nomask = folder / NOMASK_DECODER

        def compile_one(what) -> None:
            if what == "any":
                self._dec_any_req = _compile(core, decoder(folder / "decoder.onnx"), threads,
                                             precision).create_infer_request()
            elif what is None:
                self._nomask_reqs[None] = _compile(core, decoder(nomask), threads, precision).create_infer_request()
            else:
                # bf16: OpenVINO's "snippets" fusion miscompiles this static graph (measured with 2026.4: logits off
                # by ~1.7, masks wrong); without it the logits are within bf16 rounding (~0.04)
                self._nomask_reqs[what] = _compile(core, decoder(nomask, what), threads, precision,
                                                   snippets=precision != "bf16").create_infer_request()

        # what a first click needs now; the rest (later) in the background
        first, later = (["any"], []) if not nomask.is_file() else ([1], ["any", None] + [n for n in STATIC_POINTS
                                                                                         if n != 1])
        try:
            enc_model = core.read_model(str(folder / "encoder.onnx"))
            if precision == "bf16":
                with tempfile.TemporaryDirectory(prefix="utsam-ov-") as d:
                    enc_model = _keep_float(core, enc_model, highres_trunk_layers(enc_model, self.image_size),
                                            Path(d))
                    enc = _compile(core, enc_model, threads, precision)
            else:
                enc = _compile(core, enc_model, threads, precision)
            self.float32_convolutions = float32_convolutions(enc)  # of the encoder
            for what in first + ([] if background else later):
                compile_one(what)
        except Exception as e:  # noqa: BLE001 - one line naming the folder
            raise ValueError(f"ONNX model folder {folder}: OpenVINO cannot load it ({str(e).splitlines()[0]})") \
                from None
        if background and later:
            def run() -> None:
                try:
                    for what in later:
                        compile_one(what)
                except Exception as e:  # noqa: BLE001 - reported when a prompt needs the graph
                    self._compile_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                finally:
                    self._compiled.set()

            # not a daemon: the interpreter waits for it at exit; OpenVINO aborts the process ("terminate called
            # without an active exception") when it is torn down while compiling
            threading.Thread(target=run, name="utsam-openvino-compile", daemon=False).start()
        else:
            self._compiled.set()
        self._enc = enc.create_infer_request()
        self._bound: dict[int, tuple] = {}  # id(request) -> (features dict bound to it, its arrays)
        self._io: dict[int, tuple] = {}  # static request's points -> the prompt arrays bound to it
        self._enc_out = [o.get_any_name() for o in enc.outputs]
        l = self.lowres_size
        self._zero_mask = np.zeros((1, 1, l, l), np.float32)

    def wait_compiled(self) -> None:
        """Wait for the background compilation; ValueError (one line) when it failed."""
        self._compiled.wait()
        if self._compile_error is not None:
            raise ValueError(f"ONNX model folder {self.folder}: OpenVINO cannot load it ({self._compile_error})")

    @property
    def _nomask(self) -> dict:
        self.wait_compiled()
        return self._nomask_reqs

    @_nomask.setter
    def _nomask(self, requests: dict) -> None:
        self.wait_compiled()
        self._nomask_reqs = requests

    @property
    def _dec_any(self):
        self.wait_compiled()
        return self._dec_any_req

    @property
    def int8_weight_matmuls(self) -> int:
        """How many of the decoders' matrix products keep int8 weights (bf16 only)."""
        self.wait_compiled()
        return self._int8_matmuls

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self._enc.infer({"image": np.ascontiguousarray(x, dtype=np.float32)})
        return {k: np.array(v) for k, v in zip(self._enc_out, res.to_tuple())}

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        if mask_input is None:
            n = len(coords)
            req = self._nomask_reqs.get(n) if n == 1 else None  # compiled at load: no wait for a first click
            if req is None and self._nomask:
                req = self._nomask.get(n)
                return self._decode_bound(req if req is not None else self._nomask[None], feats, coords, labels,
                                          static=req is not None)
            if req is not None:
                return self._decode_bound(req, feats, coords, labels, static=True)
        has = np.array([0.0 if mask_input is None else 1.0], np.float32)
        m = self._zero_mask if mask_input is None else np.ascontiguousarray(
            mask_input.reshape(1, 1, *mask_input.shape[-2:]), dtype=np.float32)
        feed = {k: feats[k] for k in ENCODER_OUTPUTS if k in feats}
        feed.update({"point_coords": np.ascontiguousarray(coords[None], dtype=np.float32),
                     "point_labels": np.ascontiguousarray(labels[None], dtype=np.float32),
                     "mask_input": m, "has_mask_input": has})
        logits, iou, obj = (np.array(v) for v in self._dec_any.infer(feed, share_inputs=True).to_tuple())
        return logits[0], iou[0], float(obj[0, 0])

    def _decode_bound(self, req, feats, coords: np.ndarray, labels: np.ndarray, static: bool):
        """A no-mask request that keeps the image's features bound between clicks (shared memory, no copy)."""
        import openvino as ov

        bound = self._bound.get(id(req))
        if bound is None or bound[0] is not feats:  # a new image: bind its features once
            arrays = {k: np.ascontiguousarray(feats[k], dtype=np.float32) for k in ENCODER_OUTPUTS if k in feats}
            for k, a in arrays.items():
                req.set_tensor(k, ov.Tensor(a, shared_memory=True))
            self._bound[id(req)] = (feats, arrays)  # keeps the arrays alive while the request points at them
        n = len(coords)
        if static:  # our own prompt buffers, bound to the request once
            io = self._io.get(n)
            if io is None:
                io = self._io[n] = (np.zeros((1, n, 2), np.float32), np.zeros((1, n), np.float32))
                req.set_tensor("point_coords", ov.Tensor(io[0], shared_memory=True))
                req.set_tensor("point_labels", ov.Tensor(io[1], shared_memory=True))
            io[0][0] = coords
            io[1][0] = labels
        else:
            req.set_tensor("point_coords", ov.Tensor(np.ascontiguousarray(coords[None], dtype=np.float32)))
            req.set_tensor("point_labels", ov.Tensor(np.ascontiguousarray(labels[None], dtype=np.float32)))
        req.infer()
        # outputs are read after every inference: their buffers are not guaranteed to stay in place
        logits, iou, obj = (req.get_output_tensor(i).data for i in range(3))
        return logits[0].copy(), iou[0].copy(), float(obj[0, 0])
