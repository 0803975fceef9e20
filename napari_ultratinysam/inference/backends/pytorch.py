"""The torch backend: the model in eager torch (1 intra-op thread by default on these small tensors). Needs the
``[train]`` extra; every backend has ``encode(image_input) -> features`` and ``decode(features, coords, labels,
mask_input) -> (lowres logits (4, l, l), iou (4,), object logit)``."""
from __future__ import annotations

import numpy as np

from napari_ultratinysam.core.config import ModelConfig


class TorchBackend:
    name = "torch"

    def __init__(self, model, threads: int | None = 1):
        from napari_ultratinysam.core.extras import require

        require("torch", "the torch backend")
        self.model = model.eval()
        self.cfg: ModelConfig = model.cfg
        self.threads = threads
        self.image_size = self.cfg.image_size
        self.lowres_size = self.cfg.image_size // 4

    def _threads(self):
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)

    def encode(self, x: np.ndarray):
        import torch

        self._threads()
        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def decode(self, feats, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None):
        import torch

        self._threads()
        with torch.inference_mode():
            m = None if mask_input is None else torch.from_numpy(mask_input.reshape(1, 1, *mask_input.shape[-2:]))
            logits, iou, obj = self.model.decode(feats, torch.from_numpy(coords[None]), torch.from_numpy(labels[None]),
                                                 m)
        return logits[0].numpy(), iou[0].numpy(), float(obj[0, 0])
