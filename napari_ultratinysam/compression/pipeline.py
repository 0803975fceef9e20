"""One call from a checkpoint to the quantized IMX500 ONNX (``utsam quantize``, and the first half of
``export_imx500``): model -> deploy graph (prompt baked in) -> calibration -> MCT PTQ or QAT -> MCTQ ONNX ->
float-vs-quantized agreement -> metadata.json."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_ultratinysam.compression.calibration import load_calibration
from napari_ultratinysam.compression.common import Progress, QuantizationError, report
from napari_ultratinysam.compression.deploy_graph import DeployGraph, make_prompt
from napari_ultratinysam.compression.mct import export_quantized_onnx, quantize_ptq, quantize_qat, require_mct
from napari_ultratinysam.compression.metadata import ONNX_NAME, build_metadata
from napari_ultratinysam.compression.runner import QuantizedOnnxRunner, mask_agreement
from napari_ultratinysam.core.io import atomic_write_json

METHODS = ("ptq", "qat")


def load_export_model(checkpoint=None, config=None, model=None):
    """-> (model, where it came from). ``model`` (a live UltraTinySAM) is deep-copied, never modified;
    ``config`` (a preset name or YAML) builds random weights; else ``checkpoint`` or the shipped weights."""
    import copy

    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, load_model

    if sum(v is not None for v in (checkpoint, config, model)) > 1:
        raise ValueError("give one of a checkpoint, a config preset (random weights) or a model")
    if model is not None:
        return copy.deepcopy(model).eval(), "the model in use"
    if config is not None:
        from napari_ultratinysam.model.build import build_model

        return build_model(config), f"config {config} (random weights)"
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not path.is_file():
        raise FileNotFoundError(f"the shipped weights {path} are not there; pass a checkpoint (--checkpoint) "
                                f"or a config preset for random weights (--config ultratinysam)")
    return load_model(path), str(path)


@dataclass
class QuantizeResult:
    graph: DeployGraph
    onnx_path: Path
    source: str
    method: str
    samples: list
    times: dict
    agreement: dict | None
    float_check_max_abs_diff: float


def check_deploy_graph(graph: DeployGraph, x: torch.Tensor, rtol: float = 1e-3) -> float:
    """Max abs difference between the deploy graph and the float model's own path; raises if it is not tiny."""
    with torch.no_grad():
        outs, refs = graph(x), graph.reference(x)
    diff = max(float((a - b).abs().max()) for a, b in zip(outs, refs))
    scale = max(1.0, max(float(r.abs().max()) for r in refs))
    if diff > rtol * scale:
        raise QuantizationError(f"the deploy graph differs from the float model (max abs diff {diff:.3g}); the "
                                "network code changed in a way compression/deploy_graph.py does not follow")
    return diff


def quantize_to_onnx(checkpoint=None, prompt: str = "center-point", points=None, box=None, calibration=None,
                     method: str = "ptq", out: str | Path = "quantized", num_images: int = 128,
                     qat_steps: int = 200, qat_lr: float = 1e-5, config=None, model=None,
                     agreement_images: int = 8, progress: Progress | None = None,
                     fraction: tuple[float, float] = (0.0, 1.0)) -> QuantizeResult:
    """Checkpoint -> deploy graph (prompt baked in) -> MCT PTQ or QAT -> ``out/ultratinysam_imx500.onnx``, plus
    the float-vs-quantized mask agreement on ``agreement_images`` calibration images (CPU, onnxruntime).

    The returned graph still holds the model in its deploy form: call ``result.graph.release()`` when done.
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose ptq or qat")
    require_mct()
    lo, hi = fraction

    def at(f: float) -> float:
        return lo + (hi - lo) * f

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    report(progress, "loading the model", at(0.0))
    net, source = load_export_model(checkpoint, config, model)
    baked = make_prompt(prompt, points=points, box=box, image_size=net.cfg.image_size)
    graph = DeployGraph(net, baked)
    try:
        report(progress, f"loading {num_images} calibration images", at(0.01))
        samples = load_calibration(calibration, num_images=num_images, image_size=net.cfg.image_size,
                                   progress=None)
        diff = check_deploy_graph(graph, samples[0].input)
        t = time.perf_counter()
        if method == "ptq":
            qm = quantize_ptq(graph, samples, progress, fraction=(at(0.05), at(0.85)))
        else:
            qm = quantize_qat(graph, samples, steps=qat_steps, lr=qat_lr, progress=progress,
                              fraction=(at(0.05), at(0.85)))
        times[f"{method}_s"] = round(time.perf_counter() - t, 1)
        report(progress, "exporting the quantized ONNX", at(0.85))
        t = time.perf_counter()
        onnx_path = export_quantized_onnx(qm, out / ONNX_NAME, samples, graph.output_names)
        times["onnx_export_s"] = round(time.perf_counter() - t, 1)
        agreement = None
        if agreement_images > 0:
            report(progress, "comparing float and quantized masks on the CPU", at(0.95))
            agreement = mask_agreement(graph, QuantizedOnnxRunner(onnx_path), samples[:agreement_images])
            report(progress, f"float vs quantized: mean mask IoU {agreement['mean_iou']:.3f} on "
                             f"{agreement['num_images']} calibration images", at(1.0))
        # the baked prompt beside the ONNX, so DevicePredictor.from_quantized_onnx can read it (export_imx500 and
        # `utsam quantize` rewrite this file with the memory report / times)
        atomic_write_json(out / "metadata.json", build_metadata(graph, source, method, None, {
            "calibration": {"source": str(calibration) if calibration else "default", "num_images": num_images},
            "times": dict(times), "float_vs_quantized": agreement, "float_check_max_abs_diff": diff,
            "files": {"onnx": onnx_path.name},
            **({"qat": {"steps": qat_steps, "lr": qat_lr}} if method == "qat" else {})}))
    except BaseException:
        graph.release()
        raise
    return QuantizeResult(graph, onnx_path, source, method, list(samples), times, agreement, diff)
