"""SAM2-style mask decoder: two-way transformer, 4 mask tokens (1 single + 3 multimask), high-res features,
IoU head (sigmoid) and object-score head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_ultratinysam.model.prompt_encoder import LayerNorm2d


class MLP(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, num_layers: int, sigmoid_output: bool = False):
        super().__init__()
        dims = [cin] + [hidden] * (num_layers - 1)
        outs = [hidden] * (num_layers - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class Attention(nn.Module):
    """Multi-head attention with an optional channel downsampling of q/k/v (SAM)."""

    def __init__(self, dim: int, heads: int, downsample_rate: int = 1):
        super().__init__()
        self.internal_dim = dim // downsample_rate
        self.heads = heads
        self.q_proj = nn.Linear(dim, self.internal_dim)
        self.k_proj = nn.Linear(dim, self.internal_dim)
        self.v_proj = nn.Linear(dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        o = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(b, n, h * d))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, downsample_rate: int = 2, skip_first_layer_pe: bool = False):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int, downsample_rate: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, heads, mlp_dim, downsample_rate, skip_first_layer_pe=(i == 0))
            for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor):
        b, c, h, w = image_embedding.shape
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder(nn.Module):
    def __init__(self, transformer_dim: int = 256, depth: int = 2, heads: int = 8, mlp_dim: int = 2048,
                 downsample_rate: int = 2, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, use_high_res_features: bool = True, pred_obj_scores: bool = True):
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(depth, transformer_dim, heads, mlp_dim, downsample_rate)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, 1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, 1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=True)
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)

    def output_tokens(self) -> torch.Tensor:
        toks = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            toks = [self.obj_score_token.weight] + toks
        return torch.cat(toks, dim=0)

    def _hypernetworks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, C) mask tokens -> (B, K, C/8): token k through its own MLP, all K in one batched product per layer
        (the same arithmetic as K separate MLPs, in 3 graph nodes per layer instead of 3K; the stacked weights are
        constants in an exported graph)."""
        mlps = self.output_hypernetworks_mlps
        x = tokens
        n = len(mlps[0].layers)
        for j in range(n):
            w = torch.stack([m.layers[j].weight for m in mlps])  # (K, out, in)
            b = torch.stack([m.layers[j].bias for m in mlps])  # (K, out)
            x = torch.einsum("bki,koi->bko", x, w) + b
            if j < n - 1:
                x = F.relu(x)
        return x

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor] | None = None):
        """-> (mask logits (B, 4, 4h, 4w), iou (B, 4), object-score logits (B, 1))."""
        b = sparse.shape[0]
        out_tokens = self.output_tokens()[None].expand(b, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        s = 1 if self.pred_obj_scores else 0
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1:s + 1 + self.num_mask_tokens]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        if self.use_high_res_features:
            feat_s0, feat_s1 = high_res
            up = act1(ln1(dc1(src) + feat_s1))
            up = act2(dc2(up) + feat_s0)
        else:
            up = self.output_upscaling(src)
        hyper = self._hypernetworks(mask_tokens_out)
        bb, cc, hh, ww = up.shape
        masks = (hyper @ up.reshape(bb, cc, hh * ww)).reshape(bb, -1, hh, ww)
        iou = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            obj = self.pred_obj_score_head(hs[:, 0])
        else:
            obj = torch.full((b, 1), 10.0, dtype=iou.dtype, device=iou.device)
        return masks, iou, obj
