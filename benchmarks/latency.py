"""Encoder latency per image and decoder latency per click: UltraTinySAM (torch and onnxruntime, 1 and 2
threads) and, in the same run, the peers a user would otherwise use (random weights: only speed is measured):
SAM ViT-B (PyPI segment-anything) at 1024 and MobileSAM (PyPI mobilesam-mirror, TinyViT encoder) at 1024.

UltraTinySAM's onnxruntime rows come in float and int8 (napari_ultratinysam.inference.int8; int8 at 1 thread), with
a line on how well the int8 masks agree with the float ones on CamVid val (../shared/datasets/camvid).

    .venv/bin/python benchmarks/latency.py [--quick] [--skip-peers] [--no-write]

Prints a Markdown table and writes it into the `## Latency` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, p50_p95, timeit, write_section  # noqa: E402


def ours(threads: int, n_enc: int, n_dec: int, rows: list, image_hw=(1024, 1024)):
    from napari_ultratinysam.core.transforms import prepare_image
    from napari_ultratinysam.inference.backends.onnx import OnnxBackend
    from napari_ultratinysam.inference.backends.pytorch import TorchBackend
    from napari_ultratinysam.inference.onnx_export import export_onnx
    from napari_ultratinysam.inference.predictor import Predictor
    from napari_ultratinysam.model.build import build_model
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT, load_model

    torch.set_num_threads(threads)
    model = load_model(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.exists() else build_model("ultratinysam")
    weights = "shipped weights" if DEFAULT_CHECKPOINT.exists() else "random weights"
    from PIL import Image

    from napari_ultratinysam.widgets.samples import load_sample

    # a real photo (the coffee sample) resized to 1024x1024, as in gui_latency.py: the click lands on the cup
    img = np.asarray(Image.fromarray(load_sample("coffee")[0][0]).resize(image_hw[::-1], Image.BILINEAR))
    x, geo = prepare_image(img, 128)
    folder = Path(tempfile.mkdtemp(prefix="utsam-bench-"))
    export_onnx(model, folder)
    PROFILE_FOLDER[:] = [folder]
    backends = [TorchBackend(model, threads=threads), OnnxBackend(folder, threads=threads)]
    if threads == 1:
        backends.append(OnnxBackend(int8_folder(model), threads=threads))
        if bf16_supported():
            from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend

            backends.append(OpenVinoBackend(folder, threads=threads, precision="bf16"))
    for be in backends:
        enc = timeit(lambda: be.encode(x), n_enc)
        feats = be.encode(x)
        coords = np.array([[64.0, 64.0]], np.float32)
        labels = np.array([1.0], np.float32)
        dec = timeit(lambda: be.decode(feats, coords, labels, None), n_dec)
        pred = Predictor(be, zoom_refine=False)
        pred.set_image(img)
        click = timeit(lambda: pred.predict(points=[[512, 512]]).mask(0), n_dec)  # best mask at 1024x1024
        name = be.name if be.name == "torch" else f"{'onnxruntime' if be.name == 'onnx' else be.name} {be.precision}"
        if threads == 1:
            lowres = timeit(lambda: pred.predict(points=[[512, 512]]), n_dec)  # masks are made on demand
            r = pred.predict(points=[[512, 512]])
            up = timeit(lambda: Predictor.upsample_masks(r.lowres[:1], geo), n_dec)
            BREAKDOWN.append((name, p50_p95(dec)[0], p50_p95(lowres)[0] - p50_p95(dec)[0], p50_p95(up)[0],
                              p50_p95(click)[0], int(r.mask(0).sum())))
        rows.append((f"UltraTinySAM 128 ({weights})", name, threads, *p50_p95(enc), *p50_p95(dec),
                     *p50_p95(click)))


BREAKDOWN: list = []  # (backend, decoder, predictor overhead, upsampling, click total, mask pixels), 1 thread
PROFILE_FOLDER: list = []  # the float ONNX folder of the shipped weights (for the OpenVINO profile)


def int8_folder(model) -> Path:
    """The cached int8 folder of the shipped weights (or of ``model`` when they are absent)."""
    from napari_ultratinysam.inference.int8 import int8_folder_for_checkpoint, int8_folder_for_model
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.exists():
        return int8_folder_for_checkpoint(DEFAULT_CHECKPOINT)
    return int8_folder_for_model(model)


def bf16_supported() -> bool:
    from napari_ultratinysam.inference.int8 import choose_precision

    try:
        return choose_precision("bf16") == "bf16"
    except ValueError:
        return False


CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"


def mask_agreement(fp, qp, max_images: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between the best-scored masks of two predictors (default settings) for one click at the interior
    point of each CamVid val object of >= 150 px at 128x128 (the paper's size filter); and each one's IoU with
    the ground truth (-> mIoU@1 of both)."""
    from napari_ultratinysam.core.prompts import interior_point
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.evaluation.metrics import agreement_iou

    ds = read_dataset(CAMVID, split="val", min_area=2110)  # 480x360 images: 2110 px = 150 px at 128x128
    ious, gt_a, gt_b = [], [], []
    for i in range(len(ds) if max_images is None else min(max_images, len(ds))):
        d = ds[i]
        fp.set_image(d.image)
        qp.set_image(d.image)
        for m in d.masks:
            pt = [interior_point(m)]
            a, b = fp.predict(points=pt).mask(0), qp.predict(points=pt).mask(0)
            ious.append(agreement_iou(a, b))
            gt_a.append(agreement_iou(a, m))
            gt_b.append(agreement_iou(b, m))
    return np.asarray(ious), np.asarray(gt_a), np.asarray(gt_b)


def _agreement_line(what: str, res, max_images: int | None) -> str:
    ious, gt_f, gt_q = res
    return (f"- {what}: mean mask IoU {ious.mean():.4f} (median {np.median(ious):.4f}, "
            f"{np.mean(ious < 0.9) * 100:.1f} % of clicks below 0.9) over {len(ious)} CamVid val objects "
            f"({'first ' + str(max_images) + ' images' if max_images else 'all images'}, >= 150 px at 128x128), "
            f"one click at each object's interior point; mIoU@1 against the ground truth {gt_q.mean() * 100:.2f} vs "
            f"float {gt_f.mean() * 100:.2f} ({(gt_q.mean() - gt_f.mean()) * 100:+.2f} points)")


def bf16_agreement(max_images: int | None = None) -> str:
    """The same as int8_agreement for OpenVINO bf16 (encoder and decoder) against onnxruntime float."""
    from napari_ultratinysam.inference.predictor import Predictor
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    if not bf16_supported():
        return "- bf16 vs float agreement: not measured (no bf16 on this CPU, or openvino is not installed)"
    if not CAMVID.is_dir() or not DEFAULT_CHECKPOINT.exists():
        return "- bf16 vs float agreement: not measured (CamVid or the shipped weights are absent)"
    res = mask_agreement(Predictor.from_default(backend="onnx"),
                         Predictor.from_default(backend="onnx", precision="bf16"), max_images)
    return _agreement_line("bf16 vs float (OpenVINO bf16 encoder and decoder vs onnxruntime float, shipped weights)",
                           res, max_images)


def int8_agreement(max_images: int | None = None) -> str:
    """Mean IoU between int8 and float masks (best-scored mask, default Predictor settings) for one click at
    the interior point of each CamVid val object of >= 150 px at 128x128 (the paper's size filter)."""
    import json

    from napari_ultratinysam.inference.predictor import Predictor
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    if not CAMVID.is_dir() or not DEFAULT_CHECKPOINT.exists():
        return "- int8 vs float agreement: not measured (CamVid or the shipped weights are absent)"
    q = int8_folder(None)
    res = mask_agreement(Predictor.from_default(backend="onnx"), Predictor.from_onnx(q), max_images)
    enc = json.loads((q / "config.json").read_text())["quantization"]["encoder"]
    enc_txt = ("int8 encoder" if enc["int8"] else
               f"float encoder: the static int8 encoder agreed only {enc['int8_mask_iou_vs_float']:.3f} mask IoU "
               f"on the calibration clicks, below the {enc['min_iou']} gate")
    return _agreement_line(f"int8 vs float (onnxruntime, shipped weights; int8 decoder, {enc_txt})", res,
                           max_images)


def sam_family(name: str, threads: int, n_enc: int, n_dec: int, rows: list):
    torch.set_num_threads(threads)
    if name == "SAM ViT-B":
        from segment_anything import sam_model_registry
        sam = sam_model_registry["vit_b"](checkpoint=None)
    else:
        from mobile_sam import sam_model_registry
        sam = sam_model_registry["vit_t"](checkpoint=None)
    sam.eval()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        enc = timeit(lambda: sam.image_encoder(x), n_enc, warmup=1)
        emb = sam.image_encoder(x)
        pts = (torch.tensor([[[512.0, 512.0]]]), torch.tensor([[1]]))

        def dec_fn():
            sp, de = sam.prompt_encoder(points=pts, boxes=None, masks=None)
            return sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=True)

        dec = timeit(dec_fn, n_dec)

        def click_fn():
            low, _ = dec_fn()
            return sam.postprocess_masks(low, (1024, 1024), (1024, 1024)) > 0

        click = timeit(click_fn, max(5, n_dec // 3))
    rows.append((f"{name} 1024 (random weights)", "torch", threads, *p50_p95(enc), *p50_p95(dec), *p50_p95(click)))


def openvino_decoder_profile(folder: Path, runs: int = 300) -> list[str]:
    """Where the bf16 single-click decoder's time goes inside OpenVINO (per-node counters of the same no-mask,
    static-shape graph the backend runs), by node type; [] where bf16 is not available."""
    import collections

    import openvino as ov

    from napari_ultratinysam.inference.backends.openvino import OpenVinoBackend

    be = OpenVinoBackend(folder, precision="bf16")
    x = np.zeros((1, 3, be.image_size, be.image_size), np.float32)
    core = ov.Core()
    m = core.read_model(str(folder / "decoder_nomask.onnx"))
    m.reshape({"point_coords": [1, 1, 2], "point_labels": [1, 1]})
    req = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "bf16",
                                        "SNIPPETS_MODE": "DISABLE", "PERF_COUNT": True}).create_infer_request()
    feed = {**be.encode(x), "point_coords": np.full((1, 1, 2), 64.0, np.float32),
            "point_labels": np.ones((1, 1), np.float32)}
    agg, count = collections.defaultdict(float), collections.Counter()
    for i in range(runs + 20):
        req.infer(feed)
        if i >= 20:
            for p in req.get_profiling_info():
                if p.status == p.Status.EXECUTED:
                    agg[p.node_type] += p.real_time.total_seconds() * 1e6 / runs
                    count[p.node_type] += 1
    total = sum(agg.values())
    rows = sorted(agg.items(), key=lambda kv: -kv[1])
    out = ["", f"Inside the bf16 single-click decoder (OpenVINO per-node counters, mean of {runs} runs; "
           f"{total:.0f} us in nodes with the counters on):", "",
           "| node type | nodes | us | share |", "|---|---:|---:|---:|"]
    out += [f"| {k} | {round(count[k] / runs)} | {v:.0f} | {v / total * 100:.0f} % |" for k, v in rows[:8]]
    rest = sum(v for _, v in rows[8:])
    out.append(f"| other ({len(rows) - 8} types) | {round(sum(count[k] for k, _ in rows[8:]) / runs)} | "
               f"{rest:.0f} | "
               f"{rest / total * 100:.0f} % |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-peers", "--skip-peers", dest="no_peers", action="store_true",
                    help="skip SAM ViT-B and MobileSAM")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    n_enc, n_dec = (20, 50) if args.quick else (100, 200)
    rows: list = []
    for threads in (1, 2):
        ours(threads, n_enc, n_dec, rows)
    if not args.no_peers:
        for threads in (1, 2):
            sam_family("MobileSAM", threads, 3 if args.quick else 5, 20 if args.quick else 40, rows)
            sam_family("SAM ViT-B", threads, 2 if args.quick else 3, 20 if args.quick else 40, rows)
    head = ("| model | backend | threads | encoder p50 ms | encoder p95 ms | decoder p50 ms (to low-res logits) "
            "| decoder p95 ms | click to full mask p50 ms (1024x1024 image) | p95 ms |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.2f} "
                      f"| {r[8]:.2f} |" for r in rows]
    best_ours = min((r for r in rows if r[0].startswith("UltraTinySAM")), key=lambda r: r[3])
    best_dec = min((r for r in rows if r[0].startswith("UltraTinySAM")), key=lambda r: r[5])
    ratio = []
    for peer in ("MobileSAM", "SAM ViT-B"):
        pr = [r for r in rows if r[0].startswith(peer)]
        if pr:
            pe, pd = min(r[3] for r in pr), min(r[5] for r in pr)
            ratio.append(f"- vs {peer}: encoder {pe / best_ours[3]:.0f}x faster "
                         f"({best_ours[3]:.2f} ms vs {pe:.0f} ms), "
                         f"decoder per click {pd / best_dec[5]:.1f}x faster ({best_dec[5]:.2f} ms vs {pd:.1f} ms) "
                         f"(best configuration of each, same run)")
    agreement = int8_agreement(20 if args.quick else None) + "\n" + bf16_agreement(20 if args.quick else None)
    if BREAKDOWN:
        ratio += ["", "Where a click's milliseconds go (UltraTinySAM, 1 thread, one click at the centre of the "
                  "1024x1024 image, p50 ms; the napari side is in the GUI latency section):", "",
                  "| backend | decoder (prompt -> low-res logits) | predictor around it (prompt mapping, sort) | best "
                  "mask upsampled + thresholded in its region | click to full mask | mask pixels |",
                  "|---|---:|---:|---:|---:|---:|"]
        ratio += [f"| {b[0]} | {b[1]:.2f} | {b[2]:.2f} | {b[3]:.2f} | {b[4]:.2f} | {b[5]} |" for b in BREAKDOWN]
        if bf16_supported() and PROFILE_FOLDER:
            ratio += openvino_decoder_profile(PROFILE_FOLDER[0])
        ratio.append("")
    body = "\n".join([f"`benchmarks/latency.py` on {machine_line()}. p50/p95 over {n_enc} encoder and {n_dec} decoder "
                      "runs for UltraTinySAM; peers fewer runs (their encoders take seconds). Image: the coffee "
                      "sample resized to 1024x1024, one click at its centre. "
                      "The 2 cores are shared with other jobs: 2-thread figures are noisy.", "", *lines, "", *ratio,
                      agreement])
    print(body)
    if not args.no_write:
        write_section("Latency", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
