"""Preprocess any readable dataset into compact training shards at the model resolution (read back by
:class:`.readers.shards.ShardDataset`, also importable from here).

Each image is letterboxed with :mod:`napari_ultratinysam.core.transforms` (longest side = ``size``, zero padding at the
bottom/right); masks under ``min_area`` pixels at that resolution are dropped, then images left without objects.

``OUT/index.json`` lists the shards; each ``OUT/shard_NNNNN.npz`` holds (B images, M objects):
  image_bytes uint8 + image_offsets (B+1,) int64   JPEG per image (codec "jpeg"), or images uint8 (B, S, S, 3) ("raw")
  mask_bits (M, ceil(S*S/8)) uint8                  np.packbits of each flattened (S, S) mask
  obj_image (M,) int32, obj_class (M,) int32        image index within the shard, class id (-1 = none)
  orig_hw, valid_hw (B, 2) int32                    original image size, unpadded size inside the square
  names (B,) str, splits (B,) str
  ignore_image (K,) int32 + ignore_bits (K, ...)    optional ignore regions (void) of K images
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from napari_ultratinysam.core.io import atomic_path, atomic_write_json
from napari_ultratinysam.core.transforms import letterbox, letterbox_masks
from napari_ultratinysam.data.readers._common import Dataset
from napari_ultratinysam.data.readers.shards import INDEX, SHARD_FORMAT, ShardDataset
from napari_ultratinysam.data.staging import staged_dir
from napari_ultratinysam.data.types import AnnotatedImage

CODECS = ("jpeg", "raw")


@dataclass
class PreprocessSummary:
    """What preprocessing kept and dropped."""

    out: str
    size: int
    min_area: int
    images_in: int = 0
    images_kept: int = 0
    images_dropped: dict[str, int] = field(default_factory=lambda: {"no objects in source": 0,
                                                                    "all objects under min_area": 0})
    objects_in: int = 0
    objects_kept: int = 0
    objects_dropped_small: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_in / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in self.images_dropped.items())
        return "\n".join([
            f"images: {self.images_in} read, {self.images_kept} kept, dropped: {drops}",
            f"objects: {self.objects_in} read, {self.objects_kept} kept, {self.objects_dropped_small} under "
            f"{self.min_area} px at {self.size}x{self.size} dropped",
            f"wrote {self.shards} shard(s), {self.bytes / 1e6:.1f} MB to {self.out} "
            f"({self.images_per_second:.1f} images/s)",
        ])


# ---------------------------------------------------------------- writing


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


class _ShardWriter:
    """Accumulates letterboxed images and objects; flushes one .npz per ``shard_size`` images."""

    def __init__(self, folder: Path, size: int, shard_size: int, codec: str, quality: int) -> None:
        self.folder, self.size, self.shard_size, self.codec, self.quality = folder, size, shard_size, codec, quality
        self.shards: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self.images: list = []
        self.masks: list[np.ndarray] = []
        self.obj_image: list[int] = []
        self.obj_class: list[int] = []
        self.orig_hw: list[tuple[int, int]] = []
        self.valid_hw: list[tuple[int, int]] = []
        self.names: list[str] = []
        self.splits: list[str] = []
        self.ignore: list[tuple[int, np.ndarray]] = []

    def add(self, image: np.ndarray, masks: np.ndarray, classes: np.ndarray, orig_hw: tuple[int, int],
            valid_hw: tuple[int, int], name: str, split: str, ignore: np.ndarray | None) -> None:
        k = len(self.names)
        self.images.append(_encode_jpeg(image, self.quality) if self.codec == "jpeg" else image)
        self.masks.append(np.packbits(masks.reshape(len(masks), -1), axis=1))
        self.obj_image += [k] * len(masks)
        self.obj_class += [int(c) for c in classes]
        self.orig_hw.append(orig_hw)
        self.valid_hw.append(valid_hw)
        self.names.append(name)
        self.splits.append(split)
        if ignore is not None and ignore.any():
            self.ignore.append((k, np.packbits(ignore.reshape(-1))))
        if len(self.names) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.names:
            return
        arrays = self._arrays()
        file = f"shard_{len(self.shards):05d}.npz"
        with atomic_path(self.folder / file) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        self.shards.append({"file": file, "images": len(self.names), "objects": len(self.obj_class),
                            "names": list(self.names), "splits": list(self.splits)})
        self._reset()

    def _arrays(self) -> dict[str, np.ndarray]:
        nbytes = (self.size * self.size + 7) // 8
        out: dict[str, np.ndarray] = {
            "mask_bits": np.concatenate(self.masks) if self.obj_class else np.zeros((0, nbytes), np.uint8),
            "obj_image": np.asarray(self.obj_image, dtype=np.int32),
            "obj_class": np.asarray(self.obj_class, dtype=np.int32),
            "orig_hw": np.asarray(self.orig_hw, dtype=np.int32).reshape(-1, 2),
            "valid_hw": np.asarray(self.valid_hw, dtype=np.int32).reshape(-1, 2),
            "names": np.asarray(self.names, dtype=str),
            "splits": np.asarray(self.splits, dtype=str),
            "ignore_image": np.asarray([k for k, _ in self.ignore], dtype=np.int32),
            "ignore_bits": np.stack([b for _, b in self.ignore]) if self.ignore else np.zeros((0, nbytes), np.uint8),
        }
        if self.codec == "jpeg":
            out["image_offsets"] = np.cumsum([0] + [len(b) for b in self.images]).astype(np.int64)
            out["image_bytes"] = np.frombuffer(b"".join(self.images), dtype=np.uint8)
        else:
            out["images"] = np.stack(self.images)
        return out


def _open_input(input, format: str, split: str | None, reader_kw: dict | None) -> Dataset | Iterable[AnnotatedImage]:
    if isinstance(input, (str, Path)):
        from napari_ultratinysam.data.readers import read_dataset

        return read_dataset(input, format=format, split=split, **(reader_kw or {}))
    return input


def shrink(item: AnnotatedImage, size: int, min_area: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], np.ndarray | None]:
    """Letterbox an item -> (image, kept masks, their classes, valid (h, w), letterboxed ignore map or None)."""
    image, geo = letterbox(item.image, size)
    cand = np.arange(item.num_objects)
    if geo.scale <= 1.0 and len(cand):
        # nearest-neighbour shrinking samples distinct source pixels, so a mask can only lose area:
        # masks already under min_area are skipped before the (costly) resize
        cand = cand[item.masks.reshape(len(cand), -1).sum(1) >= max(min_area, 1)]
    masks = letterbox_masks(item.masks[cand], size)
    keep = masks.reshape(len(masks), size * size).sum(1) >= max(min_area, 1)
    ignore = item.extra.get("ignore")
    small_ignore = letterbox_masks(np.asarray(ignore, dtype=bool)[None], size)[0] if ignore is not None else None
    return image, masks[keep], item.class_ids[cand][keep], geo.new_hw, small_ignore


def preprocess(input, out: str | Path, format: str = "auto", size: int = 128, min_area: int = 150,
               split: str | None = None, *, shard_size: int = 1000, codec: str = "jpeg", jpeg_quality: int = 95,
               reader_kw: dict | None = None, progress: bool = True) -> PreprocessSummary:
    """Read ``input`` (a dataset path, a Dataset or AnnotatedImages) and write training shards to ``out``.

    The output folder is replaced as a whole (staged, then swapped), so a failure leaves the previous shards.
    """
    from tqdm import tqdm

    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {', '.join(CODECS)}, got {codec!r}")
    if size < 8 or shard_size < 1 or min_area < 0:
        raise ValueError(f"size must be >= 8, shard_size >= 1 and min_area >= 0 (got {size}, {shard_size}, "
                         f"{min_area})")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX).is_file():
        raise ValueError(f"{out}: folder is not empty and holds no {INDEX}; refusing to replace it")
    data = _open_input(input, format, split, reader_kw)
    summary = PreprocessSummary(str(out), size, min_area)
    t0 = time.perf_counter()
    with staged_dir(out, keep_existing=False) as stage:
        writer = _ShardWriter(stage, size, shard_size, codec, jpeg_quality)
        total = len(data) if hasattr(data, "__len__") else None
        for item in tqdm(data, total=total, desc="preprocess", unit="img", disable=not progress):
            _add_item(writer, item, size, min_area, summary)
        writer.flush()
        summary.shards = len(writer.shards)
        summary.seconds = time.perf_counter() - t0
        summary.bytes = sum((stage / s["file"]).stat().st_size for s in writer.shards)
        atomic_write_json(stage / INDEX, {
            "format": SHARD_FORMAT, "version": 1, "size": size, "min_area": min_area, "codec": codec,
            "classes": getattr(data, "classes", None),
            "colors": [list(c) for c in getattr(data, "colors", None) or []] or None,
            "source": str(input) if isinstance(input, (str, Path)) else str(getattr(data, "root", "")),
            "source_format": getattr(data, "format", format),
            "num_images": summary.images_kept, "num_objects": summary.objects_kept,
            "summary": asdict(summary), "shards": writer.shards,
        })
    return summary


def _add_item(writer: _ShardWriter, item: AnnotatedImage, size: int, min_area: int,
              summary: PreprocessSummary) -> None:
    summary.images_in += 1
    summary.objects_in += item.num_objects
    if item.num_objects == 0:
        summary.images_dropped["no objects in source"] += 1
        return
    image, masks, classes, valid_hw, ignore = shrink(item, size, min_area)
    summary.objects_dropped_small += item.num_objects - len(masks)
    if len(masks) == 0:
        summary.images_dropped["all objects under min_area"] += 1
        return
    summary.images_kept += 1
    summary.objects_kept += len(masks)
    writer.add(image, masks, classes, tuple(int(v) for v in item.image.shape[:2]), valid_hw, item.name,
               str(item.extra.get("split", "")), ignore)


__all__ = ["PreprocessSummary", "ShardDataset", "preprocess", "shrink"]
