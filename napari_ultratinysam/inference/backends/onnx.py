"""Inference backends behind one interface: ``encode(image_input) -> features`` and
``decode(features, coords, labels, mask_input) -> (lowres logits (4, l, l), iou (4,), object logit)``.

* TorchBackend: the model in eager torch (1 intra-op thread by default on these small tensors).
* OnnxBackend: ``encoder.onnx`` + ``decoder.onnx`` written by :func:`export_onnx`, run by onnxruntime with full
  graph optimisation, 1 thread, no busy-waiting. Prompts without a mask input (a first click, hover, a box) run
  ``decoder_nomask.onnx`` when the folder has it: the same decoder without the mask-input branch (its dense
  prompt is the learned no-mask embedding), which the full graph computes and then discards.
  A folder written by ``runtime_quant.quantize_onnx_folder`` (config.json ``"precision": "int8"``) loads the same
  way; ``OnnxBackend.precision`` says which it is.
* FlipAveragedBackend: any of these, averaged over the image and its mirror image (opt-in, twice the time).

torch is imported only by TorchBackend and export_onnx (the ``[train]`` extra): the ONNX backends run without it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_ultratinysam.core.config import ModelConfig, from_dict, to_dict
from napari_ultratinysam.core.io import atomic_path, atomic_write_json

ENCODER_OUTPUTS = ("feat_s0", "feat_s1", "embed")
DECODER_OUTPUTS = ["lowres_logits", "iou_predictions", "object_score_logits"]
NOMASK_DECODER = "decoder_nomask.onnx"  # the decoder for prompts without a mask input (optional in a folder)
EXPORT_FORMAT = 1  # written to config.json; bump when export_onnx writes other graphs (cached folders are rebuilt)
SHARED_WEIGHTS = "decoder_weights.bin"  # the two decoders' weights, stored once (share_decoder_weights)


class TorchBackend:
    name = "torch"

    def __init__(self, model, threads: int | None = 1):
        from napari_ultratinysam.core.extras import require

        require("torch", "the torch backend")
        self.model = model.eval()
        self.cfg: ModelConfig = model.cfg
        self.threads = threads
        self.image_size = self.cfg.image_size
        self.lowres_size = self.cfg.image_size // 4

    def _threads(self):
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def encode(self, x: np.ndarray):
        import torch

        self._threads()
        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        import torch

        self._threads()
        with torch.inference_mode():
            m = None if mask_input is None else torch.from_numpy(mask_input.reshape(1, 1, *mask_input.shape[-2:]))
            logits, iou, obj = self.model.decode(feats, torch.from_numpy(coords[None]), torch.from_numpy(labels[None]),
                                                 m)
        return logits[0].numpy(), iou[0].numpy(), float(obj[0, 0])


class FlipAveragedBackend:
    """Test-time flip averaging around any backend: the image and its mirror image are encoded, every prompt is
    decoded on both (mirrored coordinates, mirrored mask input), and the low-res logits (mirrored back), predicted
    IoUs and object scores are averaged. Twice the encoder and decoder time, for better later clicks more than a
    better first one (docs/history.md). The whole padded model square is mirrored, so the logits map back exactly
    whatever the image's aspect ratio."""

    def __init__(self, inner):
        if isinstance(inner, FlipAveragedBackend):
            raise ValueError("the backend already averages over flips")
        self.inner = inner

    def __getattr__(self, name):  # cfg, image_size, lowres_size, precision, ... of the wrapped backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:
        return f"{self.inner.name} + flip"

    def encode(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        return self.inner.encode(x), self.inner.encode(np.ascontiguousarray(x[..., ::-1]))

    def mirror_prompt(self, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Model-square coordinates of the mirrored prompt. Clicks use the pixel-index convention (the prompt
        encoder adds 0.5: the centre of pixel x mirrors to that of S - 1 - x); a box's corners are edges (x0, x1 ->
        S - x1, S - x0: the top-left corner keeps label 2)."""
        s = float(self.inner.image_size)
        out = np.array(coords, dtype=np.float32, copy=True)
        out[:, 0] = s - 1.0 - out[:, 0]
        tl, br = np.flatnonzero(labels == 2), np.flatnonzero(labels == 3)
        for i, j in zip(tl, br):
            out[i, 0], out[j, 0] = s - coords[j, 0], s - coords[i, 0]
        return out

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        f, g = feats
        la, ia, oa = self.inner.decode(f, coords, labels, mask_input)
        mi = None if mask_input is None else np.ascontiguousarray(np.asarray(mask_input)[..., ::-1])
        lb, ib, ob = self.inner.decode(g, self.mirror_prompt(coords, labels), labels, mi)
        return (np.asarray(la) + np.asarray(lb)[..., ::-1]) / 2, (np.asarray(ia) + np.asarray(ib)) / 2, \
            (float(oa) + float(ob)) / 2


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def read_onnx_folder(folder: Path) -> tuple[ModelConfig, str]:
    """Check an ONNX model folder and read its config.json -> (model config, precision of its graphs)."""
    for f in ("encoder.onnx", "decoder.onnx", "config.json"):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"ONNX model folder {folder}: {f} is missing (write it with utsam export-onnx)")
    try:
        meta = json.loads((folder / "config.json").read_text())
        # precision: "int8" for runtime_quant folders
        cfg, precision = from_dict(ModelConfig, meta["model"]), str(meta.get("precision", "float"))
        external = [str(f) for f in meta.get("external_data", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"ONNX model folder {folder}: config.json is not valid ({e})") from None
    for f in external:  # weights stored beside the graphs: a bare file name of this folder
        if Path(f).name != f or f in ("", ".", "..") or not (folder / f).is_file():
            raise FileNotFoundError(f"ONNX model folder {folder}: config.json field external_data: {f!r} is missing "
                                    "or not a file name of the folder")
    return cfg, precision


class OnnxBackend:
    name = "onnx"

    def __init__(self, folder: str | Path, threads: int = 1):
        folder = Path(folder)
        self.cfg, self.precision = read_onnx_folder(folder)
        self.folder = folder
        self.image_size = self.cfg.image_size
        self.lowres_size = self.cfg.image_size // 4
        try:
            self.enc = _session(folder / "encoder.onnx", threads)
            self.dec = _session(folder / "decoder.onnx", threads)
            nomask = folder / NOMASK_DECODER
            self.dec_nomask = _session(nomask, threads) if nomask.is_file() else None
        except Exception as e:
            raise ValueError(f"ONNX model folder {folder}: onnxruntime cannot load it "
                             f"({str(e).splitlines()[0]})") from None
        self._enc_out = [o.name for o in self.enc.get_outputs()]
        l = self.lowres_size
        self._zero_mask = np.zeros((1, 1, l, l), np.float32)

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.enc.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self._enc_out, outs))

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        feed = {k: feats[k] for k in ENCODER_OUTPUTS if k in feats}
        feed.update({"point_coords": coords[None].astype(np.float32), "point_labels": labels[None].astype(np.float32)})
        if mask_input is None and self.dec_nomask is not None:
            logits, iou, obj = self.dec_nomask.run(None, feed)
            return logits[0], iou[0], float(obj[0, 0])
        has = np.array([0.0 if mask_input is None else 1.0], np.float32)
        m = self._zero_mask if mask_input is None else mask_input.reshape(1, 1, *mask_input.shape[-2:]).astype(
            np.float32)
        feed.update({"mask_input": m, "has_mask_input": has})
        logits, iou, obj = self.dec.run(None, feed)
        return logits[0], iou[0], float(obj[0, 0])


def share_decoder_weights(folder: str | Path, min_bytes: int = 1024) -> Path:
    """Store the weights of ``decoder.onnx`` and ``decoder_nomask.onnx`` once, in ``SHARED_WEIGHTS`` beside them
    (ONNX external data, which onnxruntime and OpenVINO read): the two graphs hold the same large tensors, and a
    shipped folder need not carry them twice. Tensors under ``min_bytes`` stay inside the graphs. config.json
    lists the file under ``external_data``. Returns the folder."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    folder = Path(folder)
    graphs = [n for n in ("decoder.onnx", NOMASK_DECODER) if (folder / n).is_file()]
    models = {n: onnx.load(str(folder / n)) for n in graphs}
    where: dict[tuple, tuple[int, int]] = {}  # (type, dims, sha256) -> (offset, length) in the shared file
    with atomic_path(folder / SHARED_WEIGHTS) as tmp, open(tmp, "wb") as f:
        for model in models.values():
            for t in model.graph.initializer:
                raw = t.raw_data or numpy_helper.to_array(t).tobytes()
                if len(raw) < min_bytes:
                    continue
                key = (t.data_type, tuple(t.dims), hashlib.sha256(raw).hexdigest())
                if key not in where:
                    f.write(b"\0" * (-f.tell() % 64))  # aligned tensors
                    where[key] = (f.tell(), len(raw))
                    f.write(raw)
                offset, length = where[key]
                t.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", SHARED_WEIGHTS), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
    for name, model in models.items():
        with atomic_path(folder / name) as tmp:
            onnx.save(model, str(tmp))
    meta = json.loads((folder / "config.json").read_text())
    atomic_write_json(folder / "config.json", {**meta, "external_data": [SHARED_WEIGHTS]})
    return folder


def _export_wrappers():
    """(encoder wrapper, decoder wrapper) module classes for export_onnx (made on use: they subclass torch's
    Module, and this module must import without torch)."""
    import torch

    class _EncoderWrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image):
            f = self.model.encode(image)
            return tuple(f[k] for k in ENCODER_OUTPUTS if k in f)

    class _DecoderWrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, feat_s0, feat_s1, embed, point_coords, point_labels, mask_input=None, has_mask_input=None):
            """Without the mask arguments: the no-mask decoder (dense prompt = the learned no-mask embedding)."""
            feats = {"feat_s0": feat_s0, "feat_s1": feat_s1, "embed": embed}
            return self.model.decode(feats, point_coords, point_labels, mask_input, has_mask_input)

    return _EncoderWrapper, _DecoderWrapper


def export_onnx(model, out_dir: str | Path, opset: int = 17) -> Path:
    """Write ``encoder.onnx``, ``decoder.onnx``, ``decoder_nomask.onnx`` and ``config.json`` to ``out_dir`` (each
    file atomically).

    Uses the TorchScript exporter (``dynamo=False``), fixed 1x3xSxS image input and a dynamic number of points.
    """
    import warnings

    from napari_ultratinysam.core.extras import require

    torch = require("torch", "ONNX export of a checkpoint")
    _EncoderWrapper, _DecoderWrapper = _export_wrappers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    cfg = model.cfg
    if not cfg.use_high_res_features:
        raise ValueError("ONNX export needs use_high_res_features=true")
    s, l = cfg.image_size, cfg.image_size // 4
    x = torch.zeros(1, 3, s, s)
    with torch.no_grad():
        feats = model.encode(x)
    args = (feats["feat_s0"], feats["feat_s1"], feats["embed"], torch.full((1, 2, 2), s / 2.0),
            torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1, l, l), torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with atomic_path(out / "encoder.onnx") as tmp:
            torch.onnx.export(_EncoderWrapper(model).eval(), (x,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=list(ENCODER_OUTPUTS), do_constant_folding=True)
        with atomic_path(out / "decoder.onnx") as tmp:
            torch.onnx.export(_DecoderWrapper(model).eval(), args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=["feat_s0", "feat_s1", "embed", "point_coords", "point_labels",
                                           "mask_input", "has_mask_input"],
                              output_names=DECODER_OUTPUTS,
                              dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                              do_constant_folding=True)
        with atomic_path(out / NOMASK_DECODER) as tmp:
            torch.onnx.export(_DecoderWrapper(model).eval(), args[:5], str(tmp), dynamo=False,
                              opset_version=opset,
                              input_names=["feat_s0", "feat_s1", "embed", "point_coords", "point_labels"],
                              output_names=DECODER_OUTPUTS,
                              dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                              do_constant_folding=True)
    from napari_ultratinysam.core.transforms import PIXEL_MEAN, PIXEL_STD

    model.eval()  # export restores the wrappers' train flag; make sure the model is left in eval mode
    atomic_write_json(out / "config.json", {"model": to_dict(cfg), "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
                                            "opset": opset, "export_format": EXPORT_FORMAT})
    return out


# an onnxruntime session as every backend here opens one, for the int8 checks of runtime_quant
onnx_session = _session
