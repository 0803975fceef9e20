"""PTQ, QAT and ONNX export through Sony's model-compression-toolkit (MCT 2.5, installed by ``edge-mdt[pt]``).

* :func:`quantize_ptq` / :func:`quantize_qat`: MCT PTQ, or MCT QAT (``..._init_experimental`` /
  ``..._finalize_experimental``) fine-tuned with the training losses, BatchNorm frozen, both with the IMX500 TPC v1.
* :func:`export_quantized_onnx`: MCTQ ONNX (custom ``mct_quantizers`` ops) with the TorchScript exporter.

MCT needs a deep recursion for a graph of this size (~1,500 nodes): its calls run in a thread with a 1 GiB stack
and a raised recursion limit (:func:`run_with_big_stack`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from napari_ultratinysam.compression.calibration import CalibrationSample
from napari_ultratinysam.compression.common import IMX500_EXTRA, Progress, QuantizationError, report
from napari_ultratinysam.compression.deploy_graph import BakedPrompt, DeployGraph

# ------------------------------------------------------------------------------------------------------ MCT plumbing

def require_mct():
    try:
        import model_compression_toolkit as mct  # noqa: F401
    except ImportError as e:
        raise QuantizationError(f"model-compression-toolkit is not installed ({e}); install it with: "
                                f"{IMX500_EXTRA}") from None
    return mct


def imx500_tpc():
    """MCT's IMX500 target platform capabilities v1 (8-bit per-channel weights, power-of-two activations)."""
    return require_mct().get_target_platform_capabilities("pytorch", "imx500", target_platform_version="v1")


@contextlib.contextmanager
def legacy_onnx_exporter():
    """MCT 2.5 calls ``torch.onnx.export`` without ``dynamo=``; torch >= 2.9 defaults to the dynamo exporter
    (needs onnxscript, and MCTQ's custom ops rely on the TorchScript exporter). Patch, then restore."""
    orig = torch.onnx.export
    torch.onnx.export = functools.partial(orig, dynamo=False)
    try:
        yield
    finally:
        torch.onnx.export = orig


@contextlib.contextmanager
def bounded_histograms(every: int = 4):
    """Keep MCT's activation histograms bounded in memory.

    MCT 2.5's HistogramCollector stores one 2048-bin histogram per collector per calibration batch and merges
    them only at the end, so memory grows with every calibration image (enough to exhaust a large machine with
    the deploy graph: docs/history.md). This merges them every ``every`` batches with MCT's own merge
    (interpolation onto common bins), so memory stays flat; restored afterwards.
    """
    try:
        from model_compression_toolkit.core.common.collectors.histogram_collector import HistogramCollector
    except ImportError:  # another MCT layout: nothing to bound
        yield
        return
    orig = HistogramCollector.update

    def update(self, x):
        orig(self, x)
        hist = self._histogram_per_iteration
        if len(hist) >= every:
            self._merge_histograms()
            self._histogram_per_iteration = [(self._counts, self._bins)]
            self._counts = self._bins = None

    HistogramCollector.update = update
    try:
        yield
    finally:
        HistogramCollector.update = orig


def run_with_big_stack(fn: Callable[[], object], stack_bytes: int = 1 << 30, recursion_limit: int = 200_000):
    """Run ``fn()`` in a thread with a big stack and a raised recursion limit (MCT's deep graph copies)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, recursion_limit))
    old_stack = threading.stack_size(stack_bytes)
    try:
        th = threading.Thread(target=target, name="utsam-mct", daemon=True)
        th.start()
    finally:
        threading.stack_size(old_stack)
    th.join()
    sys.setrecursionlimit(old_limit)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------------------------------------------- PTQ / QAT

def _repr_gen(samples: Sequence[CalibrationSample], progress: Progress | None = None, lo: float = 0.0,
              hi: float = 0.0, what: str = "calibrating"):
    inputs = [s.input for s in samples]
    state = {"frac": lo}

    def gen():  # MCT iterates it more than once: progress never moves backwards
        for i, x in enumerate(inputs):
            if progress is not None:
                state["frac"] = max(state["frac"], lo + (hi - lo) * (i + 1) / len(inputs))
                report(progress, f"{what} {i + 1}/{len(inputs)}", state["frac"])
            yield [x]

    return gen


def quantize_ptq(graph: DeployGraph, samples: Sequence[CalibrationSample], progress: Progress | None = None,
                 fraction: tuple[float, float] = (0.05, 0.6)):
    """MCT post-training quantisation of the deploy graph -> the MCT quantized torch model."""
    mct = require_mct()
    tpc = imx500_tpc()
    if not samples:
        raise QuantizationError("PTQ needs at least one calibration image")
    gen = _repr_gen(samples, progress, fraction[0], fraction[1], "PTQ: calibrating")
    report(progress, f"PTQ: tracing the graph and collecting statistics on {len(samples)} images", fraction[0])
    graph.eval()
    try:
        with bounded_histograms():
            qm, _info = run_with_big_stack(
                lambda: mct.ptq.pytorch_post_training_quantization(graph, gen, target_platform_capabilities=tpc))
    except QuantizationError:
        raise
    except Exception as e:
        raise QuantizationError(f"MCT PTQ failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
            from e
    return qm


def _prompt_target(sample: CalibrationSample, prompt: BakedPrompt) -> np.ndarray | None:
    """The GT object the baked prompt points at: the smallest mask holding every positive click and no negative
    one; for a box, the mask whose bounding box overlaps it best (IoU >= 0.5). None when there is none."""
    masks = sample.masks
    if len(masks) == 0:
        return None
    s = masks.shape[-1]
    if prompt.mode == "box":
        (x0, y0), (x1, y1) = prompt.points
        best, best_iou = None, 0.5
        for m in masks:
            ys, xs = np.nonzero(m)
            if len(xs) == 0:
                continue
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            iw = max(0.0, min(x1, bx1) - max(x0, bx0))
            ih = max(0.0, min(y1, by1) - max(y0, by0))
            inter = iw * ih
            union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - inter
            iou = inter / union if union > 0 else 0.0
            if iou >= best_iou:
                best, best_iou = m, iou
        return best
    pix = [(min(s - 1, int(y)), min(s - 1, int(x)), lab) for (x, y), lab in zip(prompt.points, prompt.labels)]
    best = None
    for m in masks:
        if all(m[r, c] == bool(lab) for r, c, lab in pix):
            if best is None or m.sum() < best.sum():
                best = m
    return best


def _pad_to_all_tokens(masks: torch.Tensor, iou: torch.Tensor, indices: tuple[int, ...], num_tokens: int):
    """(B, K, ...) outputs of the selected tokens -> (B, num_tokens, ...) with zeros elsewhere (loss layout)."""
    b = masks.shape[0]
    full_m = masks.new_zeros((b, num_tokens) + tuple(masks.shape[2:]))
    full_i = iou.new_zeros((b, num_tokens))
    idx = list(indices)
    full_m = full_m.index_copy(1, torch.tensor(idx), masks)
    full_i = full_i.index_copy(1, torch.tensor(idx), iou)
    return full_m, full_i


def _losses():
    """The training losses (training/losses.py) and their default weights."""
    from napari_ultratinysam.training.config import LossConfig
    from napari_ultratinysam.training.losses import sam_loss

    return sam_loss, LossConfig()


def quantize_qat(graph: DeployGraph, samples: Sequence[CalibrationSample], steps: int = 200, lr: float = 1e-5,
                 seed: int = 0, progress: Progress | None = None, fraction: tuple[float, float] = (0.05, 0.6)):
    """MCT quantisation-aware training of the deploy graph with the training losses, BatchNorm frozen.

    Targets: the GT object under the baked prompt (see :func:`_prompt_target`); images without one use the
    float graph's own mask (self-distillation), so every calibration image contributes. The prompt-only constants
    (folded token projections) stay fixed; every layer that sees the image is trained. Returns the finalized
    MCT quantized model.
    """
    mct = require_mct()
    tpc = imx500_tpc()
    if steps < 1:
        raise ValueError(f"QAT steps must be >= 1, got {steps}")
    if not samples:
        raise QuantizationError("QAT needs at least one calibration image")
    sam_loss, loss_cfg = _losses()
    lo, hi = fraction
    graph.eval()
    targets, n_gt = [], 0
    with torch.no_grad():
        for s in samples:
            t = _prompt_target(s, graph.prompt)
            if t is None:
                out = graph(s.input)
                k = int(out[1][0].argmax())
                t = torch.nn.functional.interpolate(out[0][:, k:k + 1], size=s.image.shape[:2], mode="bilinear",
                                                    align_corners=False)[0, 0].numpy() > 0
            else:
                n_gt += 1
            targets.append(torch.from_numpy(np.asarray(t, bool))[None])
    valids = [torch.from_numpy(s.valid)[None] for s in samples]
    inputs = [s.input for s in samples]
    report(progress, f"QAT: {n_gt}/{len(samples)} images have a GT object under the prompt "
                     f"(the rest use the float mask); preparing the QAT model", lo)
    gen = _repr_gen(samples)
    n_tok = graph.model.mask_decoder.num_mask_tokens

    def work():
        qat_model = mct.qat.pytorch_quantization_aware_training_init_experimental(
            graph, gen, target_platform_capabilities=tpc)[0]
        qat_model.train()
        for m in qat_model.modules():  # BN frozen (running stats and affine), dropout off
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
                m.eval()
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        for name, p in qat_model.named_parameters():  # the fixed token pickers / folded queries stay fixed
            if name.split(".")[0].startswith(("sel_", "qfold")):
                p.requires_grad_(False)
        params = [p for p in qat_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(samples))
        t0 = time.perf_counter()
        for step in range(steps):
            i = int(order[step % len(order)])
            outs = qat_model(inputs[i])
            masks, iou = outs[0], outs[1]
            obj = outs[2] if len(outs) > 2 else None
            m4, i4 = _pad_to_all_tokens(masks, iou, graph.mask_indices, n_tok)
            loss = sam_loss(m4, i4, obj, targets[i], valids[i], loss_cfg, graph.multimask)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None and (step % 5 == 0 or step == steps - 1):
                report(progress, f"QAT step {step + 1}/{steps}: loss {float(loss):.4f} "
                                 f"({time.perf_counter() - t0:.0f} s)", lo + (hi - lo) * (step + 1) / steps)
        qat_model.eval()
        return mct.qat.pytorch_quantization_aware_training_finalize_experimental(qat_model)

    try:
        with bounded_histograms():
            return run_with_big_stack(work)
    except (QuantizationError, ValueError):
        raise
    except Exception as e:
        raise QuantizationError(f"MCT QAT failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
            from e


def export_quantized_onnx(qmodel, path: str | Path, samples: Sequence[CalibrationSample],
                          output_names: list[str] | None = None) -> Path:
    """Write the MCTQ ONNX (mct_quantizers custom ops) of an MCT quantized model to ``path``, atomically."""
    mct = require_mct()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.onnx")
    gen = _repr_gen(samples[:4])
    try:
        with legacy_onnx_exporter():
            run_with_big_stack(lambda: mct.exporter.pytorch_export_model(
                qmodel, save_model_path=str(tmp), repr_dataset=gen,
                serialization_format=mct.exporter.PytorchExportSerializationFormat.ONNX,
                quantization_format=mct.exporter.QuantizationFormat.MCTQ, output_names=output_names))
        if not tmp.is_file():
            raise QuantizationError(f"MCT export wrote no file at {tmp}")
        os.replace(tmp, path)
    except Exception as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, QuantizationError):
            raise
        raise QuantizationError(f"MCT ONNX export failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return path

