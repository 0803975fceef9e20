"""FPN neck: a 1x1 lateral conv per trunk level to ``dim`` channels, with optional top-down fusion.

The original UltraTinySAM config disabled all top-down fusion by accident (fpn_top_down_levels [2, 3] on a 3-level
pyramid); ``top_down=True`` adds the coarser level (nearest-upsampled) to each finer one, at no parameter cost.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FpnNeck(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], dim: int = 64, top_down: bool = True):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in in_channels])
        self.top_down = top_down

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [None] * len(feats)
        prev = None
        for i in range(len(feats) - 1, -1, -1):
            y = self.convs[i](feats[i])
            if self.top_down and prev is not None:
                y = y + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            outs[i] = y
            prev = y
        return outs
