# One module: the precision choice, the int8 recipe, its calibration images and the recipe-keyed cache change together.
"""Reduced-precision (int8) desktop inference: quantized ONNX graphs that load with the ordinary OnnxBackend.

    folder = int8_folder_for_checkpoint(DEFAULT_CHECKPOINT)      # made once, then cached
    p = Predictor.from_onnx(folder)                              # or Predictor.from_default(backend="onnx",
                                                                 #                           precision="int8")

What the int8 folder holds (the measurements behind these choices, and what else was tried: docs/history.md):

* decoder.onnx: dynamic int8 (``quantize_dynamic``) of the weight MatMuls of the mask decoder's two-way
  transformer MLPs and cross-attention projections, weights uint8. Left in float: the prompt positional encoding
  (a 2xC MatMul on raw coordinates: quantizing it moves clicks), the token self-attention (it costs accuracy),
  the Gemm heads and the convolutions (ConvInteger has no kernel for the mask_downscaling conv).
  uint8 rather than int8 weights: without VNNI, MLAS multiplies u8 x s8 with VPMADDUBSW, which saturates in
  int16 and gives outliers; u8 x u8 does not.
* encoder.onnx: static QDQ int8 (``quantize_static``, per-channel int8 weights, reduce_range, uint8 activations,
  MinMax calibration on letterboxed real RGB images: the package's sample images plus flips and crops, or the
  caller's images).
  It is KEPT ONLY IF its masks agree with the float encoder's (mean IoU >= ``encoder_min_iou``, default 0.98,
  measured on the calibration images with the float decoder); otherwise the float encoder is copied and
  config.json says why. The shipped EfficientNet-Lite0 encoder does not reach that agreement, so the shipped
  model's int8 folder has a float encoder.

bf16: onnxruntime's CPU provider has no bf16 Conv/MatMul kernels, so bf16 runs on OpenVINO
(``inference.backends.openvino``), chosen by :func:`choose_precision` where the CPU has bf16 units.

The shipped weights come with their float graphs (``weights/onnx``, :func:`shipped_onnx_folder`, written by
:func:`write_shipped_onnx`): the default model loads without an export step and without torch, and its int8
graphs are quantized from them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from napari_ultratinysam.core.io import atomic_path, atomic_write_json
from napari_ultratinysam.core.paths import WEIGHTS_DIR, cache_root
from napari_ultratinysam.inference.backends.onnx import NOMASK_DECODER

log = logging.getLogger(__name__)

SHIPPED_ONNX_DIR = WEIGHTS_DIR / "onnx"  # the shipped weights' float graphs (write_shipped_onnx)

PRECISIONS = ("auto", "float", "int8", "bf16")
QUANT_FORMAT = 2  # bump when the quantization recipe changes: cached folders of an older recipe are rebuilt
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")


def cpu_capabilities(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """{flag: bool} for the SIMD features that matter for int8/bf16 inference, from /proc/cpuinfo.

    Every flag is False where /proc/cpuinfo is absent (macOS, Windows) or has no x86 ``flags`` line.
    """
    flags: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in _CPU_FLAGS}


def choose_precision(requested: str, caps: dict | None = None, openvino: bool | None = None) -> str:
    """Resolve a requested precision to the one to run: "float", "int8" or "bf16".

    * "float", "int8": as asked ("int8" runs everywhere onnxruntime does; it is only faster with SIMD int8).
    * "bf16": the OpenVINO backend in bf16 (backends.openvino); ValueError, with the reason, where the CPU has no
      avx512_bf16 / amx_bf16 or the openvino package is missing.
    * "auto": "bf16" where the CPU has bf16 units (AMX or AVX512-BF16) and openvino is installed (faster than
      int8 there, at float's accuracy); else "int8" when the CPU has at least AVX2 (AVX2 has int8 dot products;
      AVX512-VNNI / AVX-VNNI / AMX only make int8 faster; its decoder is faster than float's at nearly the same
      masks); else "float". The figures: BENCHMARKS.md and docs/history.md. Whether the int8 ENCODER is used is
      decided when the folder is made (see :func:`quantize_onnx_folder`).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    caps = cpu_capabilities() if caps is None else caps
    if openvino is None:
        from napari_ultratinysam.inference.backends.openvino import openvino_available

        openvino = openvino_available()
    if requested == "bf16":
        if not (caps.get("avx512_bf16") or caps.get("amx_bf16")):
            raise ValueError("precision 'bf16': this CPU has no avx512_bf16 or amx_bf16; use 'int8' or 'float'")
        if not openvino:
            from napari_ultratinysam.core.extras import install_hint

            raise ValueError(f"precision 'bf16' runs on OpenVINO, which is not installed: it comes with the "
                             f"[openvino] extra ({install_hint('openvino')}); or use 'int8' or 'float'")
        return "bf16"
    if requested == "auto":
        if (caps.get("amx_bf16") or caps.get("avx512_bf16")) and openvino:
            return "bf16"
        fast_int8 = any(caps.get(f) for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8"))
        return "int8" if fast_int8 else "float"
    return requested


# ---------------------------------------------------------------------------------------------- calibration
def default_calibration_images() -> list[np.ndarray]:
    """The package's sample images (instance maps excluded), each also flipped both ways and cropped to its
    top half, right half and centre: 6 images per sample."""
    from PIL import Image

    from napari_ultratinysam.core.paths import SAMPLE_DIR

    out: list[np.ndarray] = []
    folder = SAMPLE_DIR
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or "instances" in p.stem:
            continue
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        h, w = a.shape[:2]
        out += [a, a[:, ::-1], a[::-1], a[: h // 2], a[:, w // 2:], a[h // 4: 3 * h // 4, w // 4: 3 * w // 4]]
    return [np.ascontiguousarray(a) for a in out]


def read_calibration_folder(folder: str | Path, limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` images (any PIL format) from ``folder`` as RGB uint8, in name order."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist")
    out = []
    for p in sorted(folder.iterdir()):
        if len(out) >= limit:
            break
        if not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (UnidentifiedImageError, OSError):
            continue
    if not out:
        raise ValueError(f"calibration folder {folder}: no readable images")
    return out


def _prepared(images: list[np.ndarray], size: int):
    from napari_ultratinysam.core.transforms import prepare_image

    out = []
    for i, a in enumerate(images):
        a = np.asarray(a)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"calibration image {i}: expected (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
        out.append(prepare_image(a, size))
    return out


# ---------------------------------------------------------------------------------------------- quantization
def _decoder_nodes(model_path: Path) -> list[str]:
    """Weight MatMuls of the mask decoder's transformer, minus token self-attention (see module docstring)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    init = {i.name: i for i in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        if n.op_type != "MatMul" or len(n.input) < 2 or n.input[1] not in init:
            continue
        w = init[n.input[1]]
        if len(w.dims) != 2 or w.dims[0] < 16:  # the 2xC prompt positional encoding and other tiny maps
            continue
        if "self_attn" in n.name:
            continue
        nodes.append(n.name)
    named = [n for n in nodes if "/mask_decoder/" in n]
    return named or nodes


def _preprocess(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended pre-quantization pass (shape inference + graph optimisation); src on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception as e:  # optional step: quantization works on the raw graph too
        log.info("quant_pre_process(%s) failed (%s); quantizing the raw graph", src.name, e)
        return src


def _lowres_masks(dec, feats: dict, geo, grid: int = 3) -> list[np.ndarray]:
    """Best-scored low-res mask for each click of a grid x grid lattice over the image area."""
    nh, nw = geo.new_hw
    l = geo.size // 4
    out = []
    for fy in (np.arange(grid) + 0.5) / grid:
        for fx in (np.arange(grid) + 0.5) / grid:
            feed = dict(feats)
            feed.update({"point_coords": np.array([[[fx * nw, fy * nh]]], np.float32),
                         "point_labels": np.ones((1, 1), np.float32),
                         "mask_input": np.zeros((1, 1, l, l), np.float32), "has_mask_input": np.zeros(1, np.float32)})
            logits, iou, _obj = dec.run(None, feed)
            k = 1 + int(np.argmax(iou[0, 1:]))  # one click: the three multimask candidates, best scored
            out.append(logits[0, k] > 0)
    return out


def _encoder_agreement(float_enc: Path, int8_enc: Path, float_dec: Path, prepared) -> float:
    """Mean low-res mask IoU (int8 vs float encoder, same float decoder) over grid clicks on ``prepared``."""
    from napari_ultratinysam.inference.backends.onnx import onnx_session

    fe, qe, dec = onnx_session(float_enc, 1), onnx_session(int8_enc, 1), onnx_session(float_dec, 1)
    names = [o.name for o in fe.get_outputs()]
    dec_in = {i.name for i in dec.get_inputs()}
    ious = []
    for x, geo in prepared:
        fa = {k: v for k, v in zip(names, fe.run(None, {"image": x})) if k in dec_in}
        fb = {k: v for k, v in zip(names, qe.run(None, {"image": x})) if k in dec_in}
        for a, b in zip(_lowres_masks(dec, fa, geo), _lowres_masks(dec, fb, geo)):
            u = np.logical_or(a, b).sum()
            ious.append(1.0 if u == 0 else np.logical_and(a, b).sum() / u)
    return float(np.mean(ious)) if ious else 0.0


def quantize_onnx_folder(src: str | Path, dst: str | Path, calibration: list[np.ndarray] | None = None,
                         encoder_min_iou: float | None = 0.98) -> Path:
    """From a float ONNX folder written by ``export_onnx`` write an int8 folder at ``dst`` (files atomically).

    ``calibration``: RGB uint8 images for the encoder's static quantization (default
    :func:`default_calibration_images`). ``encoder_min_iou``: keep the int8 encoder only when its masks agree
    with the float encoder's at least this well on the calibration images (None: keep it regardless).
    config.json gets ``"precision": "int8"`` and a ``"quantization"`` record of what was done.
    """
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src, dst = Path(src), Path(dst)
    for f in ("encoder.onnx", "decoder.onnx", "config.json"):
        if not (src / f).is_file():
            raise FileNotFoundError(f"ONNX model folder {src}: {f} is missing (write it with utsam export-onnx)")
    meta = json.loads((src / "config.json").read_text())
    if meta.get("precision", "float") != "float":
        raise ValueError(f"ONNX model folder {src}: already {meta['precision']}; quantize a float export")
    size = int(meta["model"]["image_size"])
    images = default_calibration_images() if calibration is None else list(calibration)
    if not images:
        raise ValueError("quantization needs calibration images (none given and the package's samples/ has none)")
    prepared = _prepared(images, size)
    dst.mkdir(parents=True, exist_ok=True)
    record: dict = {"format": QUANT_FORMAT, "onnxruntime": onnxruntime.__version__,
                    "calibration_images": len(prepared)}

    with tempfile.TemporaryDirectory(prefix="utsam-quant-") as td:
        td = Path(td)
        # --- decoder (and its no-mask variant): dynamic int8 of the transformer's weight MatMuls
        for name in ("decoder.onnx", NOMASK_DECODER):
            if not (src / name).is_file():
                continue  # a folder from before the no-mask decoder: the full graph serves every prompt
            dec_pre = _preprocess(src / name, td / f"pre_{name}")
            nodes = _decoder_nodes(dec_pre)
            with atomic_path(dst / name) as tmp:
                quantize_dynamic(str(dec_pre), str(tmp), op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                                 per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8)
            if name == "decoder.onnx":
                record["decoder"] = {"method": "dynamic int8, MatMul weights uint8", "nodes": len(nodes)}

        # --- encoder: static QDQ int8, kept only if it agrees with float
        enc_pre = _preprocess(src / "encoder.onnx", td / "encoder_pre.onnx")
        feeds = [{"image": x} for x, _geo in prepared]

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(feeds)

            def get_next(self):
                return next(self._it, None)

        q_enc = td / "encoder_int8.onnx"
        quantize_static(str(enc_pre), str(q_enc), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        agree = _encoder_agreement(src / "encoder.onnx", q_enc, src / "decoder.onnx", prepared)
        keep = encoder_min_iou is None or agree >= encoder_min_iou
        with atomic_path(dst / "encoder.onnx") as tmp:
            shutil.copyfile(q_enc if keep else src / "encoder.onnx", tmp)
        record["encoder"] = {"method": "static QDQ int8, per-channel int8 weights, reduce_range, uint8 activations"
                                       if keep else "float (the int8 encoder did not agree well enough)",
                             "int8_mask_iou_vs_float": round(agree, 4), "min_iou": encoder_min_iou,
                             "int8": keep}
        if not keep:
            log.info("int8 encoder kept in float: mask IoU %.3f < %.3f on %d calibration images", agree,
                     encoder_min_iou, len(prepared))
    meta.pop("external_data", None)  # the quantized graphs hold their own weights
    for name in ("encoder.onnx", "decoder.onnx", NOMASK_DECODER):
        if (dst / name).is_file():
            _inline_external_data(dst / name)
    atomic_write_json(dst / "config.json", {**meta, "precision": "int8", "quantization": record})
    return dst


def _inline_external_data(path: Path) -> None:
    """Rewrite a graph whose tensors point at external data files (a float folder's shared decoder weights that a
    quantization step left untouched) with those tensors inside it, so that the int8 folder stands alone."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        return
    m = onnx.load(str(path))  # the external data, read from beside the graph
    for t in m.graph.initializer:
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    with atomic_path(path) as tmp:
        onnx.save(m, str(tmp))


# ---------------------------------------------------------------------------------------------- cache
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_key(model) -> str:
    """sha256 over a model's config and weights (for models that do not come from a checkpoint file)."""
    from napari_ultratinysam.core.config import to_dict

    h = hashlib.sha256(json.dumps(to_dict(model.cfg), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _is_complete(folder: Path, precision: str) -> bool:
    from napari_ultratinysam.inference.backends.onnx import EXPORT_FORMAT, NOMASK_DECODER

    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("encoder.onnx", "decoder.onnx") if precision == "int8" else ("encoder.onnx", "decoder.onnx",
                                                                          NOMASK_DECODER)
    if not all((folder / f).is_file() for f in files):
        return False
    if precision == "int8":
        return meta.get("precision") == "int8" and meta.get("quantization", {}).get("format") == QUANT_FORMAT
    return meta.get("precision", "float") == "float" and meta.get("export_format") == EXPORT_FORMAT


def cached_onnx_folder(key: str, model_fn, precision: str = "float",
                       calibration: list[np.ndarray] | None = None, float_folder: Path | None = None) -> Path:
    """The cached ONNX folder ``cache_root()/<key[:16]>/<precision>`` ("float": ``export_onnx``; "int8": export +
    :func:`quantize_onnx_folder`), made on first use and reused by later loads of the same weights.

    ``model_fn()`` returns the model to export; it is only called when the folder has to be made, and not at all
    for "int8" with ``float_folder`` (the float graphs of the same weights, quantized as they are: no torch). The
    first build logs one message saying what it makes and where (it takes seconds to a minute). The folder is
    built next to its final place and renamed into it, so a crash never leaves a half-written cache entry and
    two processes racing both end up with a complete folder. A folder of an older export or quantization recipe
    is rebuilt. No network access is involved.
    """
    from napari_ultratinysam.inference.onnx_export import export_onnx

    if precision not in ("float", "int8"):
        raise ValueError(f"precision must be 'float' or 'int8', got {precision!r}")
    if calibration is not None and precision == "int8":  # other calibration images make other graphs
        h = hashlib.sha256(key.encode())
        for a in calibration:
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
        key = h.hexdigest()
    final = cache_root() / key[:16] / precision
    if _is_complete(final, precision):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{precision}-", dir=final.parent))
    try:
        what = "exporting the ONNX graphs" if precision == "float" else "making the int8 ONNX graphs"
        log.warning("%s of these weights once (later starts reuse them from %s)", what, final)
        if precision == "int8" and float_folder is not None:
            made = quantize_onnx_folder(float_folder, work / "int8", calibration=calibration)
        else:
            export_onnx(model_fn(), work / "float")
            made = work / "float"
            if precision == "int8":
                made = quantize_onnx_folder(work / "float", work / "int8", calibration=calibration)
        if final.exists() and not _is_complete(final, precision):
            shutil.rmtree(final, ignore_errors=True)  # stale recipe or a broken entry
        try:
            os.rename(made, final)
        except OSError:
            if not _is_complete(final, precision):  # someone else won the race: fine if their folder is complete
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def onnx_folder_for_checkpoint(ckpt_path: str | Path, precision: str = "float",
                               calibration: list[np.ndarray] | None = None) -> Path:
    """Cached ONNX folder for a checkpoint, keyed by the sha256 of the checkpoint file. For the shipped weights
    (the same file contents) the float folder is the shipped one and the int8 folder is quantized from it, so
    neither needs torch; any other checkpoint is loaded (torch) only when its folder has to be made."""
    from napari_ultratinysam.model.checkpoints import load_model

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path}: file not found")
    key = _file_sha256(ckpt_path)
    shipped = shipped_onnx_folder(key)
    if shipped is not None and precision == "float":
        return shipped
    return cached_onnx_folder(key, lambda: load_model(ckpt_path), precision, calibration, float_folder=shipped)


def onnx_folder_for_model(model, precision: str = "float", calibration: list[np.ndarray] | None = None) -> Path:
    """Cached ONNX folder for an in-memory model, keyed by the sha256 of its config and weights."""
    return cached_onnx_folder(model_key(model), lambda: model, precision, calibration)


def int8_folder_for_checkpoint(ckpt_path: str | Path, calibration: list[np.ndarray] | None = None) -> Path:
    return onnx_folder_for_checkpoint(ckpt_path, "int8", calibration)


def int8_folder_for_model(model, calibration: list[np.ndarray] | None = None) -> Path:
    return onnx_folder_for_model(model, "int8", calibration)


# ---------------------------------------------------------------------------------------------- shipped graphs
_shipped_memo: dict[tuple, str] = {}


def _weights_sha256(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime): every load of the default model asks."""
    st = path.stat()
    k = (str(path), st.st_size, st.st_mtime_ns)
    if k not in _shipped_memo:
        _shipped_memo[k] = _file_sha256(path)
    return _shipped_memo[k]


def shipped_onnx_folder(weights_sha256: str | None = None, folder: Path = SHIPPED_ONNX_DIR) -> Path | None:
    """The shipped float graphs, or None when they are absent, of an older export format, or of other weights
    than the file whose sha256 is ``weights_sha256`` (default: the shipped checkpoint's): a stale folder is never
    used, the caller exports instead."""
    from napari_ultratinysam.core.paths import DEFAULT_CHECKPOINT

    if not _is_complete(folder, "float"):
        return None
    try:
        meta = json.loads((folder / "config.json").read_text())
        if weights_sha256 is None:
            weights_sha256 = _weights_sha256(DEFAULT_CHECKPOINT)
    except (OSError, ValueError):
        return None
    return folder if meta.get("weights_sha256") == weights_sha256 else None


def write_shipped_onnx(ckpt_path: str | Path | None = None, out: str | Path = SHIPPED_ONNX_DIR) -> Path:
    """Export the float graphs of ``ckpt_path`` (default: the shipped weights) into ``out`` for shipping: the
    two decoders share one weights file (runtime.share_decoder_weights) and config.json records the checkpoint's
    sha256, which :func:`shipped_onnx_folder` checks. Needs torch (the ``[train]`` extra); replaces ``out``."""
    from napari_ultratinysam.core.paths import DEFAULT_CHECKPOINT
    from napari_ultratinysam.inference.onnx_export import export_onnx, share_decoder_weights
    from napari_ultratinysam.model.checkpoints import load_model

    ckpt_path = Path(ckpt_path) if ckpt_path is not None else DEFAULT_CHECKPOINT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out.parent))
    try:
        export_onnx(load_model(ckpt_path), work)
        share_decoder_weights(work)
        meta = json.loads((work / "config.json").read_text())
        atomic_write_json(work / "config.json", {**meta, "weights_sha256": _file_sha256(ckpt_path),
                                                 "weights_file": ckpt_path.name})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp made it private
        old = out.with_name(f".{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.rename(out, old)
        os.rename(work, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
