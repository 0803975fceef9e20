"""The Fine-tune panel's engine (no Qt) and the panel itself (Qt, under Xvfb)."""
import time

import numpy as np
import pytest

from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.types import AnnotatedImage
from napari_ultratinysam.model.checkpoints import save_checkpoint
from napari_ultratinysam.training.job import FinetuneJob, finetune_config


def _toy_export(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        img = (rng.random((64, 80, 3)) * 60).astype(np.uint8)
        yy, xx = np.mgrid[:64, :80]
        cx, cy, r = rng.integers(20, 60), rng.integers(20, 44), rng.integers(8, 16)
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        img[m] = (200, 60, 40)
        items.append(AnnotatedImage(image=img, masks=m[None], class_ids=np.array([0]), name=f"img{i:02d}"))
    out = tmp_path / "export"
    export_dataset(items, out, ratios=(0.75, 0.25, 0.0), classes=["disc"], colors=[(200, 60, 40)])
    return out


def test_finetune_config_points_at_the_export(tmp_path, tiny_model):
    ds = _toy_export(tmp_path)
    ck = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    cfg = finetune_config(ds, ck, steps=20)
    assert cfg.init_checkpoint == str(ck) and cfg.steps == 20
    assert cfg.datasets[0].path == str(ds) and cfg.datasets[0].split == "train"
    with pytest.raises(ValueError, match="not a CamVid-style export"):
        finetune_config(tmp_path, ck)
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        finetune_config(ds, tmp_path / "nope.safetensors")


def test_finetune_job_runs_in_a_background_process_and_reports(tmp_path, tiny_model):
    ds = _toy_export(tmp_path)
    ck = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    cfg = finetune_config(ds, ck, steps=6, out_dir=tmp_path / "run", batch_size=2)
    job = FinetuneJob(cfg).start()
    deadline = time.time() + 240
    while not job.finished and time.time() < deadline:
        job.poll()
        time.sleep(0.2)
    assert job.error is None, job.error
    assert job.summary is not None
    steps = [d["step"] for d in job.history if d.get("event") == "train"]
    assert steps and max(steps) == 6
    assert job.best_checkpoint() is not None and job.best_checkpoint().is_file()
