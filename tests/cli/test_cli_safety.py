"""The CLI's one error boundary: bad input, crafted files and resource limits give one line and exit code 2."""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ultratinysam.cli import predict as core_commands
from napari_ultratinysam.cli.main import main
from napari_ultratinysam.model.checkpoints import CheckpointError, read_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
    return p


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _rewrite_metadata(src: Path, dst: Path, config_edit=None, extra_raw: str | None = None, tensor_edit=None):
    """A copy of checkpoint ``src`` with edited config JSON / extra metadata / weights (a crafted file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys()}
    if config_edit is not None:
        cfg = json.loads(meta["config"])
        config_edit(cfg)
        meta["config"] = json.dumps(cfg)
    if extra_raw is not None:
        meta["extra"] = extra_raw
    if tensor_edit is not None:
        tensor_edit(sd)
    save_file(sd, str(dst), metadata=meta)
    return dst


def _bomb_png(path: Path, side: int = 40000) -> Path:
    """A tiny PNG whose header claims side x side pixels (far past PIL's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ parse-time refusals


def test_negative_threads_refused_at_parse_time_in_one_line(img, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", str(img), "--point", "5,5", "--threads", "-3", "-o", str(tmp_path / "m.png")])
    assert e.value.code == 2
    err = _one_error_line(capsys)
    assert "--threads" in err and "-3" in err
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------ outputs


def test_segment_output_that_is_a_folder_is_one_line(img, ckpt, tmp_path, capsys):
    out = tmp_path / "outdir"
    out.mkdir()
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(ckpt), "-o", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "-o" in err and "outdir" in err and "folder" in err
    assert out.is_dir() and not list(out.iterdir())


def test_segment_output_under_a_file_is_one_line(img, ckpt, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(ckpt),
                 "-o", str(blocker / "m.png")]) == 2
    err = _one_error_line(capsys)
    assert "file.txt" in err and "-o" in err
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_segment_output_in_a_read_only_folder_is_one_line(img, ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(ckpt), "-o", str(ro / "m.png")]) == 2
    finally:
        ro.chmod(0o755)
    err = _one_error_line(capsys)
    assert "not writable" in err and "ro" in err


def test_fit_pick_refuses_a_folder_as_out_before_the_fit(ckpt, tmp_path, capsys, monkeypatch):
    from napari_ultratinysam.cli import train as train_commands

    called = []
    monkeypatch.setattr(train_commands, "_pick_data", lambda *a, **k: called.append(1))
    out = tmp_path / "outdir"
    out.mkdir()
    assert main(["fit-pick", "--checkpoint", str(ckpt), "--dataset", str(tmp_path), "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "--out" in err and "outdir" in err
    assert not called  # refused before any data were read or fitted


# ------------------------------------------------------------------ inputs


def test_decompression_bomb_is_one_line_naming_the_file(ckpt, tmp_path, capsys):
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert main(["segment", str(bomb), "--point", "5,5", "--checkpoint", str(ckpt),
                 "-o", str(tmp_path / "m.png")]) == 2
    err = _one_error_line(capsys)
    assert "bomb.png" in err and "too many pixels" in err
    assert not (tmp_path / "m.png").exists()


def test_decompression_bomb_in_an_evaluation_folder_is_one_line(tmp_path, capsys):
    imgs, msks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    msks.mkdir()
    _bomb_png(imgs / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(msks / "a.png")
    assert main(["evaluate", "--images", str(imgs), "--masks", str(msks), "--quiet",
                 "-o", str(tmp_path / "report")]) == 2
    err = _one_error_line(capsys)
    assert "a.png" in err and "too many pixels" in err


def test_image_that_is_a_folder_is_one_line(ckpt, tmp_path, capsys):
    d = tmp_path / "pics.png"
    d.mkdir()
    assert main(["segment", str(d), "--point", "5,5", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.png")]) == 2
    assert "pics.png" in _one_error_line(capsys)


def test_out_of_memory_is_one_line(img, ckpt, tmp_path, capsys, monkeypatch):
    def no_memory(path):
        raise MemoryError(f"image {path}: not enough memory to decode it")

    monkeypatch.setattr(core_commands, "read_image", no_memory)
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.png")]) == 2
    err = _one_error_line(capsys)
    assert "out of memory" in err and "img.png" in err


def test_permission_error_names_the_file(img, ckpt, tmp_path, capsys, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(core_commands, "read_image", denied)
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.png")]) == 2
    err = _one_error_line(capsys)
    assert f"{img}: Permission denied" in err


# ------------------------------------------------------------------ unexpected failures and --debug


def test_unexpected_error_is_one_line_with_a_debug_hint_and_debug_reraises(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something deep\nwith a second line")

    monkeypatch.setattr(core_commands, "cmd_info", broken)
    assert main(["info"]) == 1
    err = _one_error_line(capsys)
    assert "RuntimeError" in err and "something deep" in err and "rerun with --debug" in err
    with pytest.raises(RuntimeError, match="something deep"):
        main(["--debug", "info"])
    with pytest.raises(RuntimeError, match="something deep"):
        main(["info", "--debug"])


def test_cli_subprocess_has_no_traceback(tmp_path):
    bomb = _bomb_png(tmp_path / "bomb.png")
    r = subprocess.run([sys.executable, "-m", "napari_ultratinysam.cli", "segment", str(bomb), "--point", "1,1",
                        "-o", str(tmp_path / "m.png")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bomb.png" in lines[0] and "Traceback" not in r.stderr


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("field, value", [("image_size", 0), ("image_size", -128), ("image_size", 100),
                                          ("image_size", 10 ** 9), ("decoder_heads", 0), ("trunk", "resnet"),
                                          ("trunk_depths", [1, 0])])
def test_checkpoint_with_insane_config_is_one_line(ckpt, img, tmp_path, capsys, field, value):
    bad = _rewrite_metadata(ckpt, tmp_path / "bad.safetensors", config_edit=lambda c: c.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=rf"bad.safetensors: config field {field}"):
        read_checkpoint(bad)
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(bad), "-o", str(tmp_path / "m.png")]) == 2
    err = _one_error_line(capsys)
    assert "bad.safetensors" in err and field in err


def test_checkpoint_with_unknown_key_or_bad_extra_is_one_line(ckpt, tmp_path, capsys):
    unknown = _rewrite_metadata(ckpt, tmp_path / "unknown.safetensors",
                                config_edit=lambda c: c.__setitem__("evil", 1))
    with pytest.raises(CheckpointError, match=r"unknown.safetensors: .*evil"):
        read_checkpoint(unknown)
    extra = _rewrite_metadata(ckpt, tmp_path / "extra.safetensors", extra_raw="{not json")
    assert main(["info", "--checkpoint", str(extra)]) == 2
    err = _one_error_line(capsys)
    assert "extra.safetensors" in err and "extra" in err
    listy = _rewrite_metadata(ckpt, tmp_path / "listy.safetensors", extra_raw="[1, 2]")
    with pytest.raises(CheckpointError, match=r"listy.safetensors: metadata field extra"):
        read_checkpoint(listy)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_at_load(ckpt, img, tmp_path, capsys, bad_value):
    def poison(sd):
        k = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
        sd[k] = sd[k].clone()
        sd[k].view(-1)[0] = bad_value

    bad = _rewrite_metadata(ckpt, tmp_path / "nan.safetensors", tensor_edit=poison)
    out = tmp_path / "m.png"
    assert main(["segment", str(img), "--point", "5,5", "--checkpoint", str(bad), "-o", str(out)]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and "nan.safetensors" in err and "NaN or infinite" in err
    assert "nan" not in cap.out.lower() and not out.exists()  # no "IoU nan", no mask


def test_candidate_pick_with_nan_is_refused(tiny_model, tmp_path):
    from napari_ultratinysam.core.config import PICK_FEATURES

    p = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    n = len(PICK_FEATURES)

    def add_pick(c):
        c["candidate_pick"] = {"features": list(PICK_FEATURES), "mean": [0.0] * n, "std": [1.0] * n,
                               "w1": [float("nan")] * (2 * n), "b1": [0.0, 0.0], "w2": [1.0, 1.0], "b2": 0.0}

    bad = _rewrite_metadata(p, tmp_path / "pick.safetensors", config_edit=add_pick)
    with pytest.raises(CheckpointError, match=r"pick.safetensors: config field candidate_pick.w1"):
        read_checkpoint(bad)


def test_checkpoints_get_the_users_umask(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        p = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        q = save_checkpoint(tiny_model, tmp_path / "q.safetensors")
        assert q.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# ------------------------------------------------------------------ huge images


_PEAK_SCRIPT = r"""
import resource, sys
import numpy as np
from napari_ultratinysam.core.transforms import prepare_image, to_rgb_uint8
kind = sys.argv[1]
h, w = 9000, 8000
if kind == "uint8":
    a = np.empty((h, w, 3), np.uint8)
    a[:] = np.arange(w, dtype=np.uint8)[None, :, None]
    a.flags.writeable = False  # as np.asarray of a PIL image is
else:
    a = np.empty((h, w, 3), np.uint16)
    a[:] = (np.arange(w, dtype=np.uint16) * 7)[None, :, None]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if kind == "uint8":
    x, geo = prepare_image(a, 128)
    assert x.shape == (1, 3, 128, 128) and geo.new_hw == (128, 114), (x.shape, geo.new_hw)
else:
    out = to_rgb_uint8(a)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, a.nbytes)
"""


@pytest.mark.parametrize("kind", ["uint8", "uint16"])
def test_huge_image_is_prepared_without_a_float_copy(kind):
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    grown, nbytes = (int(v) for v in r.stdout.split())
    values = nbytes // np.dtype(kind).itemsize
    # a float32 copy of the whole image would add 4 bytes per value; the uint8 output of the uint16 conversion
    # needs 1 byte per value
    allowed = values // 4 if kind == "uint8" else values + values // 4
    assert grown < allowed, (grown, allowed)


def test_segment_point_outside_the_image_is_one_line(img, ckpt, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["segment", str(img), "--point", "5000,5", "--checkpoint", str(ckpt), "-o", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "outside the image" in err and "5000" in err
    assert not out.exists()
