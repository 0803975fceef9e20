"""Quantisation for the IMX500 with Sony's model-compression-toolkit (MCT 2.5, installed by ``edge-mdt[pt]``).

* :func:`load_calibration`: representative images from the user's dataset (default 128, the train split when there
  is one), letterboxed by ``transforms``; with their GT masks for QAT.
* :func:`quantize_ptq` / :func:`quantize_qat`: MCT PTQ, or MCT QAT (``..._init_experimental`` /
  ``..._finalize_experimental``) fine-tuned with the training losses, BatchNorm frozen, both with the IMX500 TPC v1.
* :func:`export_quantized_onnx`: MCTQ ONNX (custom ``mct_quantizers`` ops) with the TorchScript exporter.
* :class:`QuantizedOnnxRunner`: runs that ONNX on the CPU (``mct_quantizers.get_ort_session_options``), so the
  annotator can preview what the sensor will compute; :func:`mask_agreement`: float vs quantized masks (mean IoU).

MCT needs a deep recursion for a graph of this size (~1,500 nodes): its calls run in a thread with a 1 GiB stack
and a raised recursion limit (:func:`run_with_big_stack`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from napari_ultratinysam.compression.deploy_graph import BakedPrompt, DeployGraph, to_graph_input
from napari_ultratinysam.core.transforms import geometry_for, letterbox, letterbox_masks, to_rgb_uint8
from napari_ultratinysam.evaluation.metrics import agreement_iou

log = logging.getLogger(__name__)

IMX500_EXTRA = 'pip install "napari-ultratinysam[imx500]"'
Progress = Callable[[str, "float | None"], None]


class QuantizationError(RuntimeError):
    """MCT missing, calibration data unusable, or quantisation/export failed (one clear line)."""


def _report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(message, fraction)
    log.info(message)


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


# ------------------------------------------------------------------------------------------------ calibration data

@dataclass
class CalibrationSample:
    """One letterboxed model-size image with its GT masks (may be empty) and the non-padding area."""

    image: np.ndarray  # (S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool
    valid: np.ndarray  # (S, S) bool
    name: str = ""

    @property
    def input(self) -> torch.Tensor:
        return to_graph_input(self.image)


def _sample(image: np.ndarray, masks: np.ndarray | None, size: int, name: str) -> CalibrationSample:
    rgb = to_rgb_uint8(image, name=name)
    boxed, geo = letterbox(rgb, size)
    if masks is None or len(masks) == 0:
        m = np.zeros((0, size, size), bool)
    else:
        m = letterbox_masks(np.asarray(masks, bool), size)
    nh, nw = geo.new_hw
    valid = np.zeros((size, size), bool)
    valid[:nh, :nw] = True
    return CalibrationSample(boxed, m, valid, name)


def _builtin_images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photos (no download): the fallback when no calibration data is given."""
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "moon",
                 "page", "text", "colorwheel", "logo", "cat"):
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - an image that needs a download is skipped
            continue
        out.append((name, img))
    return out


def default_calibration_source() -> Path | None:
    """The bundled sample data, when it holds anything; else None (scikit-image photos are used)."""
    from napari_ultratinysam.core.paths import SAMPLE_DIR

    p = SAMPLE_DIR
    if p.is_dir() and any(c for c in p.iterdir() if not c.name.startswith(".")):
        return p
    return None


_MASK_SUFFIXES = ("_instances", "_instance", "_mask", "_masks", "_labels", "_label", "_ids")


def _image_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """Plain image folder: (image, its ``<stem>_instances.png`` id map or None); the id maps are not images."""
    from napari_ultratinysam.data.readers._common import IMAGE_EXTS

    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                   and not f.name.startswith("."))
    out = []
    for f in files:
        if f.stem.lower().endswith(_MASK_SUFFIXES):
            continue
        ids = next((c for c in (folder / f"{f.stem}{sfx}.png" for sfx in _MASK_SUFFIXES) if c.is_file()), None)
        out.append((f, ids))
    return out


def _open_source(source: str | Path, split: str | None):
    """A dataset (any reader format, the train split when present) or a plain folder of images."""
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.data.readers._common import IMAGE_EXTS

    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"calibration data {p}: not found")
    if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
        return [(p, None)]
    try:
        if split is None:
            try:
                return read_dataset(p, split="train")
            except ValueError as e:
                if "no split" not in str(e):
                    raise
        return read_dataset(p, split=split)
    except ValueError:
        if p.is_dir():
            files = _image_files(p)
            if files:
                return files
        raise


def _read_item(item) -> tuple[str, np.ndarray, np.ndarray | None]:
    if isinstance(item, tuple):
        from PIL import Image

        path, ids_path = item
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
            masks = None
            if ids_path is not None:
                with Image.open(ids_path) as im:
                    ids = np.asarray(im)
                if ids.ndim == 2 and ids.shape == img.shape[:2]:
                    masks = np.stack([ids == v for v in np.unique(ids) if v != 0]) if ids.any() else None
        except OSError as e:
            raise QuantizationError(f"calibration image {path}: cannot be read ({e})") from None
        return path.stem, img, masks
    return item.name, item.image, item.masks


def load_calibration(source: str | Path | None = None, num_images: int = 128, image_size: int = 128,
                     split: str | None = None, seed: int = 0,
                     progress: Progress | None = None) -> list[CalibrationSample]:
    """``num_images`` letterboxed samples from ``source`` (a dataset in any supported format, or a folder of
    images; default: the bundled sample data, else scikit-image's photos). Datasets with a train split are
    calibrated on it (never on test unless asked). Fewer images than asked: random crops and flips fill up.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if source is None:
        source = default_calibration_source()
    if source is None:
        items = [(name, img, None) for name, img in _builtin_images()]
        where = "scikit-image sample photos"
    else:
        ds = _open_source(source, split)
        n = len(ds)
        if n == 0:
            raise QuantizationError(f"calibration data {source}: no images")
        idx = np.unique(np.linspace(0, n - 1, min(n, num_images)).round().astype(int))
        items = []
        for j, i in enumerate(idx):
            items.append(_read_item(ds[int(i)]))
            _report(progress, f"reading calibration images {j + 1}/{len(idx)}", 0.02 * (j + 1) / len(idx))
        where = str(source)
    out = [_sample(img, masks, image_size, name) for name, img, masks in items]
    rng = np.random.default_rng(seed)
    k = 0
    while len(out) < num_images:  # too few: random crops (50-100 % of each side) and flips
        name, img, masks = items[k % len(items)]
        k += 1
        rgb = to_rgb_uint8(img, name=name)
        h, w = rgb.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = rgb[y0:y0 + ch, x0:x0 + cw]
        mc = None if masks is None or len(masks) == 0 else np.asarray(masks)[:, y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            mc = None if mc is None else mc[:, :, ::-1]
        if mc is not None:
            mc = mc[mc.reshape(len(mc), -1).any(1)]
        out.append(_sample(np.ascontiguousarray(crop), None if mc is None else np.ascontiguousarray(mc),
                           image_size, f"{name}-aug{k}"))
    log.info("calibration: %d images from %s", num_images, where)
    return out[:num_images]


# ------------------------------------------------------------------------------------------------------- PTQ / QAT

def _repr_gen(samples: Sequence[CalibrationSample], progress: Progress | None = None, lo: float = 0.0,
              hi: float = 0.0, what: str = "calibrating"):
    inputs = [s.input for s in samples]
    state = {"frac": lo}

    def gen():  # MCT iterates it more than once: progress never moves backwards
        for i, x in enumerate(inputs):
            if progress is not None:
                state["frac"] = max(state["frac"], lo + (hi - lo) * (i + 1) / len(inputs))
                _report(progress, f"{what} {i + 1}/{len(inputs)}", state["frac"])
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
    _report(progress, f"PTQ: tracing the graph and collecting statistics on {len(samples)} images", fraction[0])
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
    _report(progress, f"QAT: {n_gt}/{len(samples)} images have a GT object under the prompt "
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
                _report(progress, f"QAT step {step + 1}/{steps}: loss {float(loss):.4f} "
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


# --------------------------------------------------------------------------------------------- CPU runner, agreement

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


# ------------------------------------------------------------------------------------------------ one-call pipeline

ONNX_NAME = "ultratinysam_imx500.onnx"
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
    from napari_ultratinysam.compression.deploy_graph import make_prompt

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
    _report(progress, "loading the model", at(0.0))
    net, source = load_export_model(checkpoint, config, model)
    baked = make_prompt(prompt, points=points, box=box, image_size=net.cfg.image_size)
    graph = DeployGraph(net, baked)
    try:
        _report(progress, f"loading {num_images} calibration images", at(0.01))
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
        _report(progress, "exporting the quantized ONNX", at(0.85))
        t = time.perf_counter()
        onnx_path = export_quantized_onnx(qm, out / ONNX_NAME, samples, graph.output_names)
        times["onnx_export_s"] = round(time.perf_counter() - t, 1)
        agreement = None
        if agreement_images > 0:
            _report(progress, "comparing float and quantized masks on the CPU", at(0.95))
            agreement = mask_agreement(graph, QuantizedOnnxRunner(onnx_path), samples[:agreement_images])
            _report(progress, f"float vs quantized: mean mask IoU {agreement['mean_iou']:.3f} on "
                              f"{agreement['num_images']} calibration images", at(1.0))
        # the baked prompt beside the ONNX, so DevicePredictor.from_quantized_onnx can read it (export_imx500 and
        # `utsam quantize` rewrite this file with the memory report / times)
        from napari_ultratinysam.compression.metadata import build_metadata
        from napari_ultratinysam.core.io import atomic_write_json

        atomic_write_json(out / "metadata.json", build_metadata(graph, source, method, None, {
            "calibration": {"source": str(calibration) if calibration else "default", "num_images": num_images},
            "times": dict(times), "float_vs_quantized": agreement, "float_check_max_abs_diff": diff,
            "files": {"onnx": onnx_path.name},
            **({"qat": {"steps": qat_steps, "lr": qat_lr}} if method == "qat" else {})}))
    except BaseException:
        graph.release()
        raise
    return QuantizeResult(graph, onnx_path, source, method, list(samples), times, agreement, diff)
