"""Click-to-preview and hover-to-preview latency of the napari annotator on a 1024x1024 image.

    .venv/bin/python benchmarks/gui_latency.py [--clicks 100] [--hovers 100] [--backend onnxruntime,torch,...]

Timed from the call of the handler the mouse callback calls (the prompts layer's napari drag callback for a
click, its move callback for hover) to the moment the widget has written the new mask into the ``preview`` layer
and refreshed it (the widget's ``preview_updated`` signal). The worker thread, the queued Qt signal and the GUI
update are inside that interval; the canvas repaint that follows (software OpenGL under Xvfb here) is measured
separately. Runs a real napari window; without a DISPLAY it starts Xvfb itself (pyvirtualdisplay).

Predictor: the shipped weights (napari_ultratinysam/weights/ultratinysam.safetensors) when present, else the same
network randomly initialised with the object-score gate off (so that masks are not empty and the upsampling/refresh
cost is real).
Prints a Markdown table and writes it into the `## GUI latency` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, p50_p95, write_section  # noqa: E402

TARGET_MS = 33.0
TARGET_FAST_MS = 16.0
SETTLE_MS = 200  # idle time before each click (a person does not click on a new object faster)


def _ensure_display() -> None:
    """Without an X display, run this script again under xvfb-run (napari does not render offscreen)."""
    if os.environ.get("DISPLAY"):
        return
    import shutil

    if shutil.which("xvfb-run") is None:
        raise SystemExit("gui_latency: no DISPLAY and no xvfb-run; install xvfb (apt-get install xvfb)")
    os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])


def _predictor(backend: str):
    import torch

    from napari_ultratinysam.inference.predictor import Predictor
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    torch.set_num_threads(1)
    from napari_ultratinysam.annotation import BACKEND_PRECISION

    runtime = "torch" if backend == "torch" else "onnx"
    precision = BACKEND_PRECISION[backend] or "float"
    if DEFAULT_CHECKPOINT.is_file():
        return Predictor.from_default(backend=runtime, precision=precision), "shipped weights"
    from napari_ultratinysam.core.config import resolve_model_config
    from napari_ultratinysam.model.build import build_model

    cfg = resolve_model_config("ultratinysam")
    cfg.trunk_pretrained = False
    torch.manual_seed(0)
    p = Predictor.from_model(build_model(cfg).eval(), backend=runtime, precision=precision)
    p.cfg.gate_by_object_score = False
    return p, "random weights, object-score gate off"


def _image(size: int = 1024) -> np.ndarray:
    from PIL import Image

    from napari_ultratinysam.widgets.samples import load_sample

    img = load_sample("coffee")[0][0]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


class _Ev:
    """The fields of napari's mouse event our callbacks read."""

    def __init__(self, type_, position, button=1):
        self.type, self.position, self.button, self.modifiers = type_, tuple(position), button, ()
        self.pos, self.is_dragging, self.handled = np.zeros(2), False, False


def _measure(viewer, app, args, backend: str) -> dict:
    """Clicks, hovers and a hover sweep with one backend; returns {row name: array of seconds} and extras."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    predictor, weights = _predictor(backend)
    w = AnnotatorWidget(viewer, predictor=predictor)
    dock = viewer.window.add_dock_widget(w, area="right", name=f"UltraTinySAM ({backend})")
    img = _image(args.size)
    shown: list[int] = []
    # (seq, time) of each preview update, stamped when the widget signals it (the wait loop below may notice it
    # later: the GUI thread goes on with other events, e.g. the repaint)
    w.preview_updated.connect(lambda seq: shown.append((seq, time.perf_counter())))
    draws: list[tuple[float, float]] = []  # (start, end) of each canvas draw, GL work finished
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    draw_t0 = [0.0]

    def draw_first(event):
        draw_t0[0] = time.perf_counter()

    def draw_last(event):
        scene.context.finish()  # software GL: the pixels are done when glFinish returns
        draws.append((draw_t0[0], time.perf_counter()))

    flushed: list[float] = []  # when the widget has added its pending points to the prompts layer
    flush = w.flush_points

    def timed_flush():
        had = bool(w._pending_points)
        flush()
        if had:
            flushed.append(time.perf_counter())

    w.flush_points = timed_flush
    w._flush_timer.timeout.disconnect()
    w._flush_timer.timeout.connect(timed_flush)
    swaps: list[float] = []  # when Qt has composed a canvas frame into the window (QOpenGLWidget.frameSwapped)
    viewer.window._qt_viewer.canvas.native.frameSwapped.connect(lambda: swaps.append(time.perf_counter()))
    scene.events.draw.connect(draw_first, position="first")
    scene.events.draw.connect(draw_last, position="last")
    replies: list = []
    w.worker.delivered.connect(lambda r: replies.append(r) if r.group == "preview" else None)

    tick = QTimer()  # wakes the blocking wait below at least every 20 ms (for the timeout check)
    tick.start(20)

    def wait_for(cond, timeout=30.0):
        """Run the GUI event loop until cond() holds. Blocks between events as napari's own loop does (a polling
        loop here would take the CPU from the worker thread on this 2-core machine)."""
        t_end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > t_end:
                raise TimeoutError("no preview update")
            app.processEvents(QEventLoop.AllEvents | QEventLoop.WaitForMoreEvents)

    ready = []
    w.embedding_ready.connect(ready.append)
    viewer.add_image(img, name=f"bench-{backend}", rgb=True)
    wait_for(lambda: bool(ready), 120)
    for _ in range(20):
        app.processEvents()
    rng = np.random.default_rng(0)
    margin = args.size // 8

    def rand_rc():
        return rng.integers(margin, args.size - margin, 2).astype(float)

    out: dict[str, list] = {k: [] for k in ("click", "first", "handler", "queue", "predict", "update", "paint",
                                            "point_added", "hover", "hpredict", "dispatch", "screen", "compose")}

    def preview_time(n):
        """Time of the first non-empty preview update after the n-th, or None."""
        return next((t for seq, t in shown[n:] if seq), None)

    def screen_time(t):
        """For the first canvas draw that started after t: when Qt had composed that frame into the window (the
        mask is on screen), the draw's duration, and the composition's."""
        d = next(((a, b) for a, b in draws if a >= t), None)
        sw = None if d is None else next((x for x in swaps if x >= d[1]), None)
        return (None, None, None) if sw is None else (sw, d[1] - d[0], sw - d[1])

    def settle(ms=SETTLE_MS):
        """Let the GUI finish what the previous click left (repaints, napari's deferred updates), as it does
        between a person's clicks."""
        t_end = time.perf_counter() + ms / 1000
        while time.perf_counter() < t_end:
            app.processEvents(QEventLoop.AllEvents | QEventLoop.WaitForMoreEvents)

    def click(rc, button=1):
        settle()
        n, nr = len(shown), len(replies)
        t0 = time.perf_counter()
        mouse_press_callbacks(w.prompts, ReadOnlyWrapper(_Ev("mouse_press", rc, button), exceptions=("handled",)))
        out["handler"].append(time.perf_counter() - t0)
        wait_for(lambda: preview_time(n) is not None)
        t_shown = preview_time(n)
        dt = t_shown - t0
        r = replies[-1] if len(replies) > nr else None
        if r is not None:
            out["queue"].append(r.started - r.submitted)
            out["dispatch"].append(r.received - r.finished)
        nf = len(flushed)
        wait_for(lambda: not w._pending_points)  # the clicked point reaches the prompts layer after the preview
        out["point_added"].append((flushed[nf] if len(flushed) > nf else time.perf_counter()) - t0)
        wait_for(lambda: screen_time(t_shown)[0] is not None, 5.0)
        t_screen, d_paint, d_compose = screen_time(t_shown)
        out["screen"].append(t_screen - t0)
        out["paint"].append(d_paint)
        out["compose"].append(d_compose)
        mouse_release_callbacks(w.prompts, ReadOnlyWrapper(_Ev("mouse_release", rc), exceptions=("handled",)))
        return dt

    for _ in range(3):  # warm-up
        click(rand_rc())
        w.clear_prompts()
    for i in range(args.clicks):
        if i % 2 == 0:
            w.clear_prompts()  # a first click on a new object (3 candidates) ...
            rc = rand_rc()
            dt = click(rc)
            out["first"].append(dt)
        else:  # ... then a refining negative click next to it (previous mask fed back)
            dt = click(np.clip(rc + rng.integers(-40, 40, 2), 0, args.size - 1), button=2)
        out["click"].append(dt)
        out["predict"].append(w.timing["predict"])
        out["update"].append(w.timing["preview_update"])
    w.clear_prompts()
    app.processEvents()

    for _ in range(args.hovers):  # hover: one move at a time, each waited for (latency) ...
        rc = rand_rc()
        settle(50)
        n = len(shown)
        t0 = time.perf_counter()
        mouse_move_callbacks(w.prompts, ReadOnlyWrapper(_Ev("mouse_move", rc), exceptions=("handled",)))
        wait_for(lambda: preview_time(n) is not None)
        out["hover"].append(preview_time(n) - t0)
        out["hpredict"].append(w.timing["predict"])
    # ... and a continuous sweep at 125 mouse events per second for 3 s (throughput, with repaints)
    w.clear_prompts()
    n0, nd0 = len(shown), len(draws)
    path = [np.array([margin + (args.size - 2 * margin) * t / 375, args.size / 2 + 100 * np.sin(t / 20)])
            for t in range(375)]
    it = iter(path)
    timer = QTimer()
    t_start = [0.0]

    def step():
        rc = next(it, None)
        if rc is None or time.perf_counter() - t_start[0] > 3.0:  # 3 s of mouse movement at most
            timer.stop()
            return
        mouse_move_callbacks(w.prompts, ReadOnlyWrapper(_Ev("mouse_move", rc), exceptions=("handled",)))

    timer.timeout.connect(step)
    t_start[0] = time.perf_counter()
    timer.start(8)
    wait_for(lambda: not timer.isActive(), 60)
    sweep_s = time.perf_counter() - t_start[0]
    # the rendering ceiling: canvas frames per second with the same layers on screen and nothing to predict
    # (each redraw forced and waited for until Qt has composed it into the window)
    settle(200)
    n_frames, t_ceiling = 0, time.perf_counter()
    while time.perf_counter() - t_ceiling < 2.0:
        k = len(swaps)
        scene.update()
        wait_for(lambda: len(swaps) > k, 5.0)
        n_frames += 1
    ceiling = n_frames / (time.perf_counter() - t_ceiling)
    tick.stop()
    res = {k: np.asarray(v) * 1000.0 for k, v in out.items()}
    res["updates_per_s"] = (len([s for s, _ in shown[n0:] if s]) / sweep_s) if sweep_s else 0.0
    res["draws_per_s"] = (len([a for a, _ in draws[nd0:] if a - t_start[0] <= sweep_s]) / sweep_s) if sweep_s else 0.0
    res["swaps_per_s"] = (len([x for x in swaps if 0 <= x - t_start[0] <= sweep_s]) / sweep_s) if sweep_s else 0.0
    res["sweep_s"] = sweep_s
    res["ceiling_fps"] = ceiling
    res["weights"] = weights
    w.cleanup()
    viewer.window.remove_dock_widget(dock)
    viewer.layers.clear()
    app.processEvents()
    return res


ROWS = [
    ("click", "**click -> preview layer holds the mask**"),
    ("first", "  of which first clicks (3 candidates)"),
    ("handler", "  GUI thread: the click event handler (submits the prediction, returns)"),
    ("queue", "  worker: wait before the prediction starts"),
    ("predict", "  worker: prediction (decoder, zoom-in crop encoder + decoder when used, best mask upsampled)"),
    ("dispatch", "  worker -> GUI thread (Qt's queued signal waits for the GUI event loop)"),
    ("update", "  GUI thread: preview layer write + refresh"),
    ("point_added", "click -> its point is in the prompts layer (added after the preview)"),
    ("screen", "click -> mask on screen (the first canvas frame after the update, composed into the window)"),
    ("paint", "  that frame's draw (vispy draw + glFinish; Xvfb, Mesa software GL)"),
    ("compose", "  then Qt composing the GL frame into the window (software)"),
    ("hover", "**hover -> preview layer holds the mask**"),
    ("hpredict", "  worker: prediction"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=100)
    ap.add_argument("--hovers", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--backend", default=None,
                    help="comma-separated: torch, onnxruntime, onnxruntime int8, openvino bf16 (all measured in one "
                         "run; default: all that this CPU runs)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    from napari_ultratinysam.annotation import BACKENDS, default_backend

    if args.backend is None:
        backends = [b for b in ("openvino bf16", "onnxruntime int8", "onnxruntime", "torch")
                    if b != "openvino bf16" or default_backend() == "openvino bf16"]
    else:
        backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            raise SystemExit(f"--backend: unknown backend {b!r} ({', '.join(BACKENDS)})")

    _ensure_display()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    app = QApplication.instance()
    results = {b: _measure(viewer, app, args, b) for b in backends}
    weights = next(iter(results.values()))["weights"]

    lines = [
        f"`benchmarks/gui_latency.py` - {args.size}x{args.size} RGB image (coffee sample, resized), napari "
        f"{napari.__version__} window (1400x900) under Xvfb, predictor: {weights}, 1 thread; per backend "
        f"{args.clicks} clicks (alternating a first click and a refining negative click) and {args.hovers} hover "
        f"moves, backends measured one after the other in one run; {SETTLE_MS} ms of idle GUI before each click, "
        "50 ms before each single hover move.",
        "",
        f"Machine: {machine_line()}.",
        "",
        "| what (ms) | " + " | ".join(f"{b} p50 | p95" for b in backends) + " |",
        "|---|" + "---:|---:|" * len(backends),
    ]
    for key, name in ROWS:
        cells = []
        for b in backends:
            a = results[b][key]
            p50, p95 = p50_p95(a) if len(a) else (float("nan"), float("nan"))
            cells.append(f"{p50:.1f} | {p95:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| hover sweep: preview updates per second (mouse events every 8 ms for 3 s, repaints included) | "
                 + " | ".join(f"{results[b]['updates_per_s']:.0f} | " for b in backends) + " |")
    lines.append("| hover sweep: canvas frames on screen per second | "
                 + " | ".join(f"{results[b]['swaps_per_s']:.0f} | " for b in backends) + " |")
    lines.append("| rendering ceiling: frames per second with nothing to predict (the same layers, forced redraws "
                 "for 2 s) | " + " | ".join(f"{results[b]['ceiling_fps']:.0f} | " for b in backends) + " |")
    best = min(backends, key=lambda b: p50_p95(results[b]["click"])[0])
    c50 = p50_p95(results[best]["click"])[0]
    h50 = p50_p95(results[best]["hover"])[0]
    ups = results[best]["updates_per_s"]
    lines += [
        "",
        f"Targets, best backend ({best}): click-to-preview p50 <= {TARGET_MS:.0f} ms (issue 3) - measured "
        f"{c50:.1f} ms ({'met' if c50 <= TARGET_MS else 'missed'}); <= {TARGET_FAST_MS:.0f} ms (issue 9) - "
        f"{'met' if c50 <= TARGET_FAST_MS else 'missed'}; hover p50 {h50:.1f} ms, sweep {ups:.0f} updates/s "
        f"(target >= 30: {'met' if ups >= 30 else 'missed'}). The interval ends when the preview layer holds the "
        "mask (data written and layer refreshed, the widget's signal); the next rows time the canvas draw that puts "
        "it on screen here. "
        "The clicked point is added to the prompts layer right after its preview (napari's Points.add costs tens "
        "of ms of Python on the GUI thread), so the mask does not wait for it.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("GUI latency", table)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
