"""Calibration data for the IMX500 quantization: THE loader (PTQ statistics, QAT targets, agreement images).

:func:`load_calibration` reads representative images from the user's dataset (default 128, the train split when
there is one), letterboxed by ``transforms``, with their GT masks for QAT. The int8 desktop path
(``inference/int8.py``) keeps its own plain-RGB images: it runs in the torch-free base install, a layer below this.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_ultratinysam.compression.common import Progress, QuantizationError, report
from napari_ultratinysam.compression.deploy_graph import to_graph_input
from napari_ultratinysam.core.transforms import letterbox, letterbox_masks, to_rgb_uint8

log = logging.getLogger(__name__)


@dataclass
class CalibrationSample:
    """One letterboxed model-size image with its GT masks (may be empty) and the non-padding area."""

    image: np.ndarray  # (S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) bool
    valid: np.ndarray  # (S, S) bool
    name: str = ""

    @property
    def input(self) -> torch.Tensor:
        return to_graph_input(self.image)


def _sample(image: np.ndarray, masks: np.ndarray | None, size: int, name: str) -> CalibrationSample:
    rgb = to_rgb_uint8(image, name=name)
    boxed, geo = letterbox(rgb, size)
    if masks is None or len(masks) == 0:
        m = np.zeros((0, size, size), bool)
    else:
        m = letterbox_masks(np.asarray(masks, bool), size)
    nh, nw = geo.new_hw
    valid = np.zeros((size, size), bool)
    valid[:nh, :nw] = True
    return CalibrationSample(boxed, m, valid, name)


def _builtin_images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photos (no download): the fallback when no calibration data is given."""
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "moon",
                 "page", "text", "colorwheel", "logo", "cat"):
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - an image that needs a download is skipped
            continue
        out.append((name, img))
    return out


def default_calibration_source() -> Path | None:
    """The bundled sample data, when it holds anything; else None (scikit-image photos are used)."""
    from napari_ultratinysam.core.paths import SAMPLE_DIR

    p = SAMPLE_DIR
    if p.is_dir() and any(c for c in p.iterdir() if not c.name.startswith(".")):
        return p
    return None


_MASK_SUFFIXES = ("_instances", "_instance", "_mask", "_masks", "_labels", "_label", "_ids")


def _image_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """Plain image folder: (image, its ``<stem>_instances.png`` id map or None); the id maps are not images."""
    from napari_ultratinysam.data.readers._common import IMAGE_EXTS

    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                   and not f.name.startswith("."))
    out = []
    for f in files:
        if f.stem.lower().endswith(_MASK_SUFFIXES):
            continue
        ids = next((c for c in (folder / f"{f.stem}{sfx}.png" for sfx in _MASK_SUFFIXES) if c.is_file()), None)
        out.append((f, ids))
    return out


def _open_source(source: str | Path, split: str | None):
    """A dataset (any reader format, the train split when present) or a plain folder of images."""
    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.data.readers._common import IMAGE_EXTS

    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"calibration data {p}: not found")
    if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
        return [(p, None)]
    try:
        if split is None:
            try:
                return read_dataset(p, split="train")
            except ValueError as e:
                if "no split" not in str(e):
                    raise
        return read_dataset(p, split=split)
    except ValueError:
        if p.is_dir():
            files = _image_files(p)
            if files:
                return files
        raise


def _read_item(item) -> tuple[str, np.ndarray, np.ndarray | None]:
    if isinstance(item, tuple):
        from PIL import Image

        path, ids_path = item
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
            masks = None
            if ids_path is not None:
                with Image.open(ids_path) as im:
                    ids = np.asarray(im)
                if ids.ndim == 2 and ids.shape == img.shape[:2]:
                    masks = np.stack([ids == v for v in np.unique(ids) if v != 0]) if ids.any() else None
        except OSError as e:
            raise QuantizationError(f"calibration image {path}: cannot be read ({e})") from None
        return path.stem, img, masks
    return item.name, item.image, item.masks


def load_calibration(source: str | Path | None = None, num_images: int = 128, image_size: int = 128,
                     split: str | None = None, seed: int = 0,
                     progress: Progress | None = None) -> list[CalibrationSample]:
    """``num_images`` letterboxed samples from ``source`` (a dataset in any supported format, or a folder of
    images; default: the bundled sample data, else scikit-image's photos). Datasets with a train split are
    calibrated on it (never on test unless asked). Fewer images than asked: random crops and flips fill up.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if source is None:
        source = default_calibration_source()
    if source is None:
        items = [(name, img, None) for name, img in _builtin_images()]
        where = "scikit-image sample photos"
    else:
        ds = _open_source(source, split)
        n = len(ds)
        if n == 0:
            raise QuantizationError(f"calibration data {source}: no images")
        idx = np.unique(np.linspace(0, n - 1, min(n, num_images)).round().astype(int))
        items = []
        for j, i in enumerate(idx):
            items.append(_read_item(ds[int(i)]))
            report(progress, f"reading calibration images {j + 1}/{len(idx)}", 0.02 * (j + 1) / len(idx))
        where = str(source)
    out = [_sample(img, masks, image_size, name) for name, img, masks in items]
    rng = np.random.default_rng(seed)
    k = 0
    while len(out) < num_images:  # too few: random crops (50-100 % of each side) and flips
        name, img, masks = items[k % len(items)]
        k += 1
        rgb = to_rgb_uint8(img, name=name)
        h, w = rgb.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = rgb[y0:y0 + ch, x0:x0 + cw]
        mc = None if masks is None or len(masks) == 0 else np.asarray(masks)[:, y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            mc = None if mc is None else mc[:, :, ::-1]
        if mc is not None:
            mc = mc[mc.reshape(len(mc), -1).any(1)]
        out.append(_sample(np.ascontiguousarray(crop), None if mc is None else np.ascontiguousarray(mc),
                           image_size, f"{name}-aug{k}"))
    log.info("calibration: %d images from %s", num_images, where)
    return out[:num_images]
