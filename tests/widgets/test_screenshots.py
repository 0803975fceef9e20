"""Rendering under Xvfb (pytest-xvfb; never QT_QPA_PLATFORM=offscreen, which renders a black canvas).

Always checks that the canvas is not blank. With UTSAM_SCREENSHOTS=1 it also writes
docs/images/annotator_docked.png and docs/images/annotator_multi_object.png. The masks come from the shipped
default weights when napari_ultratinysam/weights/ultratinysam.safetensors exists, else from the sample's reference
masks (an oracle behind the Predictor interface), so the pictures show the tool's real layers, colours and widget
either way.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_ultratinysam.widgets.samples import load_sample

ROOT = Path(__file__).resolve().parents[2]
SAVE = os.environ.get("UTSAM_SCREENSHOTS") == "1"


def _save(img: np.ndarray, name: str):
    if SAVE:
        from PIL import Image

        out = ROOT / "docs" / "images" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)[..., :3]).save(out)


def _predictor(instances, OraclePredictor):
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        from napari_ultratinysam.inference.predictor import Predictor

        return Predictor.from_default()
    return OraclePredictor(instances)


def _not_blank(shot: np.ndarray):
    rgb = np.asarray(shot)[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb[::97], axis=0)) > 1 and rgb.std() > 5


def _press(widget, rc, button=1):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    class Ev:
        def __init__(self, t):
            self.type, self.position, self.button, self.modifiers = t, tuple(rc), button, ()
            self.pos, self.is_dragging, self.handled = np.zeros(2), False, False

    mouse_press_callbacks(widget.prompts, ReadOnlyWrapper(Ev("mouse_press"), exceptions=("handled",)))
    mouse_release_callbacks(widget.prompts, ReadOnlyWrapper(Ev("mouse_release"), exceptions=("handled",)))


def _viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1200)
    return viewer


def test_screenshot_docked(make_napari_viewer, qtbot, OraclePredictor):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = _viewer(make_napari_viewer)
    (img, _, _), (inst, _, _) = load_sample("coins")
    w = AnnotatorWidget(viewer, predictor=_predictor(inst, OraclePredictor))
    viewer.window.add_dock_widget(w, name="UltraTinySAM annotator", area="right")
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=60000):
            viewer.add_image(img, name="coins")
        ys, xs = np.nonzero(inst == 10)
        with qtbot.waitSignal(w.preview_updated, timeout=30000):
            _press(w, (int(ys.mean()), int(xs.mean())))  # one click on a coin
        qtbot.waitUntil(lambda: not w.worker.is_busy("preview"), timeout=30000)  # and its zoom-in stage
        viewer.reset_view()
        qtbot.wait(300)
        shot = viewer.screenshot(canvas_only=False)
        _not_blank(shot)
        canvas = viewer.screenshot(canvas_only=True)
        _not_blank(canvas)
        _save(shot, "annotator_docked.png")
    finally:
        w.cleanup()


def test_screenshot_multi_object(make_napari_viewer, qtbot, OraclePredictor):
    from napari_ultratinysam.annotation import CAMVID_CLASSES
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    names = [c.name for c in CAMVID_CLASSES]
    viewer = _viewer(make_napari_viewer)
    (img, _, _), (inst, _, _) = load_sample("shapes")
    w = AnnotatorWidget(viewer, predictor=_predictor(inst, OraclePredictor))
    viewer.window.add_dock_widget(w, name="UltraTinySAM annotator", area="right")
    try:
        assert w.apply_class_preset("CamVid (11 classes)")
        with qtbot.waitSignal(w.embedding_ready, timeout=60000):
            viewer.add_image(img, name="shapes", rgb=True)
        w.hover_check.setChecked(False)
        plan = {1: "Car", 2: "Building", 3: "Pedestrian", 4: "SignSymbol"}
        for oid, cls in plan.items():
            ys, xs = np.nonzero(inst == oid)
            k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
            w.class_list.setCurrentRow(names.index(cls))
            with qtbot.waitSignal(w.preview_updated, timeout=30000):
                _press(w, (ys[k], xs[k]))
            assert w.commit() is not None
        assert sorted(w.model.object_class.values()) == sorted(names.index(c) for c in plan.values())
        assert len(np.unique(w.annotations.data)) == 5
        viewer.layers["annotations"].opacity = 0.6
        viewer.reset_view()
        qtbot.wait(300)
        shot = viewer.screenshot(canvas_only=False)
        _not_blank(shot)
        canvas = np.asarray(viewer.screenshot(canvas_only=True))[..., :3]
        # the class colours are on the canvas (blended with the image, so look for the hue, not exact values)
        assert len(np.unique(canvas.reshape(-1, 3)[::13], axis=0)) > 20
        _save(shot, "annotator_multi_object.png")
    finally:
        w.cleanup()


def _qimage_to_array(qimg) -> np.ndarray:
    from qtpy.QtGui import QImage

    qimg = qimg.convertToFormat(QImage.Format_RGBA8888)
    ptr = qimg.constBits()
    ptr.setsize(qimg.sizeInBytes())
    return np.frombuffer(ptr, np.uint8).reshape(qimg.height(), qimg.bytesPerLine() // 4, 4)[:, :qimg.width()].copy()


def test_screenshot_export_dialog(make_napari_viewer, qtbot, tmp_path, OraclePredictor):
    """The annotator on a project with its Export dataset dialog open after an export (the dialog is its own
    window: it is drawn onto the window's picture where it opens). UTSAM_SCREENSHOTS=1 writes
    docs/images/annotator_export_dialog.png."""
    from PIL import Image

    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = _viewer(make_napari_viewer)
    (img, _, _), (inst, _, _) = load_sample("coins")
    imgs = tmp_path / "images"
    imgs.mkdir()
    Image.fromarray(np.asarray(img)).save(imgs / "coins.png")
    w = AnnotatorWidget(viewer, predictor=OraclePredictor(inst))
    viewer.window.add_dock_widget(w, name="UltraTinySAM annotator", area="right")
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=60000):
            assert w.new_project(tmp_path / "coins_project", imgs)
        w.hover_check.setChecked(False)
        for oid in (3, 10, 17):
            ys, xs = np.nonzero(inst == oid)
            with qtbot.waitSignal(w.preview_updated, timeout=30000):
                _press(w, (int(ys.mean()), int(xs.mean())))
            assert w.commit() is not None
        d = w.open_export_dialog()
        with qtbot.waitSignal(d.exported, timeout=60000):
            d.start()
        qtbot.waitUntil(lambda: not d.is_running(), timeout=10000)
        viewer.reset_view()
        qtbot.wait(300)
        shot = np.asarray(viewer.screenshot(canvas_only=False))[..., :3].copy()
        _not_blank(shot)
        dlg = _qimage_to_array(d.grab().toImage())[..., :3]
        _not_blank(dlg)
        h, w_ = dlg.shape[:2]
        y0, x0 = 60, 40  # over the canvas, as a dialog opens over the main window
        h, w_ = min(h, shot.shape[0] - y0), min(w_, shot.shape[1] - x0)
        shot[y0:y0 + h, x0:x0 + w_] = dlg[:h, :w_]
        _save(shot, "annotator_export_dialog.png")
    finally:
        w.cleanup()
