"""Training shards (written by :func:`napari_ultratinysam.data.shards.preprocess`) read back as a Dataset, at the
shard resolution. The file layout is described in :mod:`napari_ultratinysam.data.shards`; this module reads it
without the writer (and its torch-backed transforms), so the reader registry can open and detect shards cheaply.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from napari_ultratinysam.core.io import read_tagged_json
from napari_ultratinysam.data.readers._common import Dataset
from napari_ultratinysam.data.types import AnnotatedImage

SHARD_FORMAT = "napari-ultratinysam/shards"
INDEX = "index.json"


def _load_index(root: Path) -> dict:
    return read_tagged_json(root / INDEX, "format", SHARD_FORMAT, "a napari-ultratinysam shards index",
                            "file not found (not a shards folder?)")


class ShardDataset(Dataset):
    """Training shards read back as AnnotatedImage at shard resolution (``extra['valid_hw']``, ``['orig_hw']``).

    ``split`` keeps only images from that source split; decoded shards are kept in a small LRU cache.
    """

    def __init__(self, root: str | Path, split: str | None = None, min_area: int = 0, cache_shards: int = 4) -> None:
        root = Path(root)
        index = _load_index(root)
        self.size = int(index["size"])
        self.codec = index["codec"]
        self._min_area = min_area
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = max(1, cache_shards)
        self._files = [s["file"] for s in index["shards"]]
        self._refs = [(si, k) for si, s in enumerate(index["shards"]) for k in range(s["images"])
                      if split is None or s["splits"][k] == split]
        if split is not None and not self._refs:
            raise ValueError(f"{root / INDEX}: no images from split {split!r}")
        names = [index["shards"][si]["names"][k] for si, k in self._refs]
        splits = [index["shards"][si]["splits"][k] for si, k in self._refs]
        colors = [tuple(c) for c in index["colors"]] if index.get("colors") else None
        super().__init__(names, self._load_item, classes=index.get("classes"), colors=colors, format="shards",
                         root=root, splits=splits, size_of=lambda i: (self.size, self.size))

    def _shard(self, si: int) -> dict[str, np.ndarray]:
        if si in self._cache:
            self._cache.move_to_end(si)
            return self._cache[si]
        path = self.root / self._files[si]
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: shard file not found") from None
        except Exception as e:
            raise ValueError(f"{path}: cannot read shard ({type(e).__name__}: {e})") from None
        arrays["_starts"] = np.searchsorted(arrays["obj_image"], np.arange(len(arrays["names"]) + 1))
        self._cache[si] = arrays
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arrays

    def _image(self, z: dict[str, np.ndarray], k: int) -> np.ndarray:
        if self.codec == "raw":
            return z["images"][k]
        a, b = z["image_offsets"][k], z["image_offsets"][k + 1]
        img = np.array(Image.open(io.BytesIO(z["image_bytes"][a:b].tobytes())).convert("RGB"))
        vh, vw = z["valid_hw"][k]
        img[vh:] = 0  # padding stays exactly zero despite JPEG ringing
        img[:, vw:] = 0
        return img

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        s = self.size
        return np.unpackbits(bits, axis=-1, count=s * s).reshape(bits.shape[:-1] + (s, s)).astype(bool)

    def _load_item(self, i: int) -> AnnotatedImage:
        si, k = self._refs[i]
        z = self._shard(si)
        a, b = z["_starts"][k], z["_starts"][k + 1]
        masks = self._unpack(z["mask_bits"][a:b])
        classes = z["obj_class"][a:b].astype(np.int64)
        if self._min_area > 0 and len(masks):
            keep = masks.reshape(len(masks), -1).sum(1) >= self._min_area
            masks, classes = masks[keep], classes[keep]
        extra: dict = {"valid_hw": tuple(int(v) for v in z["valid_hw"][k]),
                       "orig_hw": tuple(int(v) for v in z["orig_hw"][k]), "split": str(z["splits"][k])}
        hit = np.flatnonzero(z["ignore_image"] == k)
        if len(hit):
            extra["ignore"] = self._unpack(z["ignore_bits"][hit[0]])
        return AnnotatedImage(self._image(z, k), masks, classes, name=str(z["names"][k]),
                              source=f"{self.root / self._files[si]}#{k}", extra=extra)


def detect(path: Path) -> bool:
    if not (path.is_dir() and (path / INDEX).is_file()):
        return False
    with open(path / INDEX, encoding="utf-8", errors="replace") as f:
        return SHARD_FORMAT in f.read(512)


def read(path: Path, split: str | None = None, min_area: int = 0) -> ShardDataset:
    """Reader-registry entry: open a shards folder."""
    return ShardDataset(path, split=split, min_area=min_area)


__all__ = ["INDEX", "SHARD_FORMAT", "ShardDataset", "detect", "read"]
