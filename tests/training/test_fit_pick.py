"""`utsam fit-pick`: a checkpoint gains a learned candidate pick fitted on a dataset's training split."""
import json

import numpy as np
import pytest

from napari_ultratinysam.cli.main import main
from napari_ultratinysam.core.config import PICK_FEATURES
from napari_ultratinysam.model.build import build_model
from napari_ultratinysam.model.checkpoints import read_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(build_model("tiny_test"), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_fit_pick_writes_a_checkpoint_that_carries_the_pick(tiny_ckpt, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "picked.safetensors"
    before = tiny_ckpt.read_bytes()
    rc = main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--dataset", str(synthetic_dir), "--format", "folder",
               "--split", "train", "--val-split", "val", "--min-area", "50", "--max-images", "10",
               "--out", str(out)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fit_prompts"] >= 30 and report["val_prompts"] >= 30  # 3 clicks per object
    assert 0 <= report["fit_iou_by_score"] <= 1 and 0 <= report["val_iou_by_pick"] <= 1
    # fitted to choose the better candidate on its own data: not worse than the predicted IoU there
    assert report["fit_iou_by_pick"] >= report["fit_iou_by_score"] - 0.02
    assert tiny_ckpt.read_bytes() == before  # the input checkpoint is untouched
    cfg, sd, extra = read_checkpoint(out)
    _, sd0, _ = read_checkpoint(tiny_ckpt)
    assert cfg.candidate_pick is not None and cfg.candidate_pick.features == list(PICK_FEATURES)
    assert "train" in extra["candidate_pick"]
    assert set(sd) == set(sd0) and all(np.array_equal(sd[k].numpy(), sd0[k].numpy()) for k in sd)

    from napari_ultratinysam.inference.predictor import Predictor

    p = Predictor.from_checkpoint(out)
    p.set_image(np.zeros((96, 128, 3), np.uint8))
    r = p.predict(points=[[64, 48]], labels=[1])
    assert r.features is not None and len(r) == 3


def test_fit_pick_bad_input_is_one_line(tiny_ckpt, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["fit-pick", "--checkpoint", str(tmp_path / "nope.safetensors"), "--dataset", str(synthetic_dir),
                 "--out", str(out)]) == 2
    assert "--checkpoint file does not exist" in capsys.readouterr().err
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--dataset", str(synthetic_dir), "--format", "folder",
                 "--hidden", "0", "--out", str(out)]) == 2
    assert "--hidden" in capsys.readouterr().err
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--dataset", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--dataset", str(synthetic_dir), "--format", "folder",
                 "--clicks", "centre,corner", "--out", str(out)]) == 2
    assert "--clicks: unknown ['corner']" in capsys.readouterr().err
    assert not out.exists()


def test_fit_pick_on_a_training_configs_datasets(tiny_ckpt, synthetic_dir, tmp_path, capsys):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(f"train:\n  datasets:\n"
                   f"    - {{path: {synthetic_dir}, format: folder, split: train, max_images: 6}}\n"
                   f"  val_datasets:\n    - {{path: {synthetic_dir}, format: folder, split: val}}\n")
    out = tmp_path / "c.safetensors"
    rc = main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--out", str(out), "-c", str(cfg), "--min-area", "50",
               "--max-images", "4"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fit_prompts"] >= 12 and report["val_prompts"] >= 12
    cfg_out, _, _ = read_checkpoint(out)
    assert cfg_out.candidate_pick.fitted_on.startswith(synthetic_dir.name + " train")
    # a test split is refused; -c and --dataset exclude each other; overrides need -c
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--out", str(out), "-c", str(cfg),
                 "datasets=[{path: " + str(synthetic_dir) + ", format: folder, split: test}]"]) == 2
    assert "test split" in capsys.readouterr().err
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--out", str(out), "-c", str(cfg),
                 "--dataset", str(synthetic_dir)]) == 2
    assert "either -c CONFIG" in capsys.readouterr().err
    assert main(["fit-pick", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--dataset", str(synthetic_dir),
                 "lr=1"]) == 2
    assert "need -c CONFIG" in capsys.readouterr().err
