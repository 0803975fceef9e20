"""Decoding many single-click prompts of one image at once (segment everything): a batched no-mask decoder graph
exported from the predictor's own weights, cached beside its other graphs and run on the backend's runtime, or one
``backend.decode`` call per prompt where there is no batched form."""
from __future__ import annotations

from typing import Callable

import numpy as np


class BatchedDecoder:
    """A no-mask decoder that takes B single-click prompts at once: ``decode(feats, coords (B, N, 2), labels
    (B, N)) -> (logits (B, 4, l, l), iou (B, 4), object logits (B,))`` over one image's features (batch 1)."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray):
        return self.fn(feats, coords, labels)


BATCH_FORMAT = 1  # bump when the batched graph changes (cached graphs are rebuilt)


class _BatchedDecoderModule:
    """The model's no-mask decoder over B prompts and one image's features (expanded inside the graph, so the
    features are passed once)."""

    def __new__(cls, model):
        import torch

        class Module(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.model = m

            def forward(self, feat_s0, feat_s1, embed, point_coords, point_labels):
                b = point_coords.shape[0]
                feats = {"feat_s0": feat_s0.expand(b, -1, -1, -1), "feat_s1": feat_s1.expand(b, -1, -1, -1),
                         "embed": embed.expand(b, -1, -1, -1)}
                logits, iou, obj = self.model.decode(feats, point_coords, point_labels)
                return logits, iou, obj[:, 0]

        return Module(model).eval()


def _export_batched(model, path) -> None:
    import warnings

    import torch

    from napari_ultratinysam.core.io import atomic_path

    cfg = model.cfg
    s = cfg.image_size
    with torch.no_grad():
        feats = model.encode(torch.zeros(1, 3, s, s))
    args = (feats["feat_s0"], feats["feat_s1"], feats["embed"], torch.full((2, 1, 2), s / 2.0), torch.ones(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with atomic_path(path) as tmp:
            torch.onnx.export(_BatchedDecoderModule(model), args, str(tmp), dynamo=False, opset_version=17,
                              input_names=["feat_s0", "feat_s1", "embed", "point_coords", "point_labels"],
                              output_names=["lowres_logits", "iou_predictions", "object_score_logits"],
                              dynamic_axes={"point_coords": {0: "batch", 1: "num_points"},
                                            "point_labels": {0: "batch", 1: "num_points"}},
                              do_constant_folding=True)
    model.eval()


def batched_decoder(predictor, model=None, batch_size: int = 64) -> BatchedDecoder | None:
    """A decoder of many single-click prompts per call for ``predictor``'s backend, or None (then every prompt is
    one ``backend.decode`` call). The ONNX backends' graphs take one prompt (their batch of 1 is fixed inside the
    graph), so a batched graph is exported from the torch ``model`` (the predictor's own weights: the torch
    backend's model, or the model its ONNX folder was made from) once, cached beside the other graphs, and run on
    the same runtime and precision as the backend (OpenVINO at a fixed batch of ``batch_size``, onnxruntime at any
    batch). Flip averaging and the int8 decoder have no batched form: None."""
    backend = predictor.backend
    name = getattr(backend, "name", "")
    if name == "torch":
        import torch

        module = _BatchedDecoderModule(backend.model)
        threads = getattr(backend, "threads", 1)

        def run_torch(feats, coords, labels):
            if threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                out = module(feats["feat_s0"], feats["feat_s1"], feats["embed"], torch.from_numpy(coords),
                             torch.from_numpy(labels))
            return tuple(o.numpy() for o in out)

        return BatchedDecoder(run_torch, "torch")
    if model is None or name not in ("onnx", "openvino") or getattr(backend, "precision", "float") == "int8":
        return None
    from napari_ultratinysam.core.paths import cache_root
    from napari_ultratinysam.inference.int8 import model_key

    path = cache_root() / model_key(model) / f"batched-{BATCH_FORMAT}" / "decoder_batch.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _export_batched(model, path)
    threads = getattr(backend, "threads", 1) or 1
    if name == "openvino":
        import openvino as ov

        from napari_ultratinysam.inference.backends.openvino import int8_matmul_weights

        core = ov.Core()
        requests: dict[int, object] = {}

        def request(b: int):  # one compiled graph per batch size, made on first use (the batch is static)
            if b not in requests:
                m = core.read_model(str(path))
                m.reshape({"point_coords": [b, 1, 2], "point_labels": [b, 1]})
                if backend.precision == "bf16":
                    int8_matmul_weights(m)
                # the backend's settings; snippets off: the fusion that miscompiles the static one-click graph in
                # bf16 (backends.openvino)
                requests[b] = core.compile_model(m, "CPU", {
                    "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "bf16" if backend.precision == "bf16" else "f32",
                    "SNIPPETS_MODE": "DISABLE"}).create_infer_request()
            return requests[b]

        sizes = sorted({min(batch_size, s) for s in (4, 16, batch_size)})

        def run_ov(feats, coords, labels):
            n = len(coords)
            b = next(s for s in sizes if s >= n)
            if n < b:  # pad with copies of the first prompt
                coords = np.concatenate([coords, np.repeat(coords[:1], b - n, 0)])
                labels = np.concatenate([labels, np.repeat(labels[:1], b - n, 0)])
            feed = {k: np.ascontiguousarray(feats[k], dtype=np.float32) for k in ("feat_s0", "feat_s1", "embed")}
            feed.update(point_coords=np.ascontiguousarray(coords, dtype=np.float32),
                        point_labels=np.ascontiguousarray(labels, dtype=np.float32))
            out = request(b).infer(feed)
            return tuple(np.array(v)[:n] for v in out.to_tuple())

        return BatchedDecoder(run_ov, f"openvino {backend.precision}")
    from napari_ultratinysam.inference.backends.onnx import onnx_session

    sess = onnx_session(path, threads)  # the onnx backend's settings

    def run_ort(feats, coords, labels):
        feed = {k: feats[k] for k in ("feat_s0", "feat_s1", "embed")}
        feed.update(point_coords=coords.astype(np.float32), point_labels=labels.astype(np.float32))
        return tuple(sess.run(None, feed))

    return BatchedDecoder(run_ort, "onnxruntime")


def decode_prompts(backend, feats, coords: np.ndarray, labels: np.ndarray, batched: BatchedDecoder | None = None,
                   batch_size: int = 64):
    """B prompts (model coordinates) -> (logits (B, 4, l, l), iou (B, 4), object logits (B,)): through
    ``batched`` in chunks of ``batch_size`` where given, else one ``backend.decode`` call per prompt."""
    if batched is not None:
        outs = [batched.decode(feats, coords[i:i + batch_size], labels[i:i + batch_size])
                for i in range(0, len(coords), batch_size)]
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]),
                np.concatenate([np.asarray(o[2], np.float32).reshape(-1) for o in outs]))
    res = [backend.decode(feats, c, lab, None) for c, lab in zip(coords, labels)]
    return (np.stack([np.asarray(r[0], np.float32) for r in res]), np.stack([np.asarray(r[1], np.float32)
                                                                             for r in res]),
            np.array([r[2] for r in res], np.float32))
