import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.model.checkpoints import save_checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")


def test_info_prints_parameters_and_macs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "5,338,513" in out and "GMACs" in out and "0.310" in out


def test_segment_writes_a_mask_png(tmp_path, ckpt, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "mask.png"
    rc = main(["segment", str(img), "--point", "40,30", "--point", "10,10,0", "--box", "5,5,80,55",
               "--checkpoint", str(ckpt), "-o", str(out)])
    assert rc == 0
    m = np.asarray(Image.open(out))
    assert m.shape == (60, 90) and set(np.unique(m)) <= {0, 255}
    assert "predicted IoU" in capsys.readouterr().out


def test_segment_with_onnx_backend_matches_torch(tmp_path, ckpt):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    outs = []
    for backend in ("torch", "onnx"):
        o = tmp_path / f"{backend}.png"
        assert main(["segment", str(img), "--point", "30,30", "--checkpoint", str(ckpt), "--backend", backend,
                     "-o", str(o)]) == 0
        outs.append(np.asarray(Image.open(o)) > 0)
    a, b = outs
    union = (a | b).sum()
    assert union == 0 or (a & b).sum() / union >= 0.99


@pytest.mark.parametrize("argv, msg", [
    (["segment", "missing.png", "--point", "1,1", "-o", "m.png"], "missing.png does not exist"),
    (["segment", "x.png", "-o", "m.png"], "give at least one --point"),
])
def test_segment_errors_are_one_line(tmp_path, argv, msg, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_bad_point_syntax_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.png", "--point", "1;2", "-o", "m.png"])
    assert "expected X,Y or X,Y,LABEL" in capsys.readouterr().err


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert main(["segment", str(img), "--point", "1,1", "--checkpoint", str(bad), "-o", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors: not a readable safetensors file" in err
    assert not (tmp_path / "m.png").exists()


def test_segment_with_flip_tta(tmp_path, ckpt, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "mask.png"
    assert main(["segment", str(img), "--point", "30,30", "--checkpoint", str(ckpt), "--flip-tta",
                 "-o", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (64, 80)
