from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_synthetic(root: Path, n_train: int = 24, n_val: int = 8, seed: int = 0) -> Path:
    """Coloured discs and rectangles on noise, instance-id masks (folder format, train/ and val/ splits)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = 96, 128
            img = rng.integers(0, 80, size=(h, w, 3)).astype(np.uint8)
            ids = np.zeros((h, w), np.uint8)
            yy, xx = np.mgrid[:h, :w]
            for k in range(1, int(rng.integers(2, 4)) + 1):
                colour = rng.integers(120, 256, size=3)
                if rng.random() < 0.5:
                    cy, cx, r = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(8, 18)
                    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                else:
                    y0, x0 = rng.integers(0, h - 30), rng.integers(0, w - 40)
                    m = np.zeros((h, w), bool)
                    m[y0:y0 + rng.integers(12, 30), x0:x0 + rng.integers(12, 40)] = True
                img[m] = colour
                ids[m] = k
            Image.fromarray(img).save(root / split / "images" / f"{split}{i:03d}.png")
            Image.fromarray(ids, mode="L").save(root / split / "masks" / f"{split}{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


def tiny_overrides(data: Path, out: Path, **kw) -> list[str]:
    base = {
        "model": "tiny_test", "threads": 1, "batch_size": 4, "objects_per_image": 2, "lr": 2e-3,
        "warmup_steps": 5, "log_every": 2, "val_every": 0, "ckpt_every": 0, "val_images": 0,
        "prompts.correction_rounds": 1, "data.copy_paste_p": 0.2, "resume": "true", "out_dir": str(out),
        "cache_dir": str(out.parent / "cache"),
        "datasets": f"[{{path: {data}, format: folder, split: train}}]",
        "val_datasets": f"[{{path: {data}, format: folder, split: val}}]",
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (a torchrun run with two processes)")
