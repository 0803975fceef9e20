"""Faults while `utsam train` writes its checkpoints: SIGKILLs at random points leave a state that resumes (the
weights and optimizer of one step, float32), and a full disk ends the run in one line with the last good state kept.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_ultratinysam.model.checkpoints import load_model
from napari_ultratinysam.training.config import load_train_config
from napari_ultratinysam.training.loop import train
from napari_ultratinysam.training.state import load_train_state

from .conftest import tiny_overrides

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs signals")


def _argv(tmp_path: Path, data: Path, out: Path, **kw) -> list[str]:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("{}\n")
    return [sys.executable, "-m", "napari_ultratinysam.cli", "train", "-c", str(cfg),
            *tiny_overrides(data, out, val_datasets="[]", **kw)]


def _check_resumable(out: Path) -> int:
    """The files a killed run left: the state loads and carries its own weights; the checkpoint (if any) loads."""
    st = load_train_state(out / "last_state.pt")
    assert st.get("model"), "the state holds no weights"
    assert all(v.dtype == torch.float32 for v in st["model"].values() if v.is_floating_point())
    if (out / "last.safetensors").is_file():
        load_model(out / "last.safetensors")
    return int(st["step"])


@posix_only
def test_sigkill_during_checkpointing_always_leaves_a_resumable_state(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    steps = 400
    argv = _argv(tmp_path, synthetic_dir, out, steps=steps, ckpt_every=1, save_half="true")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    seen = []
    for _ in range(3):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        before = (out / "last_state.pt").stat().st_mtime_ns if (out / "last_state.pt").exists() else None
        t_end = time.monotonic() + 240
        while time.monotonic() < t_end and proc.poll() is None:  # wait for a checkpoint of this run
            p = out / "last_state.pt"
            if p.exists() and p.stat().st_mtime_ns != before:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the next steps and their checkpoint writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        proc.stderr.close()
        seen.append(_check_resumable(out))
    assert seen == sorted(seen) and seen[-1] > 0, seen  # every run resumed from the previous one's state
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {out / 'last.safetensors'} at step {seen[-1]}" in r.stdout + r.stderr
    assert load_train_state(out / "last_state.pt")["step"] == steps


def test_resume_takes_the_float32_weights_of_the_state(synthetic_dir, tmp_path):
    """With save_half the checkpoint is fp16; resuming from it would round the weights. The state's float32
    weights are what a resumed run starts from."""
    out = tmp_path / "run"
    train(load_train_config(None, tiny_overrides(synthetic_dir, out, steps=2, val_datasets="[]",
                                                 save_half="true")), log=lambda *_: None)
    first = load_train_state(out / "last_state.pt")["model"]
    ckpt = load_model(out / "last.safetensors").state_dict()
    assert any(not torch.equal(first[k], ckpt[k].float()) for k in first)  # fp16 rounding is visible
    train(load_train_config(None, tiny_overrides(synthetic_dir, out, steps=2, val_datasets="[]",
                                                 save_half="true")), log=lambda *_: None)
    again = load_train_state(out / "last_state.pt")["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_full_disk_ends_training_in_one_line_and_keeps_the_last_state(synthetic_dir, tmp_path, small_disk,
                                                                        fill_disk):
    disk = small_disk(40 * 1024)
    out = disk / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_argv(tmp_path, synthetic_dir, out, steps=2, ckpt_every=1,
                             cache_dir=str(tmp_path / "cache")), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    state = (out / "last_state.pt").read_bytes()
    filler = fill_disk(disk)
    r = subprocess.run(_argv(tmp_path, synthetic_dir, out, steps=6, ckpt_every=1,
                             cache_dir=str(tmp_path / "cache")), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in r.stderr and "No space left" in lines[0], r.stderr[-2000:]
    assert str(out) in lines[0]
    assert (out / "last_state.pt").read_bytes() == state  # the last good state, untouched
    filler.unlink()
    r = subprocess.run(_argv(tmp_path, synthetic_dir, out, steps=6, ckpt_every=1,
                             cache_dir=str(tmp_path / "cache")), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_train_state(out / "last_state.pt")["step"] == 6
