"""The metadata.json that travels with a quantized IMX500 graph (``utsam quantize``, ``utsam export-imx500``):
what the Raspberry Pi script and :class:`~.device_predictor.DevicePredictor` need to feed the graph and read its
outputs. Kept apart from :mod:`.imx500` (the converter) and :mod:`.pipeline` (MCT), which both write it."""
from __future__ import annotations

# the quantized graph's file in an export folder: pipeline writes it, device_predictor finds it
ONNX_NAME = "ultratinysam_imx500.onnx"


def build_metadata(graph, model_source: str, method: str, memory=None, extra: dict | None = None) -> dict:
    """metadata.json of a quantized deploy graph: model, input tensor, baked prompt, outputs, post-processing, ROI
    steering and quantization; with ``memory`` (an ``imx500.MemoryReport``) the converter's memory figures."""
    from napari_ultratinysam.compression.deploy_graph import INPUT_SCALE
    from napari_ultratinysam.core.config import to_dict
    from napari_ultratinysam.core.transforms import PIXEL_MEAN, PIXEL_STD

    cfg = graph.model.cfg
    s = cfg.image_size
    meta = {
        "format": "utsam-imx500-v1",
        "model": {"name": cfg.name, "source": model_source, "config": to_dict(cfg)},
        "input": {"name": "input", "shape": [1, 3, s, s], "layout": "NCHW", "color": "RGB",
                  "tensor": f"uint8 pixels p as p * {INPUT_SCALE} (the IMX500 input: unsigned 8 bit, scale 1/256)",
                  "normalisation": {"in_graph": True, "mean": list(PIXEL_MEAN), "std": list(PIXEL_STD),
                                    "formula": "((p / 255) - mean) / std, folded into the first op"},
                  "geometry": "the whole inference ROI scaled to the input size: set a square ROI "
                              "(set_inference_roi_abs) so objects are not squashed"},
        "prompt": {**graph.prompt.to_dict(), "coordinates": f"model-input pixels (x, y) of the {s}x{s} frame",
                   "multimask": graph.multimask},
        "outputs": graph.output_layout(),
        "output_order": graph.output_names,
        "postprocess": "pick the mask with the highest iou; upsample its logits to the ROI size (bilinear) and "
                       "threshold at 0; with object_score <= 0 treat it as empty",
        "roi": {"pad_value": 0,
                "steering": "the prompt is fixed: to segment what a user points at, move the inference ROI. "
                            "center-point / points: a square ROI placed so that the user's first positive click "
                            "lands on the first positive baked point (side = the ROI size, e.g. min(H, W)); box: "
                            "the ROI that maps the user's box onto the baked box. Negative and further clicks "
                            "cannot be honoured (compression.device_predictor.DevicePredictor does this on a PC)",
                "gate_by_object_score": bool(getattr(cfg, "gate_by_object_score", False))},
        "quantization": {"method": method, "tool": "model-compression-toolkit (MCT)",
                         "tpc": "imx500 v1", "weights": "8-bit per-channel symmetric",
                         "activations": "8-bit power-of-two"},
    }
    if memory is not None:
        meta["memory"] = {"memory_usage_bytes": memory.memory_usage_bytes, "available_bytes": memory.available_bytes,
                          "fits": memory.fits, "runtime_bytes": memory.runtime_bytes,
                          "model_bytes": memory.model_bytes, "utilization": memory.utilization,
                          "summary": memory.summary()}
    meta.update(extra or {})
    return meta
