"""The quantized IMX500 ONNX on the CPU, so the annotator can preview what the sensor will compute, and how far
its masks agree with the float deploy graph's."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from napari_ultratinysam.compression.calibration import CalibrationSample
from napari_ultratinysam.compression.common import IMX500_EXTRA, QuantizationError
from napari_ultratinysam.compression.deploy_graph import DeployGraph, to_graph_input
from napari_ultratinysam.core.transforms import geometry_for, letterbox, to_rgb_uint8
from napari_ultratinysam.evaluation.metrics import agreement_iou


class QuantizedOnnxRunner:
    """The quantized IMX500 ONNX on the CPU (onnxruntime + mct-quantizers custom ops): what the sensor computes.

    ``predict_lowres(image_uint8)`` letterboxes any image like the float predictor and returns
    (logits (K, S/4, S/4), iou (K,)) over the padded model square; ``run(x)`` takes the graph input directly.
    """

    name = "imx500-quantized-onnx"

    def __init__(self, onnx_path: str | Path, threads: int = 1):
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"quantized ONNX {path}: not found")
        try:
            import onnxruntime as ort
            from mct_quantizers import get_ort_session_options
        except ImportError as e:
            raise QuantizationError(f"running the quantized ONNX needs mct-quantizers and onnxruntime ({e}); "
                                    f"install them with: {IMX500_EXTRA}") from None
        so = get_ort_session_options()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise QuantizationError(f"quantized ONNX {path}: onnxruntime cannot load it "
                                    f"({str(e).splitlines()[0]})") from None
        self.path = path
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.image_size = int(inp.shape[-1])
        self.lowres_size = self.image_size // 4
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """(1, 3, S, S) float32 = pixels / 256 -> [masks (1, K, l, l), iou (1, K)(, object score (1, 1))]."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        return self.session.run(None, {self.input_name: x})

    def prepare(self, image: np.ndarray) -> np.ndarray:
        rgb = to_rgb_uint8(image)
        if rgb.shape[:2] != (self.image_size, self.image_size):
            rgb, _ = letterbox(rgb, self.image_size)
        return to_graph_input(rgb).numpy()

    def predict_lowres(self, image_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = self.run(self.prepare(image_uint8))
        return outs[0][0], outs[1][0]

    def predict_mask(self, image_uint8: np.ndarray) -> tuple[np.ndarray, float]:
        """The best mask (highest predicted IoU) at image resolution, bool (H, W), and its predicted IoU."""
        from napari_ultratinysam.core.transforms import logits_to_image

        logits, iou = self.predict_lowres(image_uint8)
        k = int(np.argmax(iou))
        geo = geometry_for(np.asarray(image_uint8).shape[:2], self.image_size)
        return logits_to_image(logits[k], geo)[0] > 0, float(iou[k])


def mask_agreement(graph: DeployGraph, runner: QuantizedOnnxRunner,
                   images: Iterable[np.ndarray | CalibrationSample]) -> dict:
    """Mean IoU between the float deploy graph's masks (logits > 0) and the quantized ONNX's, per output token
    and for the mask each would show (highest predicted IoU). Images: model-size uint8 or calibration samples."""
    per_token, chosen, same_choice, iou_err = [], [], [], []
    graph.eval()
    for item in images:
        img = item.image if isinstance(item, CalibrationSample) else np.asarray(item)
        x = runner.prepare(img)
        with torch.no_grad():
            f = [o.numpy() for o in graph(torch.from_numpy(x))]
        q = runner.run(x)
        fm, qm = f[0][0] > 0, q[0][0] > 0
        per_token.append(np.mean([agreement_iou(fm[k], qm[k]) for k in range(fm.shape[0])]))
        kf, kq = int(np.argmax(f[1][0])), int(np.argmax(q[1][0]))
        chosen.append(agreement_iou(fm[kf], qm[kq]))
        same_choice.append(kf == kq)
        iou_err.append(float(np.abs(f[1][0] - q[1][0]).mean()))
    if not per_token:
        raise ValueError("mask_agreement needs at least one image")
    return {"num_images": len(per_token), "mean_iou": float(np.mean(per_token)),
            "mean_iou_chosen": float(np.mean(chosen)), "min_iou": float(np.min(per_token)),
            "same_choice": float(np.mean(same_choice)), "iou_pred_abs_err": float(np.mean(iou_err))}

