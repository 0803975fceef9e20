"""The README walkthrough, played through the real widgets: one screenshot per step (docs/images/walkthrough_*).

    python docs/screenshot_walkthrough.py WORK_DIR [--steps 30] [--no-imx500]

WORK_DIR (new or empty) receives the images, the project, the exported dataset, the fine-tune run and the IMX500
export. The script opens napari (under Xvfb when there is no display) with the annotator and the shipped weights,
and plays the user:

1. a project from a folder of four sample images (Project > New from images);
2. Propose objects on the coins image;
3. corrects the proposals: N on each proposal that matches no coin, Shift+Y for the rest (class "coin"), a box
   on a coin the proposals missed or cut (the yellow preview), C; then the same on the shapes image (class
   "shape"). The samples' reference masks stand in for the user's eye (which proposal is right); every action goes
   through the widget's own methods. Coffee and chelsea stay unannotated;
4. Project > Export dataset (CamVid-style: the two annotated images);
5. the Fine-tune panel on that export (``--steps`` steps on the CPU), then "Use in annotator";
6. the Export to IMX500 panel on the fine-tuned checkpoint (PTQ, 32 calibration images; minutes: the converter
   runs on the CPU), unless ``--no-imx500``.
Screenshots larger than ~300 KB are stored with a 256-colour palette.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
MAX_BYTES = 300_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, metavar="WORK_DIR")
    ap.add_argument("--steps", type=int, default=30, help="fine-tuning steps (default 30)")
    ap.add_argument("--no-imx500", action="store_true", help="skip the IMX500 export (step 6)")
    args = ap.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"WORK_DIR {args.work}: must be new or empty")
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            raise SystemExit("no DISPLAY and no xvfb-run; install xvfb")
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", sys.executable, *sys.argv])
    import napari
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QImage
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_ultratinysam.core.paths import sample_path
    from napari_ultratinysam.inference.segment_all import recall_at
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget
    from napari_ultratinysam.widgets.export_panel import ExportPanel
    from napari_ultratinysam.widgets.finetune_panel import FinetunePanel

    work = args.work.resolve()
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("coins.png", "shapes.png", "coffee.jpg", "chelsea.jpg"), start=1):
        shutil.copy(sample_path(name), images / f"{i}_{name}")
    refs = {0: np.asarray(Image.open(sample_path("coins_instances.png"))),
            1: np.asarray(Image.open(sample_path("shapes_instances.png")))}

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1200)
    w = AnnotatorWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="UltraTinySAM annotator", area="right")
    viewer.window._qt_window.resizeDocks([dock], [560], Qt.Horizontal)  # more room for the canvas
    scroll = w.findChild(QScrollArea)

    def pump(seconds=0.3):
        t_end = time.time() + seconds
        while time.time() < t_end:
            app.processEvents()
            time.sleep(0.01)

    def wait(cond, what, timeout=600.0):
        t_end = time.time() + timeout
        while not cond():
            if time.time() > t_end:
                raise TimeoutError(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.01)

    def save(shot, name):
        img = Image.fromarray(np.asarray(shot)[..., :3].copy())
        path = OUT / name
        img.save(path, optimize=True)
        if path.stat().st_size > MAX_BYTES:
            img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        print(f"{path}: {path.stat().st_size // 1000} KB", flush=True)

    def screenshot(name, over=None, bottom=False):
        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # napari's pop-ups would cover the canvas
        bar = scroll.verticalScrollBar()
        bar.setValue(bar.maximum() if bottom else 0)  # the Project section is at the bottom
        viewer.reset_view()
        pump()
        shot = np.asarray(viewer.screenshot(canvas_only=False))[..., :3].copy()
        if over is not None:  # a dialog is its own window: drawn where it opens, over the canvas
            q = over.grab().toImage().convertToFormat(QImage.Format_RGBA8888)
            ptr = q.constBits()
            ptr.setsize(q.sizeInBytes())
            dlg = np.frombuffer(ptr, np.uint8).reshape(q.height(), q.bytesPerLine() // 4, 4)[:, :q.width(), :3]
            h, ww = min(dlg.shape[0], shot.shape[0] - 60), min(dlg.shape[1], shot.shape[1] - 40)
            shot[60:60 + h, 40:40 + ww] = dlg[:h, :ww]
        save(shot, name)

    embedded = []
    w.embedding_ready.connect(embedded.append)

    def propose():
        seen = []
        w.proposals_updated.connect(seen.append)
        w.propose_btn.click()
        wait(lambda: seen and not w.worker.is_busy("propose"), "proposals")
        w.proposals_updated.disconnect(seen.append)

    def matches(ref):
        """Proposal ids -> whether they match a reference object (IoU >= 0.5), and the objects none matches."""
        ps = w.proposal_set
        good, covered = set(), set()
        for oid in range(1, int(ref.max()) + 1):
            g = ref == oid
            for pid in ps.ids:
                m = ps.labels == pid
                if (g & m).sum() / (g | m).sum() >= 0.5:
                    good.add(pid)
                    covered.add(oid)
        return good, [oid for oid in range(1, int(ref.max()) + 1) if oid not in covered]

    def correct(ref, class_index):
        w.class_list.setCurrentRow(class_index)
        good, missed = matches(ref)
        for pid in [p for p in w.proposal_set.ids if p not in good]:
            w.reject_proposal(pid)
        return w.accept_all_proposals(), missed

    def box_and_commit(ref, oid):
        ys, xs = np.nonzero(ref == oid)
        shown = []
        w.preview_updated.connect(shown.append)
        w.set_box(xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1)
        wait(lambda: shown and not w.worker.is_busy("preview"), "the box's preview")
        w.preview_updated.disconnect(shown.append)

    # 1. a project from a folder of images
    w.rename_class(0, "coin")
    w.add_class("shape")
    w.add_class("object")
    w.hover_check.setChecked(False)
    w.new_project(work / "project", images)
    wait(lambda: embedded, "the first embedding", timeout=900)
    screenshot("walkthrough_1_project.png", bottom=True)

    # 2. propose every object of the coins image
    propose()
    n = len(w.proposal_set)
    print(f"coins: {n} proposals, {recall_at(w.proposal_set.labels, [refs[0] == i for i in range(1, 25)])[0]} "
          "of 24 coins at IoU >= 0.5", flush=True)
    screenshot("walkthrough_2_propose.png")

    # 3. correct: reject the wrong ones, accept the rest as coins, box a coin the proposals missed or cut
    _, missed = matches(refs[0])
    if not missed:  # every coin was found: correct the one its proposal fits worst, to show the step
        ps = w.proposal_set
        fit = {oid: max(((refs[0] == oid) & (ps.labels == p)).sum() / ((refs[0] == oid) | (ps.labels == p)).sum()
                        for p in ps.ids) for oid in range(1, 25)}
        missed = [min(fit, key=fit.get)]
        ys, xs = np.nonzero(refs[0] == missed[0])
        w.reject_proposal(w.proposal_at(ys.mean(), xs.mean()))
    accepted, _ = correct(refs[0], 0)
    for oid in missed[1:]:
        box_and_commit(refs[0], oid)
        w.commit()
    box_and_commit(refs[0], missed[0])
    print(f"coins: {len(accepted)} proposals accepted, {len(missed)} coin(s) boxed", flush=True)
    screenshot("walkthrough_3_correct.png")
    w.commit()
    k = len(embedded)
    w.go_to_image(1)
    wait(lambda: len(embedded) > k, "an embedding")
    propose()
    accepted, missed = correct(refs[1], 1)
    for oid in missed:
        box_and_commit(refs[1], oid)
        w.commit()
    print(f"shapes: {len(accepted)} proposals accepted, {len(missed)} shape(s) boxed", flush=True)
    w.go_to_image(0)
    w.flush_autosave()

    # 4. export the dataset
    d = w.open_export_dialog()
    done = []
    d.exported.connect(lambda out, summary: done.append(out))
    d.start()
    wait(lambda: done and not d.is_running(), "the dataset export")
    screenshot("walkthrough_4_export.png", over=d, bottom=True)
    d.close()

    # 5. fine-tune on it, then use the new weights in the annotator
    ft = FinetunePanel(viewer)
    viewer.window.add_dock_widget(ft, name="UltraTinySAM fine-tune", area="right", tabify=True).raise_()
    assert ft.dataset_edit.text() == done[0], "the Fine-tune panel starts from the export"
    ft.steps_spin.setValue(args.steps)
    if not ft.start():
        raise SystemExit(f"fine-tuning did not start: {ft.status.text()}")
    wait(lambda: ft.job is not None and ft.job.finished, "fine-tuning", timeout=3600)
    if ft.job.error:
        raise SystemExit(f"fine-tuning failed: {ft.job.error}")
    ft.poll()
    ft.use_in_annotator()
    wait(lambda: not w.worker.is_busy(), "the annotator's new weights", timeout=900)
    pump(1.0)
    screenshot("walkthrough_5_finetune.png")
    ckpt = ft.job.best_checkpoint()

    # 6. export the fine-tuned model to the IMX500
    if not args.no_imx500:
        ex = ExportPanel(viewer)
        viewer.window.add_dock_widget(ex, name="UltraTinySAM export to IMX500", area="right", tabify=True).raise_()
        ex.checkpoint_edit.setText(str(ckpt))
        ex.calib_edit.setText(done[0])
        ex.images_spin.setValue(32)
        ex.out_edit.setText(str(work / "imx500"))
        if not ex.start():
            raise SystemExit(f"IMX500 export did not start: {ex.status_label.text()}")
        wait(lambda: not ex.is_running(), "the IMX500 export", timeout=7200)
        pump(1.0)
        print(f"IMX500: {ex.status_label.text()} {ex.result_label.text()}", flush=True)
        screenshot("walkthrough_6_imx500.png")
    w.cleanup()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
