"""The loop inside napari (issue 22): export a dataset from the annotator, one annotations layer per project,
backend changes that apply, progress bars that end full, a neutral default class list, a message for slow builds.

Everything is driven through the widgets with the fake predictor of conftest.py; projects and images are made in
tmp_path."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.annotation import (
    CAMVID_CLASSES,
    DatasetExportRequest,
    PredictorSpec,
    dataset_export_formats,
    model_status_text,
)

CAMVID = "CamVid (11 classes)"
CAR = [c.name for c in CAMVID_CLASSES].index("Car")


def _images(folder: Path, shapes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, shape in enumerate(shapes):
        img = np.full((*shape, 3), 30 + 40 * k, np.uint8)
        img[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 220
        Image.fromarray(img).save(folder / f"im{k}.png")
    return folder


def _widget(make_napari_viewer, FakePredictor, **kw):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    w = AnnotatorWidget(viewer, **({"predictor": FakePredictor()} | kw))
    viewer.window.add_dock_widget(w, name="UltraTinySAM", area="right")
    return viewer, w


def _go(qtbot, w, i):
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        w.go_to_image(i)


# ------------------------------------------------------------------------------------------- 1. export dataset


def test_export_dataset_from_the_project_section(make_napari_viewer, qtbot, tmp_path, FakePredictor, commit_at):
    """Project > Export dataset: after a class was added (the void index used to collide with it), the dialog
    exports off the GUI thread, its bar ends full, the folder is shown, the Fine-tune panel's dataset is set."""
    from napari_ultratinysam import read_dataset
    from napari_ultratinysam.widgets.finetune_panel import FinetunePanel

    viewer, w = _widget(make_napari_viewer, FakePredictor)
    panel = FinetunePanel(viewer)
    viewer.window.add_dock_widget(panel, name="Fine-tune", area="right")
    try:
        assert not w.export_dataset_btn.isEnabled()
        assert w.open_export_dialog() is None and "project" in w.project_label.text()
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", _images(tmp_path / "imgs", [(64, 80), (50, 70)]))
        assert w.export_dataset_btn.isEnabled()
        dog = w.add_class("dog")
        w.class_list.setCurrentRow(0)
        commit_at(w, 30, 40)
        _go(qtbot, w, 1)
        w.class_list.setCurrentRow(dog)
        commit_at(w, 20, 20)

        d = w.open_export_dialog()
        assert d.isVisible() and d.out_edit.text() == str(tmp_path / "proj_dataset")
        assert d.format_combo.currentData() == "camvid" and d.ratios_edit.text() == "0.8,0.1,0.1"
        out = tmp_path / "exported"
        d.out_edit.setText(str(out))
        d.ratios_edit.setText("1,0,0")
        with qtbot.waitSignal(d.exported, timeout=30000) as sig:
            assert d.start()
            assert d.is_running() and d.progress_bar.maximum() == 0  # busy while the worker exports
        assert sig.args[0] == str(out)
        qtbot.waitUntil(lambda: not d.is_running(), timeout=5000)
        assert d.progress_bar.value() == d.progress_bar.maximum() == 1
        assert str(out) in d.status_label.text() and d.open_btn.isEnabled()
        assert panel.dataset_edit.text() == str(out) and w.last_dataset_export == str(out)
        meta = json.loads((out / "dataset.json").read_text())
        assert meta["classes"] == ["object", "dog"] and meta["void_index"] >= 2
        ds = read_dataset(out, split="train")
        assert len(ds) == 2 and sorted(int(c) for i in range(2) for c in ds[i].class_ids) == [0, dog]
        # a Fine-tune panel opened afterwards starts from the same dataset
        assert FinetunePanel(viewer).dataset_edit.text() == str(out)
    finally:
        w.cleanup()


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_export_dataset_other_formats(make_napari_viewer, qtbot, tmp_path, FakePredictor, fmt, commit_at):
    if fmt not in dataset_export_formats():
        pytest.skip(f"the dataset export does not offer {fmt} yet")
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", _images(tmp_path / "imgs", [(64, 80)]))
        commit_at(w, 30, 40)
        d = w.open_export_dialog()
        d.format_combo.setCurrentIndex(d.format_combo.findData(fmt))
        out = tmp_path / fmt
        d.out_edit.setText(str(out))
        d.ratios_edit.setText("1,0,0")
        with qtbot.waitSignal(d.exported, timeout=30000):
            assert d.start()
        qtbot.waitUntil(lambda: not d.is_running(), timeout=5000)
        assert d.progress_bar.value() == d.progress_bar.maximum()
        if fmt == "coco":
            coco = json.loads((out / "annotations" / "instances_train.json").read_text())
            assert len(coco["images"]) == 1 and len(coco["annotations"]) == 1
            assert [c["name"] for c in coco["categories"]] == ["object"]
        else:
            lines = (out / "labels" / "train" / "im0.txt").read_text().split("\n")
            assert len([ln for ln in lines if ln.strip()]) == 1 and lines[0].split()[0] == "0"
        # not a CamVid-style folder: the Fine-tune dataset is left alone
        assert w.last_dataset_export is None
    finally:
        w.cleanup()


def test_export_dialog_bad_form_is_one_line(make_napari_viewer, qtbot, tmp_path, FakePredictor, commit_at):
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", _images(tmp_path / "imgs", [(64, 80)]))
        d = w.open_export_dialog()
        d.out_edit.setText("")
        assert not d.start() and "output folder" in d.status_label.text()
        d.out_edit.setText(str(tmp_path / "out"))
        d.ratios_edit.setText("0.8,x,0.1")
        assert not d.start() and "split ratios" in d.status_label.text()
        assert not d.is_running() and not (tmp_path / "out").exists()
        # an export that fails in the worker (a non-empty foreign folder) reports one line and can be retried
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "notes.txt").write_text("mine")
        d.out_edit.setText(str(tmp_path / "busy"))
        d.ratios_edit.setText("0.8,0.1,0.1")
        commit_at(w, 30, 40)
        with qtbot.waitSignal(d.failed, timeout=30000) as sig:
            assert d.start()
        assert "busy" in sig.args[0] and "\n" not in sig.args[0]
        qtbot.waitUntil(lambda: not d.is_running(), timeout=5000)
        assert "export failed" in d.status_label.text() and d.export_btn.isEnabled()
    finally:
        w.cleanup()


def test_dataset_export_request_checks_the_form():
    r = DatasetExportRequest.from_form(" /tmp/x ", "0.7, 0.2, 0.1", "camvid")
    assert r.out == "/tmp/x" and r.ratios == (0.7, 0.2, 0.1) and r.format == "camvid"
    with pytest.raises(ValueError, match="format"):
        DatasetExportRequest.from_form("/tmp/x", "1,0,0", "coco", formats=("camvid",))
    with pytest.raises(ValueError, match="split ratios"):
        DatasetExportRequest.from_form("/tmp/x", "1,0", "camvid")


# ------------------------------------------------------------------------- 2. one annotations layer per project


def test_one_annotations_layer_per_project_of_mixed_sizes(make_napari_viewer, qtbot, tmp_path, FakePredictor,
                                                         commit_at):
    from napari.layers import Labels

    shapes = [(64, 80), (50, 70), (90, 40)]
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", _images(tmp_path / "imgs", shapes))
        layer = w.annotations
        oid = None
        for i in (0, 1, 2, 1, 0, 2, 1):
            if w.project_index != i:
                _go(qtbot, w, i)
            labels = [l for l in viewer.layers if isinstance(l, Labels) and l.name.startswith("annotations")]
            assert labels == [layer] and w.annotations is layer, f"image {i}: {[l.name for l in labels]}"
            assert layer.data.shape == shapes[i] and w.preview.data.shape == shapes[i]
            for name in ("preview", "prompts", "box", "project image"):
                assert [l.name for l in viewer.layers].count(name) == 1
            assert len(viewer.layers) == 5
            if i == 1 and oid is None:
                oid = commit_at(w, 25, 35)
            # each image shows its own objects only
            assert (layer.data == oid).any() == (i == 1 and oid is not None)
        # clicks still land on the right image after all the switching
        commit_at(w, 10, 10)
        w.flush_autosave()
        assert int(layer.data.max()) == 2 and w.model.object_class.keys() == {1, 2}
    finally:
        w.cleanup()


# --------------------------------------------------------------------------------------- 3. backend changes


def _recording_loader(FakePredictor, fail_on=()):
    specs = []

    def loader(spec):
        specs.append(spec)
        if spec.backend in fail_on:
            raise RuntimeError(f"{spec.backend} cannot run here")
        return FakePredictor()

    return specs, loader


def test_backend_change_reloads_at_once(annotator, qtbot, FakePredictor):
    specs, loader = _recording_loader(FakePredictor, fail_on=("openvino bf16",))
    viewer, w = annotator(loader=loader)
    assert "given by the caller" in w.model_label.text()
    w.backend_combo.setCurrentText("onnxruntime int8")
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        pass  # the new model loaded off the GUI thread, then the image embedded again
    assert [s.backend for s in specs] == ["onnxruntime int8"]
    assert w.session.loaded_spec.backend == "onnxruntime int8" and w.session.predictor.calls == []
    assert "in use: default weights (onnxruntime int8)" in w.model_label.text()
    # a change that cannot load yet (a checkpoint without its path): the label says what is still in use
    w.source_combo.setCurrentIndex(w.source_combo.findData("checkpoint"))
    w.backend_combo.setCurrentText("torch")
    qtbot.wait(50)
    assert len(specs) == 1
    text = w.model_label.text()
    assert "in use: default weights (onnxruntime int8)" in text and "press Load model" in text
    # a backend that fails to load: the combo goes back to the one in use, which the label names
    w.source_combo.setCurrentIndex(w.source_combo.findData("default"))
    with qtbot.waitSignal(w.worker.delivered, timeout=5000):
        w.backend_combo.setCurrentText("openvino bf16")
    assert specs[-1].backend == "openvino bf16" and w.session.loaded_spec.backend == "onnxruntime int8"
    assert w.backend_combo.currentText() == "onnxruntime int8"
    assert "cannot run here" in w.model_label.text() and "still in use: default weights (onnxruntime int8)" \
        in w.model_label.text()


def test_backend_chosen_before_first_use_is_the_one_loaded(make_napari_viewer, qtbot, FakePredictor):
    specs, loader = _recording_loader(FakePredictor)
    viewer, w = _widget(make_napari_viewer, FakePredictor, predictor=None, loader=loader)
    try:
        assert "loaded on first use" in w.model_label.text()
        w.backend_combo.setCurrentText("torch")
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
        qtbot.waitUntil(lambda: not w.worker.is_busy(), timeout=5000)
        assert specs and {s.backend for s in specs} == {"torch"}
        assert "in use: default weights (torch)" in w.model_label.text()
    finally:
        w.cleanup()


def test_model_status_text():
    a, b = PredictorSpec("default", "", "onnxruntime"), PredictorSpec("default", "", "torch")
    assert model_status_text(a, a) == "in use: default weights (onnxruntime)"
    assert "press Load model for default weights (torch)" in model_status_text(a, b)
    assert model_status_text(None, b) == "default weights (torch): loaded on first use"
    assert model_status_text(None, b, given=True) == "in use: a predictor given by the caller"
    assert PredictorSpec("checkpoint", " ", "torch").loadable is False and b.loadable


# ------------------------------------------------------------------------------------- 4. progress bars end full


class _FakeJob:
    """FinetuneJob's interface with scripted messages."""

    def __init__(self, batches, out: Path):
        self.batches = list(batches)
        self.history, self.summary, self.error, self.out = [], None, None, out

    def poll(self):
        msgs = self.batches.pop(0) if self.batches else []
        for m in msgs:
            if m[0] == "progress":
                self.history.append(m[1])
            elif m[0] == "done":
                self.summary = m[1]
        return msgs

    @property
    def finished(self):
        return self.summary is not None or self.error is not None

    def best_checkpoint(self):
        return self.out / "best.safetensors"

    def cancel(self):
        pass


@pytest.mark.parametrize("stopped_by,expect", [("steps", 300), ("time budget", 300), ("stopped", 120)])
def test_finetune_progress_ends_full_on_done(make_napari_viewer, tmp_path, stopped_by, expect):
    from napari_ultratinysam.widgets.finetune_panel import FinetunePanel

    panel = FinetunePanel(make_napari_viewer())
    panel.progress.setRange(0, 300)
    steps = 300 if stopped_by != "stopped" else 120
    summary = {"steps": steps, "total_steps": 300, "stopped_by": stopped_by, "best": str(tmp_path / "b")}
    panel.job = _FakeJob([
        [("progress", {"event": "train", "total": 300, "step": 100, "loss": 0.5})],
        [("progress", {"event": "val", "step": steps, "total": 300, "val_loss": 0.4}),
         ("progress", {"event": "done", **summary}), ("done", summary)],
    ], tmp_path)
    panel.poll()
    assert panel.progress.value() == 100 and "step 100" in panel.status.text()
    panel.poll()
    assert panel.progress.value() == expect
    assert panel.status.text().startswith("done") and panel.start_btn.isEnabled()


def test_finetune_progress_step():
    from napari_ultratinysam.training.job import progress_step

    assert progress_step({"event": "train", "step": 7}, 10) == 7
    assert progress_step({"event": "done", "steps": 10, "stopped_by": "steps"}, 10) == 10
    assert progress_step({"event": "done", "steps": 4, "stopped_by": "stopped"}, 10) == 4
    assert progress_step({"event": "val", "val_loss": 1.0}, 10) is None


# --------------------------------------------------------------------------------------- 5. default classes


def test_default_class_is_object_and_camvid_a_preset(make_napari_viewer, qtbot, tmp_path, FakePredictor, commit_at):

    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        assert [w.class_list.item(i).text() for i in range(w.class_list.count())] == ["object"]
        assert w.current_class() == 0 and w.class_list.currentRow() == 0
        assert w.preset_combo.findText(CAMVID) >= 0
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.new_project(tmp_path / "proj", _images(tmp_path / "imgs", [(64, 80)]))
        assert w.project.classes == ["object"]
        w.preset_combo.setCurrentText(CAMVID)
        w.preset_btn.click()
        assert w.class_list.count() == 11 and w.project.classes == [c.name for c in CAMVID_CLASSES]
        w.class_list.setCurrentRow(CAR)
        commit_at(w, 30, 40)
        # back to "object" is refused while a Car exists; nothing changes
        assert not w.apply_class_preset("object")
        assert "still used" in w.status_label.text() and w.class_list.count() == 11
        assert len(w.project.classes) == 11
        assert not w.apply_class_preset("nonsense") and "class preset" in w.status_label.text()
    finally:
        w.cleanup()


def test_project_without_classes_starts_with_object(make_napari_viewer, qtbot, tmp_path, FakePredictor, commit_at):
    from napari_ultratinysam.data.project import Project

    proj = Project.create(tmp_path / "proj", _images(tmp_path / "imgs", [(64, 80)]), classes=[])
    if hasattr(proj, "close"):  # the annotator opens it as the one writer
        proj.close()
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=5000):
            assert w.open_project(tmp_path / "proj")
        assert [w.class_list.item(i).text() for i in range(w.class_list.count())] == ["object"]
        assert w.class_list.currentRow() == 0 and w.project.classes == ["object"]
        oid = commit_at(w, 30, 40)
        assert w.model.class_name(oid) == "object"
    finally:
        w.cleanup()


# -------------------------------------------------------------------------------- 6. slow model builds are said


def test_slow_model_build_shows_a_message(annotator, qtbot, FakePredictor, monkeypatch):
    notices = []
    monkeypatch.setattr("napari.utils.notifications.show_info", lambda msg: notices.append(msg))
    release = threading.Event()

    def loader(spec):
        assert release.wait(10)
        return FakePredictor()

    viewer, w = annotator(loader=loader)
    w.slow_notice_ms = 20
    w.backend_combo.setCurrentText("onnxruntime int8")
    qtbot.waitUntil(lambda: "building" in w.model_label.text(), timeout=5000)
    assert notices and "onnxruntime int8" in notices[0] and w._slow_progress is not None
    assert w.busy_bar.isVisibleTo(w)
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        release.set()
    qtbot.waitUntil(lambda: not w.worker.is_busy(), timeout=5000)
    assert w._slow_progress is None and "in use: default weights (onnxruntime int8)" in w.model_label.text()
    assert len(notices) == 1


def test_fast_model_build_shows_no_message(annotator, qtbot, FakePredictor, monkeypatch):
    notices = []
    monkeypatch.setattr("napari.utils.notifications.show_info", lambda msg: notices.append(msg))
    viewer, w = annotator(loader=lambda spec: FakePredictor())
    w.slow_notice_ms = 60000  # never reached by a load that returns at once
    with qtbot.waitSignal(w.embedding_ready, timeout=5000):
        w.backend_combo.setCurrentText("torch")
    assert not notices and "building" not in w.model_label.text() and w._slow_progress is None
