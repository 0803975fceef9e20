"""Dataset readers: synthetic files for every format, malformed inputs, and the shared real sets when present."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.data.readers import detect_format, read_dataset
from napari_ultratinysam.data.readers.coco import polygon_mask
from napari_ultratinysam.data.readers.sa1b import rle_decode, rle_encode

# ------------------------------------------------------------------ RLE


def test_rle_known_example_and_round_trip():
    m = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0 1 | 1 1 -> runs [1, 3]
    assert rle_encode(m, compressed=False)["counts"] == [1, 3]
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (7, 5), (40, 33)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < p
            for compressed in (True, False):
                rle = rle_encode(mask, compressed)
                assert rle["size"] == list(shape)
                assert np.array_equal(rle_decode(rle), mask)


def _rle_fixed_masks() -> list[np.ndarray]:
    m1 = np.zeros((3, 4), bool)
    m1[1:, 1:3] = True
    m2 = np.ones((5, 7), bool)  # starts with foreground: counts [0, ...]
    m2[2, 3] = False
    m3 = np.zeros((40, 33), bool)  # long runs: several characters a count
    m3[5:30, 3:20] = True
    m3[10:12, 8:9] = False
    m4 = np.random.default_rng(3).random((9, 11)) < 0.5
    m8 = np.zeros((64, 48), bool)  # runs that shrink after growing: negative deltas
    m8[::7, ::5] = True
    return [m1, m2, m3, m4, np.zeros((1, 1), bool), np.ones((1, 1), bool), np.zeros((6, 2), bool), m8]


# What the numpy codec that pycocotools replaced wrote for _rle_fixed_masks (pycocotools' own rleToString format)
RLE_FIXED = ["42102", "0a010", "m3i0?00000000\\OC==700000000000000000000S`0",
             "0110010O031O3N11L1ON10O00110OO00023NO021NOO2ON033NMO", "1", "01", "<",
             "01600000000000000000j70VH" + "00000000000000000j70VH" * 8 + "00000000000000000j3"]


def test_rle_codec_matches_fixed_strings():
    for m, s in zip(_rle_fixed_masks(), RLE_FIXED, strict=True):
        assert rle_encode(m) == {"size": list(m.shape), "counts": s}
        for counts in (s, s.encode("ascii"), rle_encode(m, compressed=False)["counts"]):
            out = rle_decode({"size": list(m.shape), "counts": counts})
            assert out.dtype == bool and np.array_equal(out, m)
    assert rle_encode(_rle_fixed_masks()[0], compressed=False)["counts"] == [4, 2, 1, 2, 3]
    for counts in ("", [], [0]):  # no pixels
        assert rle_decode({"size": [0, 3], "counts": counts}).shape == (0, 3)


def test_rle_rejects_bad_counts():
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError):
        rle_decode({"counts": [4]})
    # the compressed form: runs short of or past h*w (pycocotools alone would leave the rest of a short mask
    # unwritten), a count cut in the middle, characters outside '0'..'o'
    for counts, match in [("13", None), ("1", "less than"), ("", "less than"), ("133", "more than"),
                          ("0a01", "more than"), ("13P", "compressed form"), ("1\x00", "compressed form"),
                          ("ab~", "compressed form"), ("1é", "compressed form"), ([-1, 5], "non-negative"),
                          ([[1, 3]], "flat list")]:
        if match is None:
            assert rle_decode({"size": [2, 2], "counts": counts}).tolist() == [[False, True], [True, True]]
            continue
        with pytest.raises(ValueError, match=match):
            rle_decode({"size": [2, 2], "counts": counts})


def test_rle_real_coco_crowd_matches_area_and_reencodes(real):
    root = real("coco_train2017_subsets")
    doc = json.loads((root / "annotations" / "instances_val.json").read_text())
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert crowd
    for ann in crowd:
        m = rle_decode(ann["segmentation"])
        assert m.shape == tuple(ann["segmentation"]["size"])
        assert int(m.sum()) == int(ann["area"])
        assert rle_encode(m)["counts"] == ann["segmentation"]["counts"]


# ------------------------------------------------------------------ synthetic formats


def test_folder_binary_palette_ignore_rgb(tmp_path, write_rgb, write_array):
    root = tmp_path / "ds"
    write_rgb(root / "images" / "a.jpg", 20, 30)
    write_rgb(root / "images" / "b.png", 20, 30, seed=1)
    write_rgb(root / "images" / "c.png", 10, 12, seed=2)
    write_rgb(root / "images" / "d.png", 10, 12, seed=3)
    binary = np.zeros((20, 30), np.uint8)
    binary[2:8, 3:9] = 255
    binary[15:18, 20:25] = 255  # disconnected, still one object
    binary[0, :] = 128  # ignore
    write_array(root / "masks" / "a.png", binary)
    pal = np.zeros((20, 30), np.uint8)
    pal[:5, :5], pal[10:, 10:] = 1, 7
    im = Image.fromarray(pal, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 255, 0] * 254)
    im.save(root / "masks" / "b.png")
    ids16 = np.zeros((10, 12), np.uint16)
    ids16[:3], ids16[5:] = 300, 1000
    write_array(root / "masks" / "c.png", ids16)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:4, :4], rgb[6:, 6:] = (255, 0, 0), (0, 0, 255)
    write_array(root / "masks" / "d.png", rgb)

    assert detect_format(root) == "folder"
    ds = read_dataset(root)
    assert ds.names == ["a", "b", "c", "d"] and ds.classes is None and len(ds) == 4
    a, b, c, d = list(ds)
    assert a.num_objects == 1 and a.masks[0].sum() == 36 + 15
    assert a.extra["ignore"].sum() == 30 and not a.masks[0][0].any()
    assert b.num_objects == 2 and sorted(b.masks.reshape(2, -1).sum(1)) == [25, 200]
    assert c.num_objects == 2 and sorted(c.masks.reshape(2, -1).sum(1)) == [36, 60]
    assert d.num_objects == 2 and list(d.class_ids) == [-1, -1]
    assert read_dataset(root, min_area=30)[0].num_objects == 1
    assert read_dataset(root, min_area=60)[1].num_objects == 1 and read_dataset(root, min_area=201)[1].num_objects == 0
    assert ds.image_size(0) == (20, 30)


def test_yolo_polygons(tmp_path, write_rgb):
    root = tmp_path / "y"
    write_rgb(root / "images" / "train" / "a.jpg", 40, 80)
    write_rgb(root / "images" / "train" / "b.jpg", 40, 80)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "1 0.0 0.0 0.5 0.0 0.5 0.5 0.0 0.5\n2 0.5 0.5 1.0 0.5 1.0 1.0 0.5 1.0\n")
    (root / "data.yaml").write_text("names: [cat, dog, bird]\n")
    assert detect_format(root) == "yolo"
    ds = read_dataset(root)
    assert ds.classes == ["cat", "dog", "bird"] and ds.names == ["a", "b"]
    a = ds[0]
    assert list(a.class_ids) == [1, 2]
    # a square over the top-left quarter: 40x20 pixels (polygon edges inclusive, clipped at the border)
    assert abs(int(a.masks[0].sum()) - 40 * 20) <= 40 + 20 + 1
    assert a.masks[0][5, 5] and not a.masks[0][30, 60] and a.masks[1][30, 60]
    assert ds[1].num_objects == 0  # missing label file = background (Ultralytics)
    assert read_dataset(root, split="train").names == ["a", "b"]


def _coco_doc() -> dict:
    full = np.zeros((30, 40), bool)
    full[10:20, 10:30] = True
    return {
        "images": [{"id": 1, "file_name": "x.png", "height": 30, "width": 40},
                   {"id": 2, "file_name": "y.png", "height": 30, "width": 40}],
        "categories": [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]]},
            {"id": 11, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": rle_encode(full, False)},
            {"id": 12, "image_id": 1, "category_id": 5, "iscrowd": 1, "segmentation": rle_encode(full, True)},
            {"id": 13, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": rle_encode(~full, True)},
        ],
    }


def test_coco_polygons_rle_crowd(tmp_path, write_rgb):
    root = tmp_path / "c"
    write_rgb(root / "train" / "images" / "x.png", 30, 40)
    write_rgb(root / "train" / "images" / "y.png", 30, 40)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(_coco_doc()))
    assert detect_format(root) == "coco"
    ds = read_dataset(root)
    assert ds.classes == ["two", "five"]  # sorted by category id
    x = ds[0]
    assert list(x.class_ids) == [0, 1]
    assert x.masks[1].sum() == 200 and x.masks[0].sum() == 200  # 20x10 polygon, 20x10 RLE
    assert x.masks[0][0, 0] and x.masks[0][9, 19] and not x.masks[0][10, 20]
    with_crowd = read_dataset(root, include_crowd=True)[0]
    assert with_crowd.num_objects == 3
    assert ds[1].masks[0].sum() == 30 * 40 - 200
    # a JSON file path works too
    assert len(read_dataset(root / "annotations" / "instances_train.json",
                            images_dir=root / "train" / "images")) == 2


def test_polygon_mask_covers_pixel_grid():
    m = polygon_mask([[0, 0, 4, 0, 4, 3, 0, 3]], 5, 6)
    assert m[:3, :4].all() and m.sum() <= 4 * 3 + 4 + 3 + 1


def test_sa1b_pairs(tmp_path, write_rgb):
    root = tmp_path / "sa"
    write_rgb(root / "sa_1.png", 16, 24)
    m1 = np.zeros((16, 24), bool)
    m1[2:6, 3:20] = True
    m2 = np.zeros((16, 24), bool)
    m2[8:, :] = True
    (root / "sa_1.json").write_text(json.dumps({
        "image": {"image_id": 1, "width": 24, "height": 16, "file_name": "sa_1.png"},
        "annotations": [{"id": 1, "segmentation": rle_encode(m1)},
                        {"id": 2, "segmentation": rle_encode(m2, compressed=False)}]}))
    assert detect_format(root) == "sa1b"
    item = read_dataset(root)[0]
    assert np.array_equal(item.masks, np.stack([m1, m2])) and list(item.class_ids) == [-1, -1]
    assert read_dataset(root, min_area=100)[0].num_objects == 1


def test_camvid_layout_synthetic(tmp_path, write_rgb, write_array):
    root = tmp_path / "cv"
    write_rgb(root / "train" / "f1.png", 12, 16)
    lab = np.full((12, 16), 11, np.uint8)
    lab[:4, :4] = 3
    lab[8:, 10:] = 3  # second Road component
    lab[5, 5] = 8  # one-pixel Car
    write_array(root / "trainannot" / "f1.png", lab)
    (root / "train.txt").write_text("/SegNet/CamVid/train/f1.png /SegNet/CamVid/trainannot/f1.png\n")
    assert detect_format(root) == "camvid"
    ds = read_dataset(root)
    assert ds.classes[0] == "Sky" and len(ds.classes) == 11 and ds.void_index == 11
    item = ds[0]
    assert sorted(item.class_ids.tolist()) == [3, 3, 8]
    assert item.extra["ignore"].sum() == 12 * 16 - 16 - 24 - 1
    assert sorted(read_dataset(root, min_area=2)[0].class_ids.tolist()) == [3, 3]


# ------------------------------------------------------------------ malformed inputs


def _pair_folder(tmp_path, write_rgb, write_array, mask_hw=(10, 10)):
    root = tmp_path / "bad"
    write_rgb(root / "images" / "one.png", 10, 10)
    write_array(root / "masks" / "one.png", np.zeros(mask_hw, np.uint8))
    return root


def test_missing_mask_names_the_image(tmp_path, write_rgb, write_array):
    root = _pair_folder(tmp_path, write_rgb, write_array)
    write_rgb(root / "images" / "two.png", 10, 10)
    with pytest.raises(ValueError, match=r"two\.png: missing mask"):
        read_dataset(root, format="folder")


def test_size_mismatch_names_the_mask(tmp_path, write_rgb, write_array):
    root = _pair_folder(tmp_path, write_rgb, write_array, mask_hw=(10, 12))
    with pytest.raises(ValueError, match=r"masks/one\.png: size mismatch"):
        read_dataset(root)[0]


def test_corrupt_png_names_the_file(tmp_path, write_rgb, write_array):
    root = _pair_folder(tmp_path, write_rgb, write_array)
    data = (root / "masks" / "one.png").read_bytes()
    (root / "masks" / "one.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"one\.png: cannot decode image"):
        read_dataset(root)[0]
    (root / "masks" / "one.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"one\.png: cannot decode image"):
        read_dataset(root)[0]


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: empty folder"):
        read_dataset(tmp_path / "empty")
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"images: empty folder"):
        read_dataset(tmp_path / "f", format="folder")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere")


def test_unknown_class_camvid_yolo_coco(tmp_path, write_rgb, write_array):
    cv = tmp_path / "cv"
    write_rgb(cv / "train" / "f.png", 8, 8)
    lab = np.zeros((8, 8), np.uint8)
    lab[0, 0] = 14
    write_array(cv / "trainannot" / "f.png", lab)
    with pytest.raises(ValueError, match=r"trainannot/f\.png: unknown class value 14"):
        read_dataset(cv)[0]

    y = tmp_path / "y"
    write_rgb(y / "images" / "a.png", 8, 8)
    (y / "labels").mkdir()
    (y / "labels" / "a.txt").write_text("3 0 0 1 0 1 1\n")
    (y / "data.yaml").write_text("names: {0: a, 1: b}\n")
    with pytest.raises(ValueError, match=r"a\.txt:1: unknown class 3"):
        read_dataset(y)[0]
    (y / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"a\.txt:1: expected a class and >= 3 polygon points"):
        read_dataset(y)[0]

    c = tmp_path / "c"
    write_rgb(c / "images" / "x.png", 30, 40)
    doc = _coco_doc()
    doc["annotations"][0]["category_id"] = 99
    (c / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"instances\.json: annotation 10 has unknown class"):
        read_dataset(c / "instances.json", images_dir=c / "images")


def test_unknown_format_and_split(tmp_path, write_rgb):
    write_rgb(tmp_path / "loose" / "a.png", 4, 4)
    with pytest.raises(ValueError, match="cannot detect the dataset format"):
        read_dataset(tmp_path / "loose")
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset(tmp_path / "loose", format="pascal")


# ------------------------------------------------------------------ real data (skipped when absent)


def test_real_camvid_counts_and_classes(real):
    root = real("camvid")
    assert detect_format(root) == "camvid"
    counts = {s: len(read_dataset(root, split=s)) for s in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    ds = read_dataset(root, min_area=50)
    assert len(ds) == 701 and ds.classes[-1] == "Bicyclist" and len(ds.classes) == 11
    seen = set()
    for i in (0, 367, 700):
        item = ds[i]
        assert item.image.shape == (360, 480, 3) and item.num_objects > 0
        assert item.class_ids.min() >= 0 and item.class_ids.max() <= 10
        assert (item.masks.reshape(item.num_objects, -1).sum(1) >= 50).all()
        assert not (item.masks.any(0) & item.extra.get("ignore", np.zeros((360, 480), bool))).any()
        seen |= set(item.class_ids.tolist())
    assert len(seen) >= 5


def test_real_other_sets(real):
    bsds = read_dataset(real("bsds500"))
    assert detect_format(real("bsds500")) == "bsds500" and len(bsds) == 481
    item = bsds[0]
    assert item.num_objects >= 2 and item.masks.any(0).all()  # regions tile the image
    coco = read_dataset(real("coco_train2017_subsets"))
    assert len(read_dataset(real("coco_train2017_subsets"), split="train")) == 332 and len(coco) == 393
    assert len(coco.classes) == 80
    yolo = read_dataset(real("coco128-seg"))
    assert detect_format(real("coco128-seg")) == "yolo" and len(yolo) == 128
    first = yolo[0]
    lines = (real("coco128-seg") / "labels" / "train2017" / f"{first.name}.txt").read_text().split("\n")
    assert first.num_objects == len([ln for ln in lines if ln.strip()])
    ccp = read_dataset(real("ccp"))
    assert len(ccp) == 1004 and len(ccp.classes) == 59 and ccp[0].class_ids.min() >= 1
    horses = read_dataset(real("weizmann_horse"))
    assert detect_format(real("weizmann_horse")) == "folder" and len(horses) == 328
    assert horses[0].num_objects == 1
