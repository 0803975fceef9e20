import argparse
import json

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.cli import evaluate as commands
from napari_ultratinysam.cli import main as cli
from napari_ultratinysam.evaluation import report
from napari_ultratinysam.evaluation.protocols import evaluate_interactive, evaluate_paper

from .fakes import EmptyPredictor, OraclePredictor, ring, square, toy_dataset

REQUIRED = {"noc@85", "noc@90", "miou@1", "miou@3", "miou@5", "failures@85", "failures@90", "num_objects",
            "miou_curve", "paper_map", "coco_ap"}


def _write_folders(tmp_path):
    """Three image/mask pairs in different formats; returns (images dir, masks dir)."""
    imgs, msks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    msks.mkdir()
    rng = np.random.default_rng(0)
    hw = (300, 260)
    # 1: JPEG image, binary 0/255 mask with a 128 "ignore" band (GrabCut convention)
    m = np.zeros(hw, np.uint8)
    m[square(hw, 50, 50, 150)] = 255
    m[45:50, 50:200] = 128
    Image.fromarray(rng.integers(0, 255, hw + (3,), dtype=np.uint8)).save(imgs / "a.jpg")
    Image.fromarray(m, mode="L").save(msks / "a.png")
    # 2: PNG image, palette mask with two instance ids
    p = np.zeros(hw, np.uint8)
    p[square(hw, 10, 10, 120)] = 1
    p[ring(hw, 200, 160, 80, 40)] = 7
    pal = Image.fromarray(p, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 255, 0] * 254)
    Image.fromarray(rng.integers(0, 255, hw + (3,), dtype=np.uint8)).save(imgs / "b.png")
    pal.save(msks / "b.png")
    # 3: BMP image, 16-bit instance-id mask
    ids = np.zeros(hw, np.uint16)
    ids[square(hw, 100, 20, 150, 200)] = 1000
    Image.fromarray(rng.integers(0, 255, hw + (3,), dtype=np.uint8)).save(imgs / "c.bmp")
    Image.fromarray(ids).save(msks / "c.png")
    (imgs / "notes.txt").write_text("not an image")
    return imgs, msks


def test_masks_from_label_image_conventions():
    g = np.array([[0, 255, 255], [128, 0, 255]], np.uint8)
    masks, ignore = commands.masks_from_label_image(g, "L")
    assert masks.shape == (1, 2, 3) and masks[0].sum() == 3
    np.testing.assert_array_equal(ignore, g == 128)
    masks, ignore = commands.masks_from_label_image(np.array([[0, 1], [128, 1]], np.uint8), "P")
    assert masks.shape[0] == 2 and ignore is None      # 128 is an id in a palette mask
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 0, 255)
    rgb[0, 1] = (255, 0, 0)
    masks, _ = commands.masks_from_label_image(rgb, "RGB")
    assert sorted(m.sum() for m in masks) == [1, 2]
    gray_rgb = np.repeat(g[..., None], 3, axis=2)
    masks, ignore = commands.masks_from_label_image(gray_rgb, "RGB")
    assert masks.shape[0] == 1 and ignore.sum() == 1
    with pytest.raises(ValueError, match="m.png"):
        commands.masks_from_label_image(np.zeros((2, 2, 2, 2)), "L", name="m.png")


def test_folder_pairs_reads_every_format(tmp_path):
    imgs, msks = _write_folders(tmp_path)
    ds = commands.FolderPairs(imgs, msks)
    assert len(ds) == 3
    a, b, c = ds[0], ds[1], ds[2]
    assert [x.name for x in (a, b, c)] == ["a", "b", "c"]
    assert a.num_objects == 1 and a.extra["ignore"].sum() == 5 * 150
    assert b.num_objects == 2 and "ignore" not in b.extra
    assert c.num_objects == 1 and c.masks[0].sum() == 150 * 200
    assert a.image.shape == (300, 260, 3) and a.image.dtype == np.uint8


def test_folder_pairs_errors_name_the_file(tmp_path):
    imgs, msks = _write_folders(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imgs / "lonely.png")
    with pytest.raises(ValueError, match="lonely.png"):
        commands.FolderPairs(imgs, msks)
    (imgs / "lonely.png").unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(msks / "a.png")
    with pytest.raises(ValueError, match="a.png.*does not match"):
        commands.FolderPairs(imgs, msks)[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        commands.FolderPairs(tmp_path / "nowhere", msks)


def _parser():
    p = argparse.ArgumentParser()
    commands.register(p.add_subparsers(dest="command"))
    return p


def test_cli_writes_three_files_with_required_keys(tmp_path, monkeypatch):
    imgs, msks = _write_folders(tmp_path)
    oracle = OraclePredictor(list(commands.FolderPairs(imgs, msks)))
    seen = {}

    def fake_loader(checkpoint=None, onnx=None, flip_tta=False, refine=True):
        seen["args"] = (checkpoint, onnx, flip_tta, refine)
        return oracle

    monkeypatch.setattr(commands, "load_predictor", fake_loader)
    out = tmp_path / "out"
    rc = cli.main(["evaluate", "--images", str(imgs), "--masks", str(msks), "--max-clicks", "6", "--quiet",
                   "-o", str(out)])
    assert rc == 0 and seen["args"] == (None, None, False, True)
    doc = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(doc)
    assert doc["num_objects"] == 4 and doc["noc@85"] == 1.0 and doc["failures@90"] == 0
    assert doc["miou_curve"] == [1.0] * 6
    assert set(doc["paper_map"]) == {"1click", "1click_interior", "3clicks", "5clicks", "box"}
    assert doc["coco_ap"]["box"] == pytest.approx(1.0)
    assert doc["paper_miou"]["1click_interior"] == pytest.approx(1.0)
    md = (out / "metrics.md").read_text()
    assert "| NoC@85 | 1.00 |" in md and "| 1click_interior |" in md
    assert (out / "iou_vs_clicks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    rc = cli.main(["evaluate", "--images", str(imgs), "--masks", str(msks), "--max-clicks", "2", "--quiet",
                   "--protocol", "noc", "--flip-tta", "-o", str(tmp_path / "flip")])
    assert rc == 0 and seen["args"] == (None, None, True, True)
    doc = json.loads((tmp_path / "flip" / "metrics.json").read_text())
    assert doc["flip_tta"] is True and "flip TTA" in (tmp_path / "flip" / "metrics.md").read_text()


def test_cli_protocol_noc_and_argument_errors(tmp_path, monkeypatch, capsys):
    imgs, msks = _write_folders(tmp_path)
    monkeypatch.setattr(commands, "load_predictor", lambda checkpoint=None, onnx=None, **kw: EmptyPredictor())
    out = tmp_path / "o"
    args = _parser().parse_args(["evaluate", "--images", str(imgs), "--masks", str(msks), "--protocol", "noc",
                                 "--max-clicks", "3", "--max-objects", "2", "--quiet", "-o", str(out)])
    assert args.func(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "paper_map" not in doc and doc["num_objects"] == 2
    assert doc["noc@90"] == 3.0 and doc["failures@85"] == 2 and doc["failures@90"] == 2
    rc = cli.main(["evaluate", "--images", str(imgs), "-o", str(out)])
    assert rc == 2 and "--masks" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--images", str(imgs), "--masks", str(msks), "--max-clicks", "0", "-o", str(out)])
    assert rc == 2 and "--max-clicks" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--images", str(imgs), "--masks", str(msks), "--imx500-float", "--flip-tta",
                   "-o", str(out)])
    assert rc == 2 and "--flip-tta does not apply" in capsys.readouterr().err


def test_report_several_runs(tmp_path):
    ds = toy_dataset()
    good = report.run_metrics(evaluate_interactive(OraclePredictor(ds), ds, max_clicks=4, progress=False),
                              evaluate_paper(OraclePredictor(ds), ds, progress=False, min_area_128=50))
    bad = report.run_metrics(evaluate_interactive(EmptyPredictor(), ds, max_clicks=4, progress=False))
    paths = report.write_report(tmp_path, {"float": good, "empty": bad})
    doc = json.loads(paths["json"].read_text())
    assert set(doc["runs"]) == {"float", "empty"}
    assert doc["runs"]["float"]["miou@3"] == 1.0 and doc["runs"]["empty"]["miou@3"] == 0.0
    assert doc["runs"]["empty"]["miou@5"] is None      # fewer clicks than k
    md = paths["md"].read_text()
    assert "| metric | float | empty |" in md and "| failures@90 | 0 | 4 |" in md
    assert paths["png"].stat().st_size > 1000
    with pytest.raises(ValueError, match="runs"):
        report.write_report(tmp_path, {})
