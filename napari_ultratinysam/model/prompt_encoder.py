"""SAM prompt encoder: sparse points (labels -1 pad, 0 neg, 1 pos, 2/3 box corners) and a dense mask prompt.

Written with arithmetic label masks instead of boolean indexing so the same module exports to ONNX with a dynamic
number of points and constant-folds when the prompt is baked in.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of NCHW written out (IMX500-safe; GroupNorm(1, C) is not)."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) in [0, 1]."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        c = 2 * coords01 - 1
        c = c @ self.positional_encoding_gaussian_matrix
        c = 2 * math.pi * c
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """(C, h, w) encoding of the cell centres of an h x w grid."""
        dev = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self.encode(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (8, 8),
                 input_image_size: tuple[int, int] = (128, 128), mask_in_chans: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid(*self.image_embedding_size)[None]

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool = True) -> torch.Tensor:
        """coords (B, N, 2) model pixels (x, y), labels (B, N) float/int -> (B, N(+1), C).

        One padding point (label -1) is appended, as in SAM/SAM2 training (boxes are passed as two points).
        """
        coords = coords.float() + 0.5
        labels = labels.float()
        if pad:
            b = coords.shape[0]
            coords = torch.cat([coords, torch.zeros(b, 1, 2, dtype=coords.dtype, device=coords.device)], dim=1)
            labels = torch.cat([labels, -torch.ones(b, 1, dtype=labels.dtype, device=labels.device)], dim=1)
        h, w = self.input_image_size
        scale = torch.tensor([1.0 / w, 1.0 / h], dtype=coords.dtype, device=coords.device)
        pe = self.pe_layer.encode(coords * scale)
        lab = labels[..., None]
        is_pad = (lab == -1).to(pe.dtype)
        out = pe * (1 - is_pad) + self.not_a_point_embed.weight * is_pad
        for i, emb in enumerate(self.point_embeddings):
            out = out + emb.weight * (lab == i).to(pe.dtype)
        return out

    def embed_mask(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(mask_logits)

    def dense_embedding(self, batch: int, mask_logits: torch.Tensor | None = None,
                        has_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w): the downscaled mask prompt, or ``no_mask_embed`` everywhere when there is none.

        ``has_mask`` (B,) in {0, 1} selects per sample (used by the ONNX decoder, which always gets a mask tensor).
        """
        h, w = self.image_embedding_size
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        if mask_logits is None:
            return no_mask
        dense = self.embed_mask(mask_logits)
        if has_mask is None:
            return dense
        hm = has_mask.reshape(-1, 1, 1, 1).to(dense.dtype)
        return dense * hm + no_mask * (1 - hm)
