"""Training shards: round trip, min_area filtering at shard resolution, drops, sharding, CLI and real data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ultratinysam.core.transforms import letterbox, letterbox_masks
from napari_ultratinysam.data.readers import detect_format, read_dataset
from napari_ultratinysam.data.shards import ShardDataset, preprocess
from napari_ultratinysam.data.types import AnnotatedImage


def _items() -> list[AnnotatedImage]:
    """256x192 images (scale 0.5 at size 128): box areas shrink 4x."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(5):
        img = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
        boxes = [(0, 40, 0, 40), (100, 120, 100, 120), (150, 190, 200, 250)]  # 1600, 400, 2000 px
        if k == 3:
            boxes = [(0, 10, 0, 10)]  # all objects tiny -> image dropped
        masks = np.zeros((len(boxes), 192, 256), bool)
        for m, (y0, y1, x0, x1) in zip(masks, boxes):
            m[y0:y1, x0:x1] = True
        if k == 4:
            masks = masks[:0]  # no objects at all -> image dropped
        extra = {"split": "train" if k % 2 == 0 else "val"}
        if k == 0:
            extra["ignore"] = np.zeros((192, 256), bool)
            extra["ignore"][:, -20:] = True
        out.append(AnnotatedImage(img, masks, np.arange(len(masks)), name=f"im{k}", extra=extra))
    return out


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_round_trip_and_min_area(tmp_path, codec):
    items = _items()
    s = preprocess(items, tmp_path / "sh", size=128, min_area=150, codec=codec, shard_size=2, progress=False)
    assert (s.images_in, s.images_kept) == (5, 3)
    assert s.images_dropped == {"no objects in source": 1, "all objects under min_area": 1}
    # kept per image: 1600/4=400 and 2000/4=500 px; 400/4=100 px < 150 dropped
    assert (s.objects_in, s.objects_kept, s.objects_dropped_small) == (10, 6, 4) and s.shards == 2
    ds = ShardDataset(tmp_path / "sh")
    assert len(ds) == 3 and ds.names == ["im0", "im1", "im2"] and ds.size == 128
    for item, src in zip(ds, [items[0], items[1], items[2]]):
        ref_img, geo = letterbox(src.image, 128)
        ref_masks = letterbox_masks(src.masks, 128)
        keep = ref_masks.reshape(len(ref_masks), -1).sum(1) >= 150
        assert np.array_equal(item.masks, ref_masks[keep]) and item.class_ids.tolist() == [0, 2]
        assert item.extra["valid_hw"] == geo.new_hw == (96, 128) and item.extra["orig_hw"] == (192, 256)
        if codec == "raw":
            assert np.array_equal(item.image, ref_img)
        else:
            assert np.abs(item.image.astype(int) - ref_img).mean() < 12  # random noise is JPEG's worst case
            assert not item.image[96:].any()  # padding stays exactly zero
    assert ds[0].extra["ignore"].sum() == 96 * 10 and "ignore" not in ds[1].extra
    assert ShardDataset(tmp_path / "sh", split="val").names == ["im1"]
    assert ShardDataset(tmp_path / "sh", min_area=450)[0].num_objects == 1
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert index["num_images"] == 3 and [sh["images"] for sh in index["shards"]] == [2, 1]
    assert detect_format(tmp_path / "sh") == "shards" and len(read_dataset(tmp_path / "sh")) == 3


def test_rerun_replaces_and_refuses_foreign_folder(tmp_path):
    items = _items()
    preprocess(items, tmp_path / "sh", shard_size=1, progress=False)
    assert len(list((tmp_path / "sh").glob("*.npz"))) == 3
    preprocess(items[:1], tmp_path / "sh", progress=False)
    assert len(list((tmp_path / "sh").glob("*.npz"))) == 1 and len(ShardDataset(tmp_path / "sh")) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other: folder is not empty"):
        preprocess(items, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="codec"):
        preprocess(items, tmp_path / "x", codec="webp", progress=False)
    with pytest.raises(FileNotFoundError, match="index.json"):
        ShardDataset(tmp_path / "other")


def test_cli_preprocess_folder_dataset(tmp_path, write_rgb, write_array, capsys):
    from napari_ultratinysam.cli.main import main

    root = tmp_path / "horses"
    for k in range(3):
        write_rgb(root / "images" / f"h{k}.jpg", 100, 200, seed=k)
        mask = np.zeros((100, 200), np.uint8)
        mask[10:90, 20:20 + 40 * (k + 1)] = 255
        write_array(root / "masks" / f"h{k}.png", mask)
    assert main(["preprocess", str(root), "-o", str(tmp_path / "sh"), "--size", "64", "--min-area", "400",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 read, 2 kept" in out and "1 all objects under min_area" in out
    ds = ShardDataset(tmp_path / "sh")
    assert ds.names == ["h1", "h2"] and ds[0].image.shape == (64, 64, 3) and ds[0].extra["valid_hw"] == (32, 64)
    assert main(["preprocess", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")]) == 2


def test_real_camvid_and_coco_subsets(real):
    cam = read_dataset(real("camvid"), split="val")
    items = [cam[i] for i in range(3)]
    coco = read_dataset(real("coco_train2017_subsets"), split="val")
    items += [coco[i] for i in range(3)]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = preprocess(items, tmp, progress=False)
        assert s.images_in == 6 and s.images_kept >= 5 and s.objects_kept > 0
        assert s.objects_dropped_small > 0  # CamVid has many tiny components
        ds = ShardDataset(tmp)
        for item in ds:
            assert item.masks.reshape(item.num_objects, -1).sum(1).min() >= 150
            vh, vw = item.extra["valid_hw"]
            assert max(vh, vw) == 128 and not item.masks[:, vh:].any() and not item.masks[:, :, vw:].any()
        cam_item = ds[0]
        assert cam_item.extra["orig_hw"] == (360, 480) and cam_item.class_ids.max() <= 10
