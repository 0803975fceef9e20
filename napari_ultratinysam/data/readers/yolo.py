"""YOLO segmentation labels: ``images[/SPLIT]/NAME.jpg`` + ``labels[/SPLIT]/NAME.txt``.

Each label line is ``class x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1]. A missing label file means
"no objects" (the Ultralytics convention). Class names come from a ``data.yaml``/``dataset.yaml`` ``names`` entry
when present (then an out-of-range class is an error).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_ultratinysam.data.readers._common import (
    Dataset,
    filter_area,
    image_size,
    list_images,
    read_rgb,
    resolve_splits,
    stack_masks,
)
from napari_ultratinysam.data.types import AnnotatedImage

_TOL = 1e-3


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir() and \
        any((path / "labels").rglob("*.txt"))


def _splits(root: Path) -> list[str]:
    """Subfolders of images/ that have a labels/ counterpart; [''] for a flat layout."""
    subs = [p.name for p in sorted((root / "images").iterdir()) if p.is_dir() and (root / "labels" / p.name).is_dir()]
    return subs or [""]


def _class_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        f = root / name
        if f.is_file():
            import yaml

            try:
                names = (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as e:
                raise ValueError(f"{f}: cannot parse YAML ({e})") from None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def parse_label_file(path: Path, h: int, w: int, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One YOLO label file -> ((N, h, w) bool masks, (N,) class ids)."""
    masks, cls = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            c = int(parts[0])
            xy = np.asarray([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path}:{n}: not numbers: {line.strip()[:60]!r}") from None
        if len(xy) < 6 or len(xy) % 2:
            raise ValueError(f"{path}:{n}: expected a class and >= 3 polygon points (x y pairs), got {len(xy)} values")
        if c < 0 or (num_classes is not None and c >= num_classes):
            raise ValueError(f"{path}:{n}: unknown class {c}" + (f" (0..{num_classes - 1})" if num_classes else ""))
        if xy.min() < -_TOL or xy.max() > 1 + _TOL:
            raise ValueError(f"{path}:{n}: coordinates must be normalised to [0, 1]")
        pts = np.clip(xy, 0, 1).reshape(-1, 2) * (w, h) - 0.5
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=1, outline=1)
        masks.append(np.asarray(canvas, dtype=bool))
        cls.append(c)
    return stack_masks(masks, (h, w)), np.asarray(cls, dtype=np.int64)


def read(path: Path, split: str | None = None, min_area: int = 0) -> Dataset:
    """Read a YOLO segmentation folder (all split subfolders, or one)."""
    available = [s for s in _splits(path) if s]
    splits = resolve_splits(available, split, path) if available or split else [""]
    classes = _class_names(path)
    items: list[tuple[Path, Path, str]] = []
    for s in splits:
        for img in list_images(path / "images" / s if s else path / "images"):
            items.append((img, (path / "labels" / s / f"{img.stem}.txt") if s else path / "labels" / f"{img.stem}.txt",
                          s))

    def load(i: int) -> AnnotatedImage:
        img, txt, s = items[i]
        image = read_rgb(img)
        h, w = image.shape[:2]
        if txt.is_file():
            masks, cls = parse_label_file(txt, h, w, len(classes) if classes is not None else None)
        else:
            masks, cls = np.zeros((0, h, w), bool), np.zeros(0, np.int64)
        masks, cls = filter_area(masks, cls, min_area)
        return AnnotatedImage(image, masks, cls, name=img.stem, source=str(img), extra={"split": s})

    return Dataset([it[0].stem for it in items], load, classes=classes, format="yolo", root=path,
                   splits=[it[2] for it in items], size_of=lambda i: image_size(items[i][0]))
