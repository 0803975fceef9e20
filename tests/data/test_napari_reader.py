"""The npe2 reader claims only our own files (project.json, an exported dataset.json, folders holding one) and
leaves every other file to napari; opening a project docks the annotator on it; the labels writer saves a PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.core.paths import SAMPLE_DIR
from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.napari_reader import claim, get_reader, write_labels
from napari_ultratinysam.data.project import Project

PLUGIN = "napari-ultratinysam"


class _StubPredictor:
    """Enough of the Predictor interface for the annotator to embed an image (no model is loaded)."""

    def has_image(self, key) -> bool:
        return False

    def set_image(self, image, key=None) -> None:
        self.shape = np.asarray(image).shape


@pytest.fixture
def no_model(monkeypatch):
    """The docked annotator would load the shipped model on first use; a stub keeps these tests light."""
    from napari_ultratinysam.inference.predictor import Predictor

    monkeypatch.setattr(Predictor, "from_default", classmethod(lambda cls, **kw: _StubPredictor()))


def _close(project) -> None:
    close = getattr(project, "close", None)  # releases the project's lock where it has one
    if close is not None:
        close()


@pytest.fixture
def project_folder(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (24 + k, 32, 3), dtype=np.uint8)).save(images / f"im{k}.png")
    p = Project.create(tmp_path / "proj", images, classes=["cell", "debris"], colors=[(255, 0, 0), (0, 255, 0)])
    m = np.zeros((24, 32), bool)
    m[4:12, 5:15] = True
    p.commit_object(0, m, 1)
    m2 = np.zeros((25, 32), bool)
    m2[10:20, 8:20] = True
    p.commit_object(1, m2, 0)
    folder = p.folder
    _close(p)
    return folder


@pytest.fixture
def dataset_folder(project_folder, tmp_path):
    p = Project.open(project_folder)
    try:
        export_dataset(p, tmp_path / "export", ratios=(1, 0, 0))
    finally:
        _close(p)
    out = tmp_path / "export"
    assert (out / "class_dict.csv").is_file() and (out / "dataset.json").is_file()
    return out


def test_claims_only_our_files(tmp_path, project_folder, dataset_folder):
    png = SAMPLE_DIR / "coins.png"
    assert get_reader(str(png)) is None and get_reader(str(dataset_folder / "class_dict.csv")) is None
    assert get_reader(str(tmp_path)) is None  # a plain folder
    assert claim(str(project_folder)) == ("project", project_folder)
    assert claim(str(project_folder / "project.json")) == ("project", project_folder)
    assert claim(str(dataset_folder)) == ("dataset", dataset_folder)
    assert claim([str(dataset_folder / "dataset.json")]) == ("dataset", dataset_folder)
    # someone else's dataset.json / project.json (nnU-Net writes dataset.json, for one) is not ours
    other = tmp_path / "nnunet"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}))
    (other / "project.json").write_text("{not json")
    assert get_reader(str(other)) is None and get_reader(str(other / "dataset.json")) is None
    assert get_reader(str(other / "project.json")) is None
    # a shard index or a CamVid folder is a training input, not something to open in napari
    (tmp_path / "camvid" / "train").mkdir(parents=True)
    (tmp_path / "camvid" / "train.txt").write_text("a.png\n")
    assert get_reader(str(tmp_path / "camvid")) is None


def test_manifest_patterns_leave_images_to_napari():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    for name in ("coins.png", "x.tif", "class_dict.csv", "x.json"):
        assert PLUGIN not in {r.plugin_name for r in pm.iter_compatible_readers([name])}, name
    for name in ("project.json", "dataset.json"):
        assert {r.plugin_name for r in pm.iter_compatible_readers([name])} == {PLUGIN}, name


def test_viewer_opens_a_png_with_napari_own_reader(make_napari_viewer):
    viewer = make_napari_viewer()
    # plugin=None is what `napari FILE` and File > Open do: with two candidate readers they raise
    # MultipleReaderError (the "Choose reader" dialog in the GUI); the reader claimed every file before
    layers = viewer.open(str(SAMPLE_DIR / "coins.png"), plugin=None)
    assert [l.name for l in layers] == ["coins"] and layers[0].data.shape == (303, 384)


def test_viewer_opens_an_exported_dataset(make_napari_viewer, dataset_folder):
    viewer = make_napari_viewer()
    layers = viewer.open(str(dataset_folder / "dataset.json"), plugin=None)  # as `napari .../dataset.json` does
    assert [type(l).__name__ for l in layers] == ["Image", "Labels", "Labels"]
    images, inst, classes = (l.data for l in layers)
    assert images.shape == (2, 25, 32, 3)  # the two annotated images, padded to the larger one
    assert int(np.asarray(inst).max()) >= 1
    assert set(np.unique(np.asarray(classes))) <= {0, 1, 2} and np.asarray(classes).max() >= 1
    assert layers[2].metadata["classes"] == ["cell", "debris"]
    # the folder itself (napari's own reader also accepts folders, so the plugin is named)
    again = viewer.open(str(dataset_folder), plugin=PLUGIN)
    assert [type(l).__name__ for l in again] == ["Image", "Labels", "Labels"]


def test_viewer_opens_a_project_in_the_annotator(make_napari_viewer, project_folder, no_model):
    from napari_ultratinysam.widgets.annotator import AnnotatorWidget

    viewer = make_napari_viewer()
    viewer.open(str(project_folder / "project.json"), plugin=None)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotator")  # the one the reader docked
    try:
        assert isinstance(widget, AnnotatorWidget)
        assert widget.project is not None and widget.project.folder.resolve() == project_folder.resolve()
        assert [c.name for c in widget.classes] == ["cell", "debris"]
        assert "project image" in [l.name for l in viewer.layers]
        assert viewer.layers["project image"].data.shape == (24, 32, 3)
        assert int(widget.annotations.data.max()) == 1  # the committed object of image 0
        # opening the same project again (here its folder) keeps the annotator and its project
        viewer.open(str(project_folder), plugin=PLUGIN)
        _d2, again = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotator")
        assert again is widget and widget.project.folder.resolve() == project_folder.resolve()
    finally:
        widget.cleanup()


def test_a_broken_project_is_one_clear_error(make_napari_viewer, project_folder, no_model):
    from napari.errors import ReaderPluginError

    state = json.loads((project_folder / "project.json").read_text())
    state["images"] = "nope"
    (project_folder / "project.json").write_text(json.dumps(state))
    viewer = make_napari_viewer()
    with pytest.raises(ReaderPluginError) as e:
        viewer.open(str(project_folder / "project.json"), plugin=None)
    assert "project.json" in str(e.value.__cause__) and "images" in str(e.value.__cause__)


def test_labels_writer(tmp_path, make_napari_viewer):
    ids = np.zeros((20, 30), np.int32)
    ids[2:8, 3:9] = 1
    ids[10:18, 12:25] = 7
    viewer = make_napari_viewer()
    viewer.add_labels(ids, name="cells")
    out = tmp_path / "cells.png"
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written == [str(out)]
    back = np.asarray(Image.open(out))
    assert back.dtype == np.uint8 and np.array_equal(back, ids)
    big = ids.astype(np.int32) * 1000
    write_labels(str(tmp_path / "big.png"), big, {"name": "big"})
    back = np.asarray(Image.open(tmp_path / "big.png"))
    assert back.max() == 7000 and np.array_equal(back.astype(np.int64), big)
    with pytest.raises(ValueError, match="2-D"):
        write_labels(str(tmp_path / "stack.png"), np.zeros((2, 4, 4), np.int32), {"name": "stack"})
    with pytest.raises(ValueError, match="0..65535"):
        write_labels(str(tmp_path / "neg.png"), -np.ones((4, 4), np.int32), {"name": "neg"})
