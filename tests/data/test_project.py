"""Annotation project: navigation, progress, commits with overlaps, classes, autosave and crash safety."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ultratinysam.data import project as project_mod
from napari_ultratinysam.data import project_files
from napari_ultratinysam.data.project import Project
from napari_ultratinysam.data.readers.camvid import CAMVID_CLASSES, CAMVID_COLORS


@pytest.fixture
def images(tmp_path, write_rgb):
    folder = tmp_path / "imgs"
    for k, name in enumerate(["a", "b", "c"]):
        write_rgb(folder / f"{name}.png", 24, 32, seed=k)
    return folder


def _box(y0, y1, x0, x1, hw=(24, 32)):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_create_defaults_navigation_progress(tmp_path, images):
    p = Project.create(tmp_path / "proj", images)
    assert len(p) == 3 and p.names == ["a", "b", "c"]
    assert p.classes == list(CAMVID_CLASSES) and p.colors == list(CAMVID_COLORS)
    assert p.progress() == (0, 3) and p.progress_text() == "0 / 3 annotated"
    assert p.next() == 1 and p.next() == 2 and p.next() == 2 and p.previous() == 1
    assert p.image(1).shape == (24, 32, 3)
    ids, classes, order = p.get_annotation(0)
    assert ids.dtype == np.uint16 and ids.shape == (24, 32) and not ids.any() and classes == {} and order == []
    p.commit_object(2, _box(0, 5, 0, 5), 3)
    assert p.progress_text() == "1 / 3 annotated" and p.is_annotated(2)
    q = Project.open(tmp_path / "proj", read_only=True)  # p still holds the writer's lock
    assert q.cursor == 1 and q.progress() == (1, 3)
    with pytest.raises(ValueError, match="already exists"):
        Project.create(tmp_path / "proj", images)


def test_commit_order_overlaps_delete_and_class(tmp_path, images):
    p = Project.create(tmp_path / "proj", images)
    a = p.commit_object(0, _box(0, 10, 0, 10), 1)
    b = p.commit_object(0, _box(5, 15, 5, 15), 8)
    assert (a, b) == (1, 2)
    ids, classes, order = p.get_annotation(0)
    assert ids[7, 7] == b and ids[2, 2] == a and (ids == a).sum() == 100 - 25
    assert classes == {a: 1, b: 8} and order == [a, b]
    assert p.overlaps(0) == [{"instance": b, "over": a, "pixels": 25}]
    c = p.commit_object(0, _box(0, 20, 0, 20), 2)  # covers both: they disappear
    ids, classes, order = p.get_annotation(0)
    assert set(np.unique(ids)) == {0, c} and classes == {c: 2} and order == [c]
    p.set_object_class(0, c, 5)
    assert p.get_annotation(0)[1] == {c: 5}
    d = p.commit_object(0, _box(20, 24, 20, 32), 0)
    p.delete_object(0, c)
    ids, classes, order = p.get_annotation(0)
    assert set(np.unique(ids)) == {0, d} and classes == {d: 0} and order == [d]
    assert p.commit_object(0, _box(0, 2, 0, 2), 0) == d + 1  # ids are never reused


def test_bad_requests_give_clear_errors(tmp_path, images):
    p = Project.create(tmp_path / "proj", images)
    with pytest.raises(ValueError, match="a: mask shape"):
        p.commit_object(0, np.ones((5, 5), bool), 0)
    with pytest.raises(ValueError, match="a: empty mask"):
        p.commit_object(0, np.zeros((24, 32), bool), 0)
    with pytest.raises(ValueError, match="class index 11 out of range"):
        p.commit_object(0, _box(0, 2, 0, 2), 11)
    with pytest.raises(ValueError, match="b: no object with instance id 4"):
        p.delete_object(1, 4)
    with pytest.raises(ValueError, match="instance 3 has no class"):
        p.set_annotation(0, np.full((24, 32), 3, np.uint16), {})
    with pytest.raises(IndexError):
        p.get_annotation(3)
    with pytest.raises(FileNotFoundError, match="not an annotation project"):
        Project.open(tmp_path)


def test_set_annotation_and_classes_persist(tmp_path, images):
    p = Project.create(tmp_path / "proj", [images / "b.png", images / "a.png"], classes=["cell", "nucleus"])
    assert p.names == ["b", "a"] and len(p.colors) == 2
    m = np.zeros((24, 32), np.uint16)
    m[:4], m[10:] = 7, 9
    p.set_annotation(1, m, {7: 0, 9: 1})
    assert p.add_class("debris", (1, 2, 3)) == 2
    p.rename_class(0, "Cell")
    p.close()  # one writer at a time
    q = Project.open(tmp_path / "proj")
    assert q.classes == ["Cell", "nucleus", "debris"] and q.colors[2] == (1, 2, 3)
    ids, classes, order = q.get_annotation(1)
    assert np.array_equal(ids, m) and classes == {7: 0, 9: 1} and order == [7, 9]
    assert q.commit_object(1, _box(0, 1, 0, 1), 2) == 10
    with pytest.raises(ValueError, match="class index 2 is still used"):
        q.set_classes(["x", "y"])


def test_kill_between_commits_loses_nothing(tmp_path, images):
    """Commits are on disk the moment they return: a fresh process sees them without any save call."""
    p = Project.create(tmp_path / "proj", images)
    committed = [(0, p.commit_object(0, _box(0, 6, 0, 6), 1)), (0, p.commit_object(0, _box(3, 9, 3, 9), 2)),
                 (2, p.commit_object(2, _box(10, 20, 0, 32), 4))]
    p.go_to(2)
    expected = {i: p.get_annotation(i) for i in (0, 2)}
    del p  # "killed": no close(), no save()
    q = Project.open(tmp_path / "proj")
    assert q.cursor == 2 and q.progress() == (2, 3)
    for i, (ids, classes, order) in expected.items():
        got = q.get_annotation(i)
        assert np.array_equal(got[0], ids) and got[1] == classes and got[2] == order
    assert {iid for i, iid in committed} <= set(q.get_annotation(0)[1]) | set(q.get_annotation(2)[1])


def test_crash_inside_a_save_keeps_a_consistent_state(tmp_path, images, monkeypatch):
    p = Project.create(tmp_path / "proj", images)
    first = p.commit_object(0, _box(0, 6, 0, 6), 1)

    # 1) crash while writing the map: the commit is lost as a whole, the earlier one is intact
    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(project_files.Image.Image, "save", boom)
        with pytest.raises(OSError):
            p.commit_object(0, _box(10, 12, 10, 12), 2)
    ids, classes, _ = p.get_annotation(0)
    assert classes == {first: 1} and set(np.unique(ids)) == {0, first}
    assert Project.open(tmp_path / "proj", read_only=True).get_annotation(0)[1] == {first: 1}

    # 2) crash after the map but before the sidecar: the map (authoritative) has it; open repairs the sidecar
    with monkeypatch.context() as mp:
        mp.setattr(project_mod, "atomic_write_json", boom)
        with pytest.raises(OSError):
            p.commit_object(0, _box(10, 12, 10, 12), 2)
    p.close()  # one writer at a time
    q = Project.open(tmp_path / "proj")
    ids, classes, _ = q.get_annotation(0)
    assert classes == {first: 1, first + 1: 2} and (ids == first + 1).sum() == 4
    side = json.loads((tmp_path / "proj" / "annotations" / "a.json").read_text())
    assert side["instances"] == {str(first): 1, str(first + 1): 2}
