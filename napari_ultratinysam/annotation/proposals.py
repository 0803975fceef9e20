"""Qt-free state of the annotator's "Propose objects" step: the proposals of one image plane (a uint16 instance
map from :func:`napari_ultratinysam.inference.segment_all.segment_all`) that the user accepts (with a class), rejects or
accepts all. The widget shows ``labels`` in its own labels layer and commits accepted masks to the annotation
model; nothing here touches Qt or napari."""
from __future__ import annotations

import numpy as np


class ProposalSet:
    """Proposals of one plane: ``labels`` (H, W) uint16 (0 = none), ``scores[i - 1]`` of proposal ``i``."""

    def __init__(self, labels: np.ndarray, scores=None, plane: tuple = ()):
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype.kind not in "ui":
            raise ValueError(f"proposals: expected an (H, W) integer instance map, got {labels.shape} {labels.dtype}")
        self.labels = labels.astype(np.uint16, copy=True)
        n = int(self.labels.max(initial=0))
        self.scores = np.zeros(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
        if len(self.scores) < n:
            raise ValueError(f"proposals: {len(self.scores)} scores for {n} proposals")
        self.plane = tuple(plane)
        self.selected: int | None = None

    @property
    def ids(self) -> list[int]:
        """The proposals still open (neither accepted nor rejected)."""
        return [int(i) for i in np.unique(self.labels) if i]

    def __len__(self) -> int:
        return len(self.ids)

    def at(self, row: float, col: float) -> int:
        """The proposal under pixel (row, col), 0 for none."""
        r, c = int(np.floor(row)), int(np.floor(col))
        h, w = self.labels.shape
        return int(self.labels[r, c]) if 0 <= r < h and 0 <= c < w else 0

    def select_at(self, row: float, col: float) -> int:
        pid = self.at(row, col)
        self.selected = pid or None
        return pid

    def score(self, pid: int) -> float:
        return float(self.scores[pid - 1]) if 0 < pid <= len(self.scores) else float("nan")

    def _take(self, pid: int) -> np.ndarray:
        if pid not in self.ids:
            raise ValueError(f"proposal {pid}: not open (accepted, rejected or never proposed)")
        mask = self.labels == pid
        self.labels[mask] = 0
        if self.selected == pid:
            self.selected = None
        return mask

    def accept(self, pid: int | None = None) -> np.ndarray:
        """The mask of proposal ``pid`` (default: the selected one), removed from the open proposals."""
        pid = self.selected if pid is None else pid
        if pid is None:
            raise ValueError("no proposal selected: click one first")
        return self._take(int(pid))

    def reject(self, pid: int | None = None) -> None:
        pid = self.selected if pid is None else pid
        if pid is None:
            raise ValueError("no proposal selected: click one first")
        self._take(int(pid))

    def accept_all(self) -> list[np.ndarray]:
        """Every open proposal's mask (best predicted IoU first), all removed from the open proposals."""
        ids = sorted(self.ids, key=lambda i: -self.score(i) if np.isfinite(self.score(i)) else 0.0)
        return [self._take(i) for i in ids]
