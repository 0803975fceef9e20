"""Metrics dictionaries and the report files: OUT/metrics.json, OUT/metrics.md, OUT/iou_vs_clicks.png.

A "run" is one model on one dataset: a flat dict of metrics built by :func:`run_metrics`. Several runs
(datasets, or float / PTQ / QAT models) can go into one report: one table column and one plot line each.
All AP and IoU values are fractions in the JSON; the Markdown shows AP as % (as the paper did).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from napari_ultratinysam.core.io import atomic_write_bytes, atomic_write_text
from napari_ultratinysam.evaluation import metrics
from napari_ultratinysam.evaluation.protocols import InteractiveResult, PaperResult

NOC_THRESHOLDS = (0.85, 0.90)
MIOU_KS = (1, 3, 5)


def _pct(thr: float) -> str:
    return str(int(round(thr * 100)))


def interactive_metrics(ious: np.ndarray, thresholds: Sequence[float] = NOC_THRESHOLDS,
                        ks: Sequence[int] = MIOU_KS) -> dict[str, Any]:
    """Flat dict from (N, K) IoU curves: noc@T, failures@T, miou@k, miou_curve, num_objects, max_clicks."""
    a = np.asarray(ious, dtype=np.float64).reshape(len(ious), -1) if len(ious) else np.zeros((0, 1))
    k_max = a.shape[1]
    out: dict[str, Any] = {"num_objects": int(a.shape[0]), "max_clicks": int(k_max)}
    for t in thresholds:
        out[f"noc@{_pct(t)}"] = metrics.mean_noc(a, t) if a.shape[0] else None
        out[f"failures@{_pct(t)}"] = metrics.failures(a, t) if a.shape[0] else 0
    for k in ks:
        out[f"miou@{k}"] = metrics.miou_at(a, k) if a.shape[0] and k <= k_max else None
    out["miou_curve"] = [float(v) for v in metrics.miou_curve(a)] if a.shape[0] else []
    return out


def paper_metrics(res: PaperResult) -> dict[str, Any]:
    return {
        "paper_map": dict(res.paper_map),
        "paper_map_fixed": dict(res.paper_map_fixed),
        "coco_ap": dict(res.coco_ap),
        "coco_ap50": dict(res.coco_ap50),
        "coco_ap75": dict(res.coco_ap75),
        "paper_miou": dict(res.miou),
        "paper_num_objects": res.num_objects,
        "paper_gt_pool": res.num_gt_pool,
        "paper_num_images": res.num_images,
    }


def run_metrics(interactive: InteractiveResult | None = None, paper: PaperResult | None = None,
                **info: Any) -> dict[str, Any]:
    """One run's metrics: interactive keys (if given), paper keys (if given), then ``info`` (model, dataset)."""
    out: dict[str, Any] = {}
    if interactive is not None:
        out.update(interactive_metrics(interactive.ious))
        out["skipped_objects"] = interactive.num_skipped
    if paper is not None:
        out.update(paper_metrics(paper))
        out.setdefault("num_objects", paper.num_objects)
    out.update(info)
    return out


def _clean(v: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{100 * v:.2f}" if pct else f"{float(v):.{digits}f}"


def render_markdown(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables: interactive metrics (one column per run) and paper-protocol metrics per mode."""
    labels = list(runs)
    lines = ["# Evaluation", ""]
    rows = [("objects", "num_objects", False), ("NoC@85", "noc@85", False), ("NoC@90", "noc@90", False),
            ("failures@85", "failures@85", False), ("failures@90", "failures@90", False),
            ("mIoU@1", "miou@1", False), ("mIoU@3", "miou@3", False), ("mIoU@5", "miou@5", False)]
    if any("noc@85" in r for r in runs.values()):
        lines += ["## Interactive protocol (clicks at the interior of the largest error region)", "",
                  "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for name, key, pct in rows:
            lines.append(f"| {name} | " + " | ".join(_fmt(runs[l].get(key), pct, 2 if "noc" in key else 3)
                                                      for l in labels) + " |")
        lines.append("")
    if any("paper_map" in r for r in runs.values()):
        lines += ["## Paper protocol (AP in %, mIoU as a fraction)", "",
                  "| run | mode | paper mAP | paper mAP, fixed pool | COCO AP | AP50 | AP75 | mIoU |",
                  "|---|---|---|---|---|---|---|---|"]
        for l in labels:
            r = runs[l]
            for mode in r.get("paper_map", {}):
                vals = [_fmt(r[k].get(mode), True) for k in ("paper_map", "paper_map_fixed", "coco_ap",
                                                              "coco_ap50", "coco_ap75")]
                lines.append(f"| {l} | {mode} | " + " | ".join(vals) + f" | {_fmt(r['paper_miou'].get(mode))} |")
        lines += ["", "Paper mAP: the original `manual_eval` (GT pool = objects >= 150 px at full resolution, "
                  "greedy same-category matching, 11-point VOC). Fixed pool: the same with the GT pool restricted "
                  "to the prompted objects. COCO AP: scores = predicted IoU, 101-point. See docs/evaluation.md.", ""]
    return "\n".join(lines) + "\n"


def plot_png(runs: Mapping[str, Mapping[str, Any]]) -> bytes:
    """PNG bytes: mIoU vs number of clicks, one line per run (paper 1/3/5-click mIoU as markers)."""
    from matplotlib.figure import Figure  # no pyplot: Agg rendering without touching the global backend

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for label, r in runs.items():
        curve = r.get("miou_curve") or []
        if curve:
            ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=label)
            drawn = True
        pm = r.get("paper_miou") or {}
        pts = [(k, pm[m]) for k, m in ((1, "1click"), (3, "3clicks"), (5, "5clicks")) if pm.get(m) is not None]
        if pts:
            ax.plot(*zip(*pts), linestyle="--", marker="s", label=f"{label} (paper prompts)")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no objects evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(out_dir: str | Path, runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Path]:
    """Write metrics.json, metrics.md and iou_vs_clicks.png atomically into ``out_dir``.

    With one run, metrics.json is that run's flat dict (plus "label"); with several, {"runs": {label: dict}}.
    """
    if not runs:
        raise ValueError("runs: nothing to report")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path exists and is not a directory")
    clean = {str(k): _clean(dict(v)) for k, v in runs.items()}
    if len(clean) == 1:
        label, body = next(iter(clean.items()))
        doc: dict[str, Any] = {"label": label, **body}
    else:
        doc = {"runs": clean}
    paths = {"json": out / "metrics.json", "md": out / "metrics.md", "png": out / "iou_vs_clicks.png"}
    atomic_write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
    atomic_write_text(paths["md"], render_markdown(clean))
    atomic_write_bytes(paths["png"], plot_png(clean))
    return paths
