"""Resume never unpickles: a crafted, truncated or foreign OUT/last_state.pt is refused in one line naming it;
bad numbers, devices and output folders in a train config are refused in one line naming the key."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.training.config import load_train_config
from napari_ultratinysam.training.loop import train
from napari_ultratinysam.training.state import TrainStateError, load_train_state, validate_train_config

from .conftest import tiny_overrides


class _Payload:
    """Unpickling this runs os.system: what a crafted state file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained_run(synthetic_dir, tmp_path_factory) -> Path:
    """A finished 2-step run (last.safetensors + last_state.pt) to copy and tamper with."""
    out = tmp_path_factory.mktemp("resume") / "run"
    train(load_train_config(None, tiny_overrides(synthetic_dir, out, steps=2, val_datasets="[]")),
          log=lambda *_: None)
    assert (out / "last_state.pt").is_file() and (out / "last.safetensors").is_file()
    return out


def _train_argv(tmp_path: Path, data: Path, out: Path, **kw) -> list[str]:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("{}\n")
    return ["train", "-c", str(cfg), *tiny_overrides(data, out, val_datasets="[]", **kw)]


def _copy_run(trained_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_crafted_state_file_does_not_run_and_is_one_line(trained_run, synthetic_dir, tmp_path, capsys):
    out = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "payload_ran"
    state = torch.load(out / "last_state.pt", map_location="cpu", weights_only=True)
    state["optimizer"] = _Payload(marker)
    torch.save(state, out / "last_state.pt")
    before = (out / "last.safetensors").read_bytes()

    assert main(_train_argv(tmp_path, synthetic_dir, out, steps=4)) == 2
    err = _one_error_line(capsys)
    assert "last_state.pt" in err and "refused" in err
    assert not marker.exists()  # the payload never ran
    assert (out / "last.safetensors").read_bytes() == before  # nothing was trained over the old run
    with pytest.raises(TrainStateError, match="last_state.pt: refused"):
        load_train_state(out / "last_state.pt")
    assert not marker.exists()
    # the crafted file is live: an unpickling load (what resume used to do) runs it
    torch.load(out / "last_state.pt", map_location="cpu", weights_only=False)
    assert marker.exists()


def test_truncated_state_file_is_one_line(trained_run, synthetic_dir, tmp_path, capsys):
    out = _copy_run(trained_run, tmp_path)
    data = (out / "last_state.pt").read_bytes()
    (out / "last_state.pt").write_bytes(data[: len(data) // 3])
    assert main(_train_argv(tmp_path, synthetic_dir, out, steps=4)) == 2
    err = _one_error_line(capsys)
    assert "last_state.pt" in err and "cannot be read" in err


@pytest.mark.parametrize("edit, field", [
    (lambda st: st.__setitem__("step", "three"), "step"),
    (lambda st: st.pop("optimizer"), "optimizer"),
    (lambda st: st.__setitem__("torch_rng", torch.zeros(3)), "torch_rng"),
    (lambda st: st.__setitem__("elapsed", float("nan")), "elapsed"),
])
def test_state_file_with_a_bad_field_is_one_line(trained_run, synthetic_dir, tmp_path, capsys, edit, field):
    out = _copy_run(trained_run, tmp_path)
    st = torch.load(out / "last_state.pt", map_location="cpu", weights_only=True)
    edit(st)
    torch.save(st, out / "last_state.pt")
    assert main(_train_argv(tmp_path, synthetic_dir, out, steps=4)) == 2
    err = _one_error_line(capsys)
    assert "last_state.pt" in err and field in err


def test_state_of_another_optimizer_is_one_line(trained_run, synthetic_dir, tmp_path, capsys):
    out = _copy_run(trained_run, tmp_path)
    st = torch.load(out / "last_state.pt", map_location="cpu", weights_only=True)
    st["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(st, out / "last_state.pt")
    assert main(_train_argv(tmp_path, synthetic_dir, out, steps=4)) == 2
    err = _one_error_line(capsys)
    assert "last_state.pt" in err and "does not fit this run" in err


def test_a_good_state_file_still_resumes(trained_run, synthetic_dir, tmp_path):
    out = _copy_run(trained_run, tmp_path)
    msgs = []
    s = train(load_train_config(None, tiny_overrides(synthetic_dir, out, steps=3, val_datasets="[]")),
              log=msgs.append)
    assert s["steps"] == 3 and any("resumed" in m and "step 2" in m for m in msgs)


# ------------------------------------------------------------------ the train config


@pytest.mark.parametrize("override, key", [
    ("steps=-3", "steps"), ("batch_size=0", "batch_size"), ("lr=-1e-3", "lr"), ("lr=0", "lr"),
    ("objects_per_image=0", "objects_per_image"), ("warmup_steps=-1", "warmup_steps"),
    ("ckpt_every=-5", "ckpt_every"), ("prompts.p_box=1.5", "prompts.p_box"),
    ("prompts.correction_rounds=-1", "prompts.correction_rounds"), ("data.scale_min=0", "data.scale_min"),
    ("loss.dice=-1", "loss.dice"), ("lr=.nan", "lr"), ("epochs=-1", "epochs"),
    ("steps=0", "steps"),  # 0 means "from epochs", and epochs is 0 too
])
def test_bad_numbers_in_a_train_config_are_one_line_naming_the_key(synthetic_dir, tmp_path, capsys, override, key):
    out = tmp_path / "run"
    assert main(_train_argv(tmp_path, synthetic_dir, out) + [override]) == 2
    err = _one_error_line(capsys)
    assert f"key {key}:" in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("device", ["gpu7", "cuda:x", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_bad_device_is_one_line(synthetic_dir, tmp_path, capsys, device):
    assert main(_train_argv(tmp_path, synthetic_dir, tmp_path / "run") + [f"device={device}"]) == 2
    err = _one_error_line(capsys)
    assert "key device:" in err and device in err


def test_out_dir_that_is_a_file_is_one_line(synthetic_dir, tmp_path, capsys):
    f = tmp_path / "not_a_folder"
    f.write_text("keep me")
    assert main(_train_argv(tmp_path, synthetic_dir, f)) == 2
    err = _one_error_line(capsys)
    assert "out_dir" in err and "not_a_folder" in err
    assert f.read_text() == "keep me"
    under = f / "run"
    assert main(_train_argv(tmp_path, synthetic_dir, under)) == 2
    assert "out_dir" in _one_error_line(capsys)


def test_the_shipped_training_presets_pass_validation():
    repo = Path(__file__).resolve().parents[2]
    for preset in sorted((repo / "model" / "configs").glob("*.yaml")):
        validate_train_config(load_train_config(preset, ["device=cpu"]))
