"""The one annotated-image type shared by readers, projects, exports, shards, training and evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AnnotatedImage:
    """An RGB image with its object masks.

    image:     (H, W, 3) uint8 RGB.
    masks:     (N, H, W) bool, one mask per object (objects may overlap, e.g. SA-1B / COCO).
    class_ids: (N,) int64 class index per object (-1 when the source has no classes).
    name:      a stable identifier (file stem) used for splits and file names.
    source:    where it came from (path or dataset name), for error messages and metadata.
    """

    image: np.ndarray
    masks: np.ndarray
    class_ids: np.ndarray
    name: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"{self.source or self.name}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        h, w = self.image.shape[:2]
        if self.masks.size == 0:
            self.masks = np.zeros((0, h, w), dtype=bool)
        if self.masks.ndim != 3 or self.masks.shape[1:] != (h, w):
            raise ValueError(
                f"{self.source or self.name}: masks must be (N, {h}, {w}), got {self.masks.shape}"
            )
        self.masks = self.masks.astype(bool, copy=False)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if len(self.class_ids) != len(self.masks):
            raise ValueError(
                f"{self.source or self.name}: {len(self.masks)} masks but {len(self.class_ids)} class ids"
            )

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[0])

    def id_map(self) -> np.ndarray:
        """(H, W) uint16 instance ids 1..N (0 = background); later objects win where masks overlap."""
        out = np.zeros(self.image.shape[:2], dtype=np.uint16)
        for i, m in enumerate(self.masks):
            out[m] = i + 1
        return out

    @classmethod
    def from_id_map(cls, image: np.ndarray, ids: np.ndarray, classes: dict[int, int] | None = None,
                    name: str = "", source: str = "") -> "AnnotatedImage":
        """Build from an (H, W) instance-id map (0 = background) and an optional {id: class} dict."""
        uniq = [int(u) for u in np.unique(ids) if u != 0]
        masks = np.stack([ids == u for u in uniq]) if uniq else np.zeros((0,) + ids.shape, dtype=bool)
        cls_ids = [int((classes or {}).get(u, -1)) for u in uniq]
        return cls(image=image, masks=masks, class_ids=np.array(cls_ids, dtype=np.int64), name=name,
                   source=source, extra={"instance_ids": uniq})
