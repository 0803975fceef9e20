"""The onnxruntime backend: ``encoder.onnx`` + ``decoder.onnx`` written by :func:`~napari_ultratinysam.inference.
onnx_export.export_onnx`, run with full graph optimisation, 1 thread, no busy-waiting. Prompts without a mask input
(a first click, hover, a box) run ``decoder_nomask.onnx`` when the folder has it: the same decoder without the
mask-input branch (its dense prompt is the learned no-mask embedding), which the full graph computes and then
discards. A folder written by ``inference.int8.quantize_onnx_folder`` (config.json ``"precision": "int8"``) loads the
same way; ``OnnxBackend.precision`` says which it is. No torch here: the base install runs this.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_ultratinysam.core.config import ModelConfig, from_dict

ENCODER_OUTPUTS = ("feat_s0", "feat_s1", "embed")
DECODER_OUTPUTS = ["lowres_logits", "iou_predictions", "object_score_logits"]
NOMASK_DECODER = "decoder_nomask.onnx"  # the decoder for prompts without a mask input (optional in a folder)
EXPORT_FORMAT = 1  # written to config.json; bump when export_onnx writes other graphs (cached folders are rebuilt)
SHARED_WEIGHTS = "decoder_weights.bin"  # the two decoders' weights, stored once (share_decoder_weights)


def onnx_session(path: Path, threads: int):
    """An onnxruntime session as every backend here opens one: full graph optimisation, ``threads`` intra-op
    threads, no busy-waiting."""
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
        # precision: "int8" for int8 folders
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
            self.enc = onnx_session(folder / "encoder.onnx", threads)
            self.dec = onnx_session(folder / "decoder.onnx", threads)
            nomask = folder / NOMASK_DECODER
            self.dec_nomask = onnx_session(nomask, threads) if nomask.is_file() else None
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
