"""Screenshot of the annotator's IMX500 device-faithful preview: docs/images/annotator_imx500_preview.png.

    python docs/screenshot_imx500.py EXPORT_DIR      # a folder written by `utsam export-imx500 -o EXPORT_DIR`

Opens the chelsea sample in napari (under Xvfb when there is no display), loads the shipped weights and the
quantized IMX500 graph of EXPORT_DIR, clicks on the cat, and saves the window: the float preview (yellow) and the
quantized graph's mask as the camera would produce it (cyan outline), with its IoU against the float mask.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            raise SystemExit("no DISPLAY and no xvfb-run; install xvfb")
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", sys.executable, *sys.argv])
    import napari
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_ultratinysam.widgets.annotator import AnnotatorWidget
    from napari_ultratinysam.widgets.samples import load_sample

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1100)
    app = QApplication.instance()
    w = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(w, name="UltraTinySAM annotator", area="right")

    def wait(cond, timeout=120.0):
        t_end = time.time() + timeout
        while not cond():
            if time.time() > t_end:
                raise TimeoutError("timed out")
            app.processEvents()
            time.sleep(0.01)

    ready = []
    w.embedding_ready.connect(ready.append)
    img = load_sample("chelsea")[0][0]
    viewer.add_image(img, name="chelsea", rgb=True)
    wait(lambda: ready)
    w.hover_check.setChecked(False)
    w.device_edit.setText(sys.argv[1])
    w.device_check.setChecked(True)
    wait(lambda: w.device_session is not None or not w.device_check.isChecked())
    if w.device_session is None:
        raise SystemExit(f"IMX500 preview did not load: {w.device_label.text()}")
    shown = []
    w.device_updated.connect(shown.append)

    class Ev:
        def __init__(self, t, rc):
            self.type, self.position, self.button, self.modifiers = t, tuple(rc), 1, ()
            self.pos, self.is_dragging, self.handled = np.zeros(2), False, False

    rc = (img.shape[0] * 0.45, img.shape[1] * 0.45)  # the cat's face in chelsea
    mouse_press_callbacks(w.prompts, ReadOnlyWrapper(Ev("mouse_press", rc), exceptions=("handled",)))
    mouse_release_callbacks(w.prompts, ReadOnlyWrapper(Ev("mouse_release", rc), exceptions=("handled",)))
    wait(lambda: shown and not w.worker.is_busy())
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
    out = ROOT / "docs" / "images" / "annotator_imx500_preview.png"
    Image.fromarray(np.asarray(viewer.screenshot(canvas_only=False))[..., :3]).save(out)
    print(f"wrote {out}: {w.device_label.text()}")
    w.cleanup()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
