"""CamVid-style export: round trip through the `ours` reader, splits, re-export, failure safety, CLI, napari reader."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam import __version__
from napari_ultratinysam.data import export as export_mod
from napari_ultratinysam.data.export import assign_split, export_dataset
from napari_ultratinysam.data.project import Project
from napari_ultratinysam.data.readers import detect_format, read_dataset
from napari_ultratinysam.data.types import AnnotatedImage

NAMES = [f"img{k:02d}" for k in range(10)]
RATIOS = (0.5, 0.25, 0.25)


@pytest.fixture
def project(tmp_path, write_rgb):
    folder = tmp_path / "imgs"
    for k, name in enumerate(NAMES):
        write_rgb(folder / f"{name}.png", 20 + k, 30, seed=k)
    p = Project.create(tmp_path / "proj", folder)
    rng = np.random.default_rng(0)
    for i in range(len(NAMES) - 1):  # the last image stays unannotated
        h, w = p.image_size(i)
        for _ in range(3):
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            m = np.zeros((h, w), bool)
            m[y:y + 8, x:x + 9] = True
            p.commit_object(i, m, int(rng.integers(0, 11)))
    return p


def _tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_project_export_read(project, tmp_path):
    out = tmp_path / "ds"
    summary = export_dataset(project, out, ratios=RATIOS)
    assert summary.written == 9 and summary.skipped_empty == [NAMES[-1]]
    assert sum(summary.images_per_split.values()) == 9
    assert sum(1 for n in summary.images_per_split.values() if n) >= 2  # several splits are used
    assert summary.overlaps and all(v > 0 for v in summary.overlaps.values())
    assert detect_format(out) == "ours"
    ds = read_dataset(out)
    assert ds.classes == project.classes and ds.colors == project.colors and len(ds) == 9
    splits_seen = set()
    for item in ds:
        i = project.names.index(item.name)
        ids, classes, _ = project.get_annotation(i)
        got = np.zeros_like(ids)
        for m, iid in zip(item.masks, item.extra["instance_ids"]):
            got[m] = iid
        assert np.array_equal(got, ids)  # ids and pixels
        assert dict(zip(item.extra["instance_ids"], item.class_ids.tolist())) == classes
        assert np.array_equal(item.image, project.image(i))  # PNG images are lossless
        assert item.extra["split"] == assign_split(item.name, RATIOS)
        splits_seen.add(item.extra["split"])
    assert len(splits_seen) >= 2
    for split in splits_seen:
        assert len(read_dataset(out, split=split)) == summary.images_per_split[split]


def test_layout_lists_class_dict_and_metadata(project, tmp_path):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios=RATIOS)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tool_version"] == __version__ and meta["void_index"] == 255  # the default, whatever the classes
    assert meta["source"] == str(project.folder) and meta["classes"][0] == "Sky"
    for split in ("train", "val", "test"):
        lines = (out / f"{split}.txt").read_text().splitlines()
        assert len(lines) == meta["splits"][split]["images"]
        for line in lines:
            img, annot = line.split(" ")
            name = img.split("/")[1][:-4]
            assert img == f"{split}/{name}.png" and annot == f"{split}annot/{name}.png"
            assert (out / img).is_file() and (out / annot).is_file()
            assert (out / f"{split}inst" / f"{name}.png").is_file()
            a = Image.open(out / annot)
            inst = Image.open(out / f"{split}inst" / f"{name}.png")
            assert a.mode == "L" and inst.mode == "I;16"
            arr = np.asarray(a)
            assert set(np.unique(arr)) <= set(range(11)) | {255}
            assert ((np.asarray(inst) == 0) == (arr == 255)).all()  # void exactly where no object
    with open(out / "class_dict.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "r", "g", "b"] and rows[1] == ["Sky", "128", "128", "128"]
    assert rows[12] == ["Unlabelled", "0", "0", "0"] and len(rows) == 13
    total = sum(meta["splits"][s]["objects"] for s in meta["splits"])
    assert total == sum(e["objects"] for e in meta["images"].values()) > 0


def test_reexport_adds_and_replaces_without_moving(project, tmp_path, write_rgb):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios=RATIOS)
    before = _tree_digest(out)
    splits_before = {n: e["split"] for n, e in json.loads((out / "dataset.json").read_text())["images"].items()}
    # change one image, annotate the last one, and re-export
    project.commit_object(0, np.ones(project.image_size(0), bool), 2)
    project.commit_object(9, np.ones(project.image_size(9), bool), 4)
    summary = export_dataset(project, out, ratios=RATIOS)
    assert sorted(summary.added) == [NAMES[9]] and len(summary.replaced) == 9
    after = _tree_digest(out)
    meta = json.loads((out / "dataset.json").read_text())
    for name, split in splits_before.items():
        assert meta["images"][name]["split"] == split  # nothing moved
        if name != NAMES[0]:
            assert after[f"{split}inst/{name}.png"] == before[f"{split}inst/{name}.png"]
    s0 = splits_before[NAMES[0]]
    assert after[f"{s0}inst/{NAMES[0]}.png"] != before[f"{s0}inst/{NAMES[0]}.png"]
    ds = read_dataset(out)
    assert len(ds) == 10
    assert ds[ds.names.index(NAMES[9])].num_objects == 1
    # exporting a single extra image list keeps everything else
    img = np.zeros((8, 8, 3), np.uint8)
    extra = AnnotatedImage(img, np.ones((1, 8, 8), bool), np.array([3]), name="extra")
    export_dataset([extra], out, ratios=RATIOS, classes=project.classes, colors=project.colors)
    assert len(read_dataset(out)) == 11


def test_failed_export_leaves_previous_dataset_intact(project, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    export_dataset(project, out, ratios=RATIOS)
    before = _tree_digest(out)
    project.commit_object(1, np.ones(project.image_size(1), bool), 2)
    real_write = export_mod._write_item
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected failure mid-export")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(export_mod, "_write_item", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        export_dataset(project, out, ratios=RATIOS)
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "imgs", "proj"]  # no staging left behind
    assert len(read_dataset(out)) == 9


def test_overlaps_void_index_and_refusals(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :6], masks[1, 4:] = True, True
    item = AnnotatedImage(img, masks, np.array([0, -1]), name="over lap")
    s = export_dataset([item], tmp_path / "a", ratios=(1, 0, 0), void_index=255, classes=["thing"])
    assert s.overlaps == {"over_lap": 20} and s.images_per_split["train"] == 1
    annot = np.asarray(Image.open(tmp_path / "a" / "trainannot" / "over_lap.png"))
    assert (annot[:4] == 0).all() and (annot[4:] == 255).all()  # class -1 -> void; later wins
    back = read_dataset(tmp_path / "a")[0]
    assert back.name == "over_lap" and sorted(back.class_ids.tolist()) == [-1, 0]
    with pytest.raises(ValueError, match="void_index: 0"):
        export_dataset([item], tmp_path / "b", void_index=0, classes=["thing"])
    with pytest.raises(ValueError, match="other classes"):
        export_dataset([item], tmp_path / "a", void_index=255, classes=["other"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_dataset([item], tmp_path / "c", classes=["thing"])
    with pytest.raises(ValueError, match="ratios"):
        export_dataset([item], tmp_path / "d", ratios="0.5,0.5", classes=["thing"])
    with pytest.raises(ValueError, match="unknown class 3"):
        export_dataset([AnnotatedImage(img, masks[:1], np.array([3]), name="z")], tmp_path / "e", classes=["t"])


def test_split_assignment_is_stable_and_follows_ratios():
    names = [f"frame_{k:05d}" for k in range(2000)]
    splits = [assign_split(n, (0.8, 0.1, 0.1)) for n in names]
    assert splits == [assign_split(n, (0.8, 0.1, 0.1)) for n in names]
    frac = splits.count("train") / len(names)
    assert 0.76 < frac < 0.84 and splits.count("val") > 120 and splits.count("test") > 120
    assert {assign_split(n, (1, 0, 0)) for n in names} == {"train"}
    assert assign_split("x", (0.8, 0.1, 0.1), seed=1) in ("train", "val", "test")


def test_cli_export_and_napari_reader(project, tmp_path):
    from napari_ultratinysam.cli.main import main
    from napari_ultratinysam.data.napari_reader import get_reader

    out = tmp_path / "cli_ds"
    assert main(["export-dataset", str(project.folder), "-o", str(out), "--ratios", "0.5,0.25,0.25",
                 "--quiet"]) == 0
    assert len(read_dataset(out)) == 9
    assert main(["export-dataset", str(project.folder), "-o", str(out), "--ratios", "1,2"]) == 2

    assert get_reader(str(tmp_path / "imgs" / "img00.png")) is None
    assert get_reader(str(tmp_path)) is None
    reader = get_reader(str(out))
    assert reader is not None and get_reader(str(out / "dataset.json")) is not None
    layers = reader(str(out))
    assert [t[2] for t in layers] == ["image", "labels", "labels"]
    ds = read_dataset(out)
    images, inst, cls = (t[0] for t in layers)
    assert images.shape == (9, 28, 30, 3) and inst.shape == (9, 28, 30)  # largest exported image: 28x30
    k = 3
    item = ds[k]
    h, w = item.image.shape[:2]
    assert np.array_equal(np.asarray(images[k])[:h, :w], item.image)
    ids = np.asarray(inst[k])
    assert np.array_equal(ids[:h, :w], _ids(item)) and not ids[h:].any()
    classes = np.asarray(cls[k])[:h, :w]
    for m, c in zip(item.masks, item.class_ids):
        assert (classes[m] == c + 1).all()
    meta = layers[2][1]
    assert meta["metadata"]["classes"] == project.classes and meta["features"]["class_name"][1] == "Sky"


def _ids(item: AnnotatedImage) -> np.ndarray:
    out = np.zeros(item.image.shape[:2], np.int64)
    for m, i in zip(item.masks, item.extra["instance_ids"]):
        out[m] = i
    return out


# ---------------------------------------------------------------- void index and formats (issue 22)


def test_void_index_defaults_to_255_for_any_number_of_classes(tmp_path):
    img = np.zeros((6, 6, 3), np.uint8)
    masks = np.zeros((1, 6, 6), bool)
    masks[0, :3] = True
    classes = [f"c{k}" for k in range(11)]
    export_dataset([AnnotatedImage(img, masks, np.array([10]), name="a")], tmp_path / "ds", classes=classes)
    # a 12th class appended (as the class list's Add does): the same folder takes it, old maps stay valid
    export_dataset([AnnotatedImage(img, masks, np.array([11]), name="b")], tmp_path / "ds",
                   classes=classes + ["new"])
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["void_index"] == 255 and meta["classes"][-1] == "new" and sorted(meta["images"]) == ["a", "b"]
    back = {it.name: it.class_ids.tolist() for it in read_dataset(tmp_path / "ds")}
    assert back == {"a": [10], "b": [11]}
    # an older dataset whose void value is now a class index: one clear line, nothing written
    export_dataset([AnnotatedImage(img, masks, np.array([0]), name="a")], tmp_path / "old", classes=classes,
                   void_index=11)
    export_dataset([AnnotatedImage(img, masks, np.array([0]), name="c")], tmp_path / "old", classes=classes)
    assert json.loads((tmp_path / "old" / "dataset.json").read_text())["void_index"] == 11  # kept when valid
    with pytest.raises(ValueError, match=r"void index 11, now a class index"):
        export_dataset([AnnotatedImage(img, masks, np.array([0]), name="d")], tmp_path / "old",
                       classes=classes + ["new"])
    with pytest.raises(ValueError, match=r"void_index: 3 must be in 12\.\.255"):
        export_dataset([AnnotatedImage(img, masks, np.array([0]), name="d")], tmp_path / "x",
                       classes=classes + ["new"], void_index=3)


def _objects(project, i):
    ids, classes, _ = project.get_annotation(i)
    return [(ids == iid, project.classes[c]) for iid, c in classes.items() if (ids == iid).any()]


def test_coco_export_reads_back_with_pycocotools(project, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    summary = export_dataset(project, out, ratios=RATIOS, format="coco")
    assert summary.format == "coco" and summary.written == 9 and "as COCO" in str(summary)
    seen = 0
    for split, n in summary.images_per_split.items():
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert len(coco.dataset["images"]) == n
        cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        assert [cats[k + 1] for k in range(len(cats))] == project.classes
        for im in coco.dataset["images"]:
            i = project.names.index(im["file_name"][:-4])
            assert assign_split(project.names[i], RATIOS) == split
            assert np.array_equal(np.asarray(Image.open(out / "images" / split / im["file_name"])), project.image(i))
            want = _objects(project, i)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=im["id"]))
            assert len(anns) == len(want) > 0
            for (m, cls), ann in zip(want, anns):
                got = coco.annToMask(ann).astype(bool)
                assert np.array_equal(got, m) and cats[ann["category_id"]] == cls  # RLE: IoU 1
                assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            seen += 1
    assert seen == 9
    ds = read_dataset(out)  # the project's own COCO reader agrees
    assert ds.format == "coco" and len(ds) == 9 and ds.classes == project.classes


def test_yolo_export_reads_back_with_the_yolo_reader(project, tmp_path):
    import yaml

    out = tmp_path / "yolo"
    summary = export_dataset(project, out, ratios=RATIOS, format="yolo")
    assert summary.written == 9
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(project.classes)) and data["train"] == "images/train"
    ds = read_dataset(out)
    assert ds.format == "yolo" and ds.classes == project.classes and len(ds) == 9
    for item in ds:
        i = project.names.index(item.name)
        assert np.array_equal(item.image, project.image(i))
        want = _objects(project, i)
        assert len(want) == item.num_objects > 0
        for (m, cls), got, c in zip(want, item.masks, item.class_ids):
            iou = (m & got).sum() / (m | got).sum()
            assert iou >= 0.9 and project.classes[c] == cls, (item.name, iou)


def test_yolo_polygons_of_pieces_holes_and_single_pixels(tmp_path):
    from napari_ultratinysam.data.export_formats import mask_polygon

    h, w = 40, 50
    masks = np.zeros((4, h, w), bool)
    masks[0, 5:15, 5:20] = True
    masks[0, 25:35, 30:45] = True  # one object in two pieces
    yy, xx = np.mgrid[:h, :w]
    masks[1] = (yy - 20) ** 2 + (xx - 25) ** 2 < 12 ** 2
    masks[2, 0, w - 1] = True  # a corner pixel
    masks[3, 10:30, 0:4] = True
    item = AnnotatedImage(np.zeros((h, w, 3), np.uint8), masks, np.array([0, 1, -1, 1]), name="shapes")
    export_dataset([item], tmp_path / "y", ratios=(1, 0, 0), classes=["a", "b"], format="yolo")
    back = read_dataset(tmp_path / "y")[0]
    assert back.class_ids.tolist() == [0, 1, 2, 1] and read_dataset(tmp_path / "y").classes == ["a", "b", "object"]
    for m, got in zip(masks, back.masks):
        assert (m & got).sum() / (m | got).sum() >= 0.9
    assert np.array_equal(back.masks[2], masks[2]) and np.array_equal(back.masks[3], masks[3])
    assert mask_polygon(np.zeros((4, 4), bool)) is None


def test_formats_do_not_replace_each_other_without_overwrite(project, tmp_path):
    from napari_ultratinysam.cli.main import main

    out = tmp_path / "ds"
    assert main(["export-dataset", str(project.folder), "-o", str(out), "--format", "coco", "--quiet"]) == 0
    assert (out / "annotations" / "instances_train.json").is_file()
    with pytest.raises(ValueError, match="holds a coco export"):
        export_dataset(project, out, format="yolo")
    assert main(["export-dataset", str(project.folder), "-o", str(out), "--quiet"]) == 2  # camvid default
    # a second COCO export replaces the first whole
    s = export_dataset(project, out, format="coco")
    assert len(s.replaced) == 9 and not s.added
    assert main(["export-dataset", str(project.folder), "-o", str(out), "--format", "yolo", "--overwrite",
                 "--quiet"]) == 0
    assert read_dataset(out).format == "yolo" and not (out / "annotations").exists()
    with pytest.raises(ValueError, match="format: expected one of camvid, coco, yolo"):
        export_dataset(project, tmp_path / "z", format="voc")
