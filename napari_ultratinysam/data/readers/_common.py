"""Shared pieces of the dataset readers: the lazy Dataset, image/label loading, pairing and components."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ultratinysam.data.types import AnnotatedImage

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")

Color = tuple[int, int, int]


class Dataset(Sequence[AnnotatedImage]):
    """A sized, indexable, iterable collection of AnnotatedImage; reads one image per ``__getitem__``."""

    def __init__(self, names: list[str], load: Callable[[int], AnnotatedImage], *, classes: list[str] | None = None,
                 colors: list[Color] | None = None, format: str = "", root: str | Path = "",
                 splits: list[str] | None = None, void_index: int | None = None,
                 size_of: Callable[[int], tuple[int, int]] | None = None) -> None:
        self.names = list(names)
        self.classes = list(classes) if classes is not None else None
        self.colors = list(colors) if colors is not None else (
            default_colors(len(self.classes)) if self.classes is not None else None)
        self.format = format
        self.root = Path(root)
        self.splits = list(splits) if splits is not None else None
        self.void_index = void_index
        self._load = load
        self._size_of = size_of

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> AnnotatedImage:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("Dataset does not support slicing; index one image at a time")
        i = int(index)
        if i < 0:
            i += len(self.names)
        if not 0 <= i < len(self.names):
            raise IndexError(f"index {index} out of range for {len(self.names)} images")
        return self._load(i)

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of image ``index``, from the file header when the reader knows the file."""
        if self._size_of is not None:
            return self._size_of(int(index) % len(self.names))
        return self[index].image.shape[:2]

    def __iter__(self) -> Iterator[AnnotatedImage]:
        for i in range(len(self.names)):
            yield self._load(i)

    def __repr__(self) -> str:
        ncls = len(self.classes) if self.classes is not None else None
        return f"Dataset(format={self.format!r}, root={str(self.root)!r}, images={len(self)}, classes={ncls})"


def default_colors(n: int) -> list[Color]:
    """n distinct-ish colours (golden-ratio hue walk), deterministic."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def open_pil(path: Path) -> Image.Image:
    """Open and fully decode an image file; a missing or corrupt file gives one ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # PIL raises several types for truncated / corrupt files
        raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    return im


def read_rgb(path: Path) -> np.ndarray:
    """Any image file -> (H, W, 3) uint8 RGB (EXIF orientation is ignored so masks stay aligned)."""
    im = open_pil(path)
    if im.mode in ("RGB", "L"):
        arr = np.asarray(im.convert("RGB"))
    elif im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
        arr = np.asarray(im.convert("RGB"))
    else:  # 16-bit / float grayscale: scaled by the one shared converter
        from napari_ultratinysam.core.transforms import to_rgb_uint8

        arr = to_rgb_uint8(np.asarray(im), name=str(path))
    return np.ascontiguousarray(arr)


def read_label(path: Path) -> tuple[np.ndarray, str]:
    """A label/mask file -> (array, PIL mode); palette images give their indices, RGB gives (H, W, 3)."""
    im = open_pil(path)
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8), mode
    if mode in ("LA", "PA"):
        im = im.getchannel(0)
    if mode == "RGBA":
        im = im.convert("RGB")
        mode = "RGB"
    arr = np.asarray(im)
    if mode == "I":
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: label values outside 0..65535")
        arr = arr.astype(np.uint16)
    return arr, mode


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as e:
        raise ValueError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from None
    return h, w


def check_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(f"{label_path}: size mismatch, mask is {label.shape[1]}x{label.shape[0]} but image "
                         f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (WxH)")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: empty folder (no images with extensions {', '.join(IMAGE_EXTS)})")
    return files


def find_by_stem(folder: Path, stem: str, exts: Sequence[str] = IMAGE_EXTS) -> Path | None:
    for ext in exts:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def pair_by_stem(image_dir: Path, mask_dir: Path, mask_exts: Sequence[str] = (".png", ".tif", ".tiff", ".bmp")
                 ) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem; an image without a mask is a ValueError naming it."""
    pairs = []
    for img in list_images(image_dir):
        mask = find_by_stem(mask_dir, img.stem, mask_exts)
        if mask is None:
            raise ValueError(f"{img}: missing mask (expected {mask_dir / (img.stem + mask_exts[0])})")
        pairs.append((img, mask))
    stems = [p[0].stem for p in pairs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"{image_dir}: several images share the name {dupes[0]!r} (different extensions)")
    return pairs


def read_class_csv(path: Path) -> tuple[list[int], list[str], list[Color | None]]:
    """class_dict.csv / labels.csv -> (indices, names, colours); columns [index,]name[,r,g,b]."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if not rows:
        raise ValueError(f"{path}: empty class file")
    header = [h.strip().lower() for h in rows[0]]
    if "name" not in header:
        raise ValueError(f"{path}: expected a header with a 'name' column, got {rows[0]}")
    col = {h: i for i, h in enumerate(header)}
    indices, names, colors = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            idx = int(row[col["index"]]) if "index" in col else len(indices)
            names.append(row[col["name"]].strip())
            colors.append(tuple(int(row[col[c]]) for c in "rgb") if all(c in col for c in "rgb") else None)
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {n} is malformed: {','.join(row)}") from None
        indices.append(idx)
    return indices, names, colors


def components(label: np.ndarray, values: Sequence[int], min_area: int = 0, connectivity: int = 2
               ) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of each label value -> ((N, H, W) bool masks, (N,) value per mask).

    Components with fewer than ``min_area`` pixels are dropped. connectivity 1 = 4-neighbours, 2 = 8.
    """
    from skimage.measure import label as label_regions

    work = np.full(label.shape[:2], -1, dtype=np.int32)
    wanted = np.isin(label, np.asarray(list(values), dtype=np.int64))
    work[wanted] = label[wanted]
    comp = label_regions(work, background=-1, connectivity=connectivity)  # one pass: same value = connected
    n = int(comp.max())
    areas = np.bincount(comp.ravel(), minlength=n + 1)
    value_of = np.zeros(n + 1, dtype=np.int64)
    value_of[comp.ravel()] = work.ravel()
    boxes = ndimage.find_objects(comp)
    masks, vals = [], []
    for cid in np.flatnonzero(areas[1:] >= max(min_area, 1)) + 1:
        m = np.zeros(label.shape[:2], dtype=bool)
        box = boxes[cid - 1]
        m[box] = comp[box] == cid  # work in the bounding box only
        masks.append(m)
        vals.append(int(value_of[cid]))
    return stack_masks(masks, label.shape[:2]), np.asarray(vals, dtype=np.int64)


def regions(label: np.ndarray, values: Sequence[int], min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One mask per label value (regions may be disconnected), dropping those under ``min_area`` pixels."""
    masks, vals = [], []
    for v in values:
        m = label == v
        if m.sum() >= max(min_area, 1):
            masks.append(m)
            vals.append(int(v))
    return stack_masks(masks, label.shape[:2]), np.asarray(vals, dtype=np.int64)


def stack_masks(masks: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    return np.stack(masks).astype(bool, copy=False) if masks else np.zeros((0,) + tuple(hw), dtype=bool)


def filter_area(masks: np.ndarray, class_ids: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop masks with fewer than ``min_area`` pixels (and always empty ones)."""
    if len(masks) == 0:
        return masks, class_ids
    keep = masks.reshape(len(masks), -1).sum(1) >= max(min_area, 1)
    return masks[keep], class_ids[keep]


def resolve_splits(available: Sequence[str], split: str | None, root: Path) -> list[str]:
    """All available splits, or just ``split`` (a ValueError naming the choices if it is not there)."""
    if not available:
        raise ValueError(f"{root}: no splits found")
    if split is None:
        return list(available)
    if split not in available:
        raise ValueError(f"{root}: no split {split!r} (available: {', '.join(available)})")
    return [split]
