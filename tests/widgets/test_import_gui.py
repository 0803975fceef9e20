"""Project > Import labels (issue 22, item 2), driven through the annotator: an exported dataset of each format
comes back as a project whose objects are committed objects in the annotations layer, with the source's classes;
a bad source is one line in the Project section. Files are made in tmp_path; the predictor is conftest's fake."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.project import Project


def _labelled_project(tmp_path) -> Project:
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for k, shape in enumerate([(48, 64), (40, 56)]):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"im{k}.png")
    p = Project.create(tmp_path / "src", tmp_path / "imgs", classes=["cell", "nucleus"])
    for i in range(2):
        h, w = p.image_size(i)
        m = np.zeros((h, w), bool)
        m[4:20, 6:30] = True
        p.commit_object(i, m, 0)
        m = np.zeros((h, w), bool)
        m[24:36, 30:50] = True
        p.commit_object(i, m, 1)
    return p


def _widget(make_napari_viewer, FakePredictor):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    w = AnnotatorWidget(viewer, predictor=FakePredictor())
    viewer.window.add_dock_widget(w, name="UltraTinySAM", area="right")
    return viewer, w


@pytest.mark.parametrize("fmt,min_iou", [("camvid", 1.0), ("coco", 1.0), ("yolo", 0.9)])
def test_import_labels_from_the_project_section(make_napari_viewer, qtbot, tmp_path, FakePredictor, fmt, min_iou):
    src = _labelled_project(tmp_path)
    out = tmp_path / f"ds_{fmt}"
    export_dataset(src, out, ratios="1,0,0", format=fmt)
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        assert w.import_labels_btn.isEnabled() and w.project is None
        with qtbot.waitSignal(w.embedding_ready, timeout=30000):
            worker = w.import_labels(str(out), str(tmp_path / "imported"))
            assert worker is not None
        qtbot.waitUntil(lambda: w.import_labels_btn.isEnabled(), timeout=5000)
        p = w.project
        assert p is not None and p.folder == tmp_path / "imported" and not p.read_only
        assert [c.name for c in w.classes] == ["cell", "nucleus"]
        assert "2 / 2 annotated" in w.project_label.text()
        # the shown image's objects are in the annotations layer, with their classes, as after commits
        name = p.names[w.project_index]
        ids, classes, _ = src.get_annotation(src.names.index(name))
        shown = np.asarray(w.annotations.data)
        for k, c in classes.items():
            got = np.unique(shown[ids == k])
            assert len(got) == 1 and got[0] > 0
            new = int(got[0])
            iou = ((shown == new) & (ids == k)).sum() / ((shown == new) | (ids == k)).sum()
            assert iou >= min_iou
            assert w.model.object_class[new] == c
        # they are editable like any committed object: delete one through the widget, and it is saved
        w.select_object(new)
        w.delete_selected()
        w.flush_autosave()
        qtbot.waitUntil(lambda: not w.saver.is_busy(), timeout=5000)
        assert new not in p.get_annotation(w.project_index)[1]
    finally:
        w.cleanup()
        src.close()


def test_import_labels_bad_source_is_one_line(make_napari_viewer, qtbot, tmp_path, FakePredictor):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "ds" / "images" / "a.png")
    bad = tmp_path / "ds" / "masks" / "a.png"
    bad.write_bytes(b"not a png")
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        w.import_labels(str(tmp_path / "ds"), str(tmp_path / "imported"))
        assert not w.import_labels_btn.isEnabled()  # one import at a time
        assert w.import_labels(str(tmp_path / "ds"), str(tmp_path / "other")) is None
        qtbot.waitUntil(lambda: w.import_labels_btn.isEnabled(), timeout=30000)
        text = w.project_label.text()
        assert "import failed" in text and str(bad) in text and "\n" not in text
        assert w.project is None and not (tmp_path / "imported").exists()
    finally:
        w.cleanup()


def test_import_dialog_asks_for_masks_when_the_folder_is_plain_images(make_napari_viewer, qtbot, tmp_path,
                                                                      FakePredictor, monkeypatch):
    """A folder of images that is no dataset layout: the dialog asks for the masks folder, then the project."""
    from qtpy.QtWidgets import QFileDialog

    (tmp_path / "photos").mkdir()
    (tmp_path / "tool").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    Image.fromarray(m).save(tmp_path / "tool" / "a.png")
    answers = iter([str(tmp_path / "photos"), str(tmp_path / "tool"), str(tmp_path / "proj")])
    asked = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda parent, title, *a, **k: (asked.append(title), next(answers))[1]))
    viewer, w = _widget(make_napari_viewer, FakePredictor)
    try:
        with qtbot.waitSignal(w.embedding_ready, timeout=30000):
            w.import_labels_btn.click()
        assert len(asked) == 3 and "mask" in asked[1].lower()
        qtbot.waitUntil(lambda: w.project is not None, timeout=5000)
        assert [c.name for c in w.classes] == ["object"]
        np.testing.assert_array_equal(np.asarray(w.annotations.data) > 0, m > 0)
    finally:
        w.cleanup()
