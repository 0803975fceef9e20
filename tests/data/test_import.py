"""Import existing labels into a new project (issue 22, item 2): every export format round-trips through
export -> import, SegNet class maps, binary-mask folders, overlaps, bad input as one line, and no half-written
project after a failure. All files are made in tmp_path."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.importer import import_labels
from napari_ultratinysam.data.project import Project
from napari_ultratinysam.data.readers.coco import polygon_mask

CLASSES = ["cat", "dog", "bird"]
SHAPES = [(48, 64), (56, 50), (40, 72), (64, 64)]


def _disc(h, w, cy, cx, r, hole=0):
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= r * r) & (d2 > hole * hole)


def _box(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def project(tmp_path, write_rgb):
    """Four images of different sizes; three carry objects of several classes, one overlap, one ring with a hole;
    the fourth stays empty."""
    for k, (h, w) in enumerate(SHAPES):
        write_rgb(tmp_path / "imgs" / f"im{k}.png", h, w, seed=k)
    p = Project.create(tmp_path / "proj", tmp_path / "imgs", classes=CLASSES)
    for i in range(3):
        h, w = p.image_size(i)
        p.commit_object(i, _box(h, w, 4, 4, 20, 26), 0)
        p.commit_object(i, _disc(h, w, h - 14, w - 15, 11, hole=3 if i == 1 else 0), 1 + i % 2)
        p.commit_object(i, _box(h, w, 14, 18, 30, 36), 2)  # over the first box: it wins the shared pixels
    yield p
    p.close()


def _objects(p: Project, i: int) -> dict[int, tuple[str | None, np.ndarray]]:
    ids, classes, _ = p.get_annotation(i)
    return {k: (p.classes[c] if c >= 0 else None, ids == k) for k, c in classes.items()}


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _assert_same_objects(src: Project, dst: Project, min_iou: float) -> list[float]:
    """Every annotated image of ``src`` is in ``dst`` with the same objects (best-IoU match, same class)."""
    ious = []
    annotated = [n for i, n in enumerate(src.names) if src.is_annotated(i)]
    assert sorted(n for i, n in enumerate(dst.names) if dst.is_annotated(i)) == sorted(annotated)
    for name in annotated:
        a, b = _objects(src, src.names.index(name)), _objects(dst, dst.names.index(name))
        assert len(a) == len(b), name
        for cls, m in a.values():
            best_cls, best = max(((c, _iou(m, n)) for c, n in b.values()), key=lambda t: t[1])
            assert best >= min_iou, (name, cls, best)
            assert best_cls == cls, name
            ious.append(best)
    return ious


@pytest.mark.parametrize("fmt,min_iou", [("camvid", 1.0), ("coco", 1.0), ("yolo", 0.9)])
def test_export_then_import_round_trips(project, tmp_path, fmt, min_iou):
    out = tmp_path / f"ds_{fmt}"
    export_dataset(project, out, ratios="0.5,0.3,0.2", format=fmt)
    summary = import_labels(out, tmp_path / "imported")
    p = summary.project
    try:
        assert summary.format == {"camvid": "ours"}.get(fmt, fmt)
        assert p.classes == CLASSES and not p.read_only
        assert summary.images == len(p) == 3 and summary.annotated == 3 and summary.objects == 9
        _assert_same_objects(project, p, min_iou)
        # the images are the exported files, referenced where they are; pixels identical to the originals
        for i, name in enumerate(p.names):
            assert p.image_path(i).resolve().is_relative_to(out.resolve())
            np.testing.assert_array_equal(p.image(i), project.image(project.names.index(name)))
        if fmt == "camvid":  # our export keeps instance ids: the same ids come back
            for i, name in enumerate(p.names):
                assert set(p.get_annotation(i)[1]) == set(project.get_annotation(project.names.index(name))[1])
        # editable committed objects: re-class, delete and commit work and are saved
        ids, classes, _ = p.get_annotation(0)
        first = min(classes)
        p.set_object_class(0, first, 2)
        p.delete_object(0, max(classes))
        new = p.commit_object(0, _box(*ids.shape, 0, 0, 3, 3), 1)
    finally:
        p.close()
    with Project.open(tmp_path / "imported") as again:
        _, classes, order = again.get_annotation(0)
        assert classes[first] == 2 and classes[new] == 1 and len(classes) == 3 and order[-1] == new


def test_camvid_round_trip_keeps_objects_without_class(project, tmp_path):
    h, w = project.image_size(3)
    project.commit_object(3, _box(h, w, 2, 2, 12, 12), -1)
    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0")
    with import_labels(out, tmp_path / "imported").project as p:
        _assert_same_objects(project, p, 1.0)
        assert list(p.get_annotation(p.names.index("im3"))[1].values()) == [-1]


def test_segnet_class_maps_become_one_object_per_component(tmp_path, write_rgb, write_array):
    """SegNet CamVid: a class map only; each connected region of a class is one object, void is nothing."""
    write_rgb(tmp_path / "seg" / "train" / "a.png", 30, 40)
    label = np.full((30, 40), 11, np.uint8)
    label[2:10, 2:10] = 3
    label[20:28, 25:38] = 3
    label[12:18, 12:30] = 8
    write_array(tmp_path / "seg" / "trainannot" / "a.png", label)
    with import_labels(tmp_path / "seg", tmp_path / "proj").project as p:
        ids, classes, _ = p.get_annotation(0)
        assert p.classes[:11][3] == "Road" and sorted(p.classes[c] for c in classes.values()) == ["Car", "Road",
                                                                                                   "Road"]
        for k, c in classes.items():
            assert (label[ids == k] == c).all()
        np.testing.assert_array_equal(ids > 0, label != 11)


def test_binary_mask_folder(tmp_path, write_rgb, write_array):
    """images/ + masks/ from another tool: each 0/255 mask is one object of the class 'object'."""
    masks = {}
    for k in range(3):
        write_rgb(tmp_path / "ds" / "images" / f"s{k}.jpg", 32, 48, seed=k)
        m = _disc(32, 48, 16, 10 + 12 * k, 6 + k)
        masks[f"s{k}"] = m
        write_array(tmp_path / "ds" / "masks" / f"s{k}.png", m.astype(np.uint8) * 255)
    summary = import_labels(tmp_path / "ds", tmp_path / "proj")
    with summary.project as p:
        assert summary.format == "folder" and p.classes == ["object"]
        for i, name in enumerate(p.names):
            ids, classes, _ = p.get_annotation(i)
            assert list(classes.values()) == [0]
            np.testing.assert_array_equal(ids > 0, masks[name])


def test_masks_folder_of_another_tool(tmp_path, write_rgb, write_array):
    """Images and masks in folders of any name (paired by stem); an instance-id mask gives one object per id; an
    image without a mask is in the project with no objects yet."""
    for k in range(3):
        write_rgb(tmp_path / "photos" / f"p{k}.png", 30, 30, seed=k)
    inst = np.zeros((30, 30), np.uint16)
    inst[2:10, 2:10], inst[15:25, 5:20] = 7, 300
    write_array(tmp_path / "tool_out" / "p0.png", inst)
    write_array(tmp_path / "tool_out" / "p2.png", (_disc(30, 30, 15, 15, 8) * 255).astype(np.uint8))
    summary = import_labels(tmp_path / "photos", tmp_path / "proj", masks=tmp_path / "tool_out")
    with summary.project as p:
        assert len(p) == 3 and summary.annotated == 2 and summary.objects == 3
        assert p.get_annotation(1)[1] == {}
        ids, classes, _ = p.get_annotation(0)
        assert len(classes) == 2
        assert {int((ids == k).sum()) for k in classes} == {64, 150}


def test_overlapping_coco_objects_smaller_on_top(tmp_path, write_rgb):
    """COCO objects may overlap: the smaller one is drawn over the larger (none vanishes under a larger one);
    a duplicate covered whole is counted as dropped."""
    write_rgb(tmp_path / "coco" / "images" / "x.png", 40, 40)

    def poly(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    anns = [(1, poly(5, 5, 15, 15), 2), (2, poly(0, 0, 40, 40), 1), (3, poly(5, 5, 15, 15), 2)]
    doc = {"images": [{"id": 1, "file_name": "x.png", "height": 40, "width": 40}],
           "categories": [{"id": 1, "name": "table"}, {"id": 2, "name": "cup"}],
           "annotations": [{"id": i, "image_id": 1, "category_id": c, "segmentation": s, "iscrowd": 0}
                           for i, s, c in anns]}
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    summary = import_labels(tmp_path / "coco", tmp_path / "proj")
    with summary.project as p:
        ids, classes, _ = p.get_annotation(0)
        assert p.classes == ["table", "cup"]
        assert sorted(p.classes[c] for c in classes.values()) == ["cup", "table"]
        cup = next(k for k, c in classes.items() if p.classes[c] == "cup")
        cup_mask = polygon_mask(poly(5, 5, 15, 15), 40, 40)
        np.testing.assert_array_equal(ids == cup, cup_mask)
        assert (ids > 0).all()
    assert summary.hidden == {"x": 1} and summary.overlapping["x"] == 2 * cup_mask.sum()
    assert "dropped" in str(summary)


def test_yolo_without_names_gets_numbered_classes(tmp_path, write_rgb):
    write_rgb(tmp_path / "y" / "images" / "a.png", 20, 20)
    (tmp_path / "y" / "labels").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "a.txt").write_text("2 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n"
                                                     "0 0.6 0.6 0.9 0.6 0.9 0.9\n")
    with import_labels(tmp_path / "y", tmp_path / "proj").project as p:
        assert p.classes == ["class_0", "class_1", "class_2"]
        assert sorted(p.get_annotation(0)[1].values()) == [0, 2]


def test_copy_images_makes_the_project_self_contained(project, tmp_path):
    import shutil

    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0", format="coco")
    summary = import_labels(out, tmp_path / "imported", copy_images=True)
    summary.project.close()
    assert summary.copied_images == 3
    shutil.rmtree(out)
    with Project.open(tmp_path / "imported") as p:
        assert all(p.image_path(i).parent == p.folder / "images" for i in range(len(p)))
        _assert_same_objects(project, p, 1.0)


# ------------------------------------------------------------------------------------------- bad input


def _one_line_naming(exc_info, what) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(what) in msg, msg


def test_corrupt_mask_is_one_line_naming_it_and_writes_nothing(tmp_path, write_rgb, write_array):
    for k in range(2):
        write_rgb(tmp_path / "ds" / "images" / f"a{k}.png", 20, 20)
    write_array(tmp_path / "ds" / "masks" / "a0.png", np.zeros((20, 20), np.uint8))
    (tmp_path / "ds" / "masks" / "a1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError) as e:
        import_labels(tmp_path / "ds", tmp_path / "proj")
    _one_line_naming(e, tmp_path / "ds" / "masks" / "a1.png")
    assert not (tmp_path / "proj").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no stage folder left behind either


def test_bad_yolo_line_names_the_file_and_line(tmp_path, write_rgb):
    write_rgb(tmp_path / "y" / "images" / "a.png", 20, 20)
    (tmp_path / "y" / "labels").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.1 0.1 0.5\n")
    with pytest.raises(ValueError) as e:
        import_labels(tmp_path / "y", tmp_path / "proj")
    _one_line_naming(e, f"{tmp_path / 'y' / 'labels' / 'a.txt'}:1")


def test_target_must_be_new_or_empty(project, tmp_path):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0")
    with pytest.raises(ValueError) as e:
        import_labels(out, project.folder)
    _one_line_naming(e, project.folder / "project.json")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as e:
        import_labels(out, tmp_path / "busy")
    _one_line_naming(e, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty folder (what a folder dialog gives) is fine
    import_labels(out, tmp_path / "empty").project.close()
    assert (tmp_path / "empty" / "project.json").is_file()


def test_failure_while_writing_leaves_no_project(project, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0")
    calls = []

    def fail(self, i, *a, **k):
        calls.append(i)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(self.folder / "annotations"))
        return real(self, i, *a, **k)

    real = Project.set_annotation
    monkeypatch.setattr(Project, "set_annotation", fail)
    with pytest.raises(OSError):
        import_labels(out, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imported")]


def test_masks_option_checks(tmp_path, write_rgb):
    write_rgb(tmp_path / "imgs" / "a.png", 10, 10)
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError) as e:
        import_labels(tmp_path / "imgs", tmp_path / "proj", masks=tmp_path / "masks")
    _one_line_naming(e, tmp_path / "masks")
    with pytest.raises(FileNotFoundError):
        import_labels(tmp_path / "imgs", tmp_path / "proj", masks=tmp_path / "nope")
    with pytest.raises(ValueError) as e:
        import_labels(tmp_path / "imgs", tmp_path / "proj", masks=tmp_path / "imgs")
    _one_line_naming(e, tmp_path / "imgs")


# ------------------------------------------------------------------------------------------- command line


def test_cli_import(project, tmp_path, capsys):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0", format="yolo")
    assert main(["import", str(out), "-o", str(tmp_path / "imported"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "imported 9 objects on 3 of 3 images (yolo)" in text
    with Project.open(tmp_path / "imported") as p:  # the command released the project
        _assert_same_objects(project, p, 0.9)
    assert main(["import", str(out), "-o", str(tmp_path / "imported"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "project.json" in err and err.startswith("utsam import: error:")


def test_cli_bad_mask_is_one_line(tmp_path, write_rgb, capsys):
    write_rgb(tmp_path / "imgs" / "a.png", 10, 10)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(b"\x89PNG broken")
    assert main(["import", str(tmp_path / "imgs"), "--masks", str(tmp_path / "m"), "-o",
                 str(tmp_path / "p"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "m" / "a.png") in err
    assert main(["import", str(tmp_path / "imgs"), "-o", str(tmp_path / "p"), "--images-dir", "x",
                 "--format", "folder"]) == 2
    assert "--images-dir" in capsys.readouterr().err


def test_progress_callback_counts_every_image(project, tmp_path):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios="1,0,0")
    seen = []
    import_labels(out, tmp_path / "imported", on_progress=lambda d, t: seen.append((d, t))).project.close()
    assert seen == [(1, 3), (2, 3), (3, 3)]
