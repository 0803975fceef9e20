"""UltraTinySAM: image encoder (trunk + FPN neck), channel adapters, SAM prompt encoder, SAM2 mask decoder.

``encode(images)`` runs once per image; ``decode(features, points, labels, mask_input)`` runs per click.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from napari_ultratinysam.core.config import ModelConfig
from napari_ultratinysam.model.mask_decoder import MaskDecoder
from napari_ultratinysam.model.neck import FpnNeck
from napari_ultratinysam.model.prompt_encoder import PromptEncoder
from napari_ultratinysam.model.trunks import build_trunk


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.trunk = build_trunk(cfg.trunk, cfg.trunk_pretrained, tuple(cfg.trunk_depths))
        self.neck = FpnNeck(tuple(self.trunk.out_channels), cfg.neck_dim, cfg.fpn_top_down)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.trunk(x))


class UltraTinySAM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        s = cfg.image_size
        if s % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {s}")
        d, nd = cfg.decoder_dim, cfg.neck_dim
        self.image_encoder = ImageEncoder(cfg)
        # 64 -> 256 adapters between the neck and the SAM2 decoder (levels stride 4, 8, 16)
        self.channel_expansion_0 = nn.Conv2d(nd, d, 1)
        self.channel_expansion_1 = nn.Conv2d(nd, d, 1)
        self.channel_expansion_2 = nn.Conv2d(nd, d, 1)
        self.prompt_encoder = PromptEncoder(d, (s // 16, s // 16), (s, s), cfg.mask_in_chans)
        self.mask_decoder = MaskDecoder(d, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_dim,
                                        cfg.attention_downsample_rate, cfg.num_multimask_outputs,
                                        cfg.iou_head_depth, cfg.iou_head_hidden_dim, cfg.use_high_res_features,
                                        cfg.pred_obj_scores)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def lowres_size(self) -> int:
        return self.cfg.image_size // 4

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) normalised -> {'feat_s0': (B,32,S/4,S/4), 'feat_s1': (B,64,S/8,S/8),
        'embed': (B,256,S/16,S/16)}."""
        f0, f1, f2 = self.image_encoder(images)
        md = self.mask_decoder
        out = {"embed": self.channel_expansion_2(f2)}
        if self.cfg.use_high_res_features:
            out["feat_s0"] = md.conv_s0(self.channel_expansion_0(f0))
            out["feat_s1"] = md.conv_s1(self.channel_expansion_1(f1))
        return out

    def decode(self, feats: dict[str, torch.Tensor], point_coords: torch.Tensor, point_labels: torch.Tensor,
               mask_input: torch.Tensor | None = None, has_mask: torch.Tensor | None = None):
        """Points (B, N, 2) in model pixels (x, y), labels (B, N) (-1 pad, 0 neg, 1 pos, 2/3 box corners),
        optional low-res mask logits (B, 1, S/4, S/4) -> (logits (B, 4, S/4, S/4), iou (B, 4), obj logit (B, 1)).

        Token 0 is the single-mask output (for several points or a box); tokens 1-3 are the multimask outputs
        (for a single click). Selection is left to the caller so one graph serves every prompt.
        """
        embed = feats["embed"]
        b = embed.shape[0]
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels, pad=True)
        dense = pe.dense_embedding(b, mask_input, has_mask)
        high_res = (feats["feat_s0"], feats["feat_s1"]) if self.cfg.use_high_res_features else None
        return self.mask_decoder(embed, pe.get_dense_pe(), sparse, dense, high_res)

    def forward(self, images, point_coords, point_labels, mask_input=None):
        return self.decode(self.encode(images), point_coords, point_labels, mask_input)


def select_masks(logits: torch.Tensor, iou: torch.Tensor, multimask: bool):
    """Pick the multimask outputs (tokens 1-3) or the single-mask output (token 0)."""
    if multimask:
        return logits[:, 1:], iou[:, 1:]
    return logits[:, :1], iou[:, :1]
