"""ONNX export of a model (needs torch, the ``[train]`` extra): the encoder, the decoder and the no-mask decoder
graphs plus config.json, which :class:`~napari_ultratinysam.inference.backends.onnx.OnnxBackend` (and OpenVINO) load;
and storing the two decoders' shared weights once."""
from __future__ import annotations

import json
from pathlib import Path

from napari_ultratinysam.core.config import to_dict
from napari_ultratinysam.core.io import atomic_path, atomic_write_json
from napari_ultratinysam.inference.backends.onnx import (
    DECODER_OUTPUTS,
    ENCODER_OUTPUTS,
    EXPORT_FORMAT,
    NOMASK_DECODER,
    SHARED_WEIGHTS,
)


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
