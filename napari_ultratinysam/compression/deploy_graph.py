"""The deployable UltraTinySAM graph for the IMX500: one input, the prompt baked in.

``DeployGraph(model, prompt)`` wraps the SAME modules as the float model (its parameters are the model's own, never
a copy) and computes, for a camera image of uint8 pixels ``p`` given as ``x = p / 256`` (shape (1, 3, S, S), values
in [0, 1); this is how the IMX500 feeds its input tensor: unsigned 8 bit, scale 1/256)::

    masks (1, K, S/4, S/4) logits, iou (1, K), object score logit (1, 1)
    == model.decode(model.encode(normalize(p)), baked prompt), with K = 3 (multimask) for a single click,
       K = 1 (token 0) for several points or a box.

It is written for Sony's converter (imx500-converter 3.18, after MCT 2.5 PTQ), following
``shared/reference/imx500-ops.md``:

* the ImageNet normalisation is the first op (``x * (256/255)/std - mean/std``), so the sensor feeds raw pixels;
* the trunk runs in its ``safe`` attention form (per-head last-axis slices, 4-D matmuls) with static shapes
  (``MobileViTBlock.static_hw``); the stage maps leave the trunk only through the FPN lateral 1x1 convs;
* every token tensor is a 4-D (1, 1, L, C) view, so every Linear sees 4-D input and LayerNorm runs on 4-D;
* nothing Linear/MatMul-like takes a constant first: the prompt-only part of the decoder (the first self-attention
  on the constant tokens, its LayerNorm and the token->image query projection) is constant-folded from the model's
  parameters into buffers (:meth:`DeployGraph.refresh`), and the token->image scores of the first layer are
  computed as ``k @ q^T`` with the dynamic keys first (a Linear whose weight is the folded per-head queries);
* no ``t[:, i:i+1, :]`` token slice: tokens are picked by fixed one-hot Linear layers over the token axis
  (exact under 8-bit per-channel weight quantisation), then fed to the model's own hypernetwork / IoU /
  object-score MLPs;
* the mask is SAM's dot product as a 3-D matmul ``hyper (1, K, C') @ upscaled (1, C', H*W)``;
* one padding token, and the dense prompt is ``no_mask_embed`` (not zeros), as in training.

Building a DeployGraph switches the model's trunk to the deploy form (same function, batch 1 only);
:meth:`DeployGraph.release` switches it back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from napari_ultratinysam.core.transforms import PIXEL_MEAN, PIXEL_STD

PROMPT_MODES = ("center-point", "points", "box")
INPUT_SCALE = 1.0 / 256.0  # the IMX500 input tensor: uint8 pixels, scale 1/256 (dnnParams.xml, imx500-package)


def to_graph_input(image_uint8) -> torch.Tensor:
    """(S, S, 3) or (B, S, S, 3) uint8 -> (B, 3, S, S) float32 ``pixels / 256``, the deploy graph's input."""
    t = torch.as_tensor(image_uint8)
    if t.dtype != torch.uint8:
        raise ValueError(f"deploy graph input: expected uint8 pixels, got {t.dtype}")
    if t.ndim == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2).float() * INPUT_SCALE


@dataclass(frozen=True)
class BakedPrompt:
    """A prompt fixed at export time, in model-input pixels (x, y) of the S x S camera frame.

    labels: 1 positive click, 0 negative click, 2/3 box corners (top-left, bottom-right).
    """

    mode: str
    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]

    def multimask(self, max_points: int = 1) -> bool:
        """SAM2 rule: 3 candidates only for a prompt of at most ``max_points`` clicks and no box."""
        return self.mode != "box" and len(self.points) <= max_points

    def to_dict(self) -> dict:
        d = asdict(self)
        d["points"] = [list(p) for p in self.points]
        d["labels"] = list(self.labels)
        return d


def make_prompt(mode: str = "center-point", points=None, box=None, image_size: int = 128) -> BakedPrompt:
    """Build and check a baked prompt.

    * ``center-point``: one positive click at the frame centre (S/2, S/2) = (64, 64) at 128 (the original code
      baked (128, 128), outside the frame, by mistake);
    * ``points``: ``points`` = [(x, y) or (x, y, label)], label 1 positive (default) or 0 negative;
    * ``box``: ``box`` = (x0, y0, x1, y1).
    Coordinates are model-input pixels of the S x S frame the sensor sends to the network.
    """
    s = float(image_size)

    def check_xy(x: float, y: float, what: str) -> tuple[float, float]:
        x, y = float(x), float(y)
        if not (0.0 <= x <= s and 0.0 <= y <= s):
            raise ValueError(f"{what} ({x:g}, {y:g}) lies outside the {image_size}x{image_size} model frame")
        return x, y

    if mode == "center-point":
        if points is not None or box is not None:
            raise ValueError("prompt center-point takes no points or box (use prompt 'points' or 'box')")
        return BakedPrompt("center-point", ((s / 2, s / 2),), (1,))
    if mode == "points":
        if box is not None:
            raise ValueError("prompt 'points' takes no box (use prompt 'box')")
        if not points:
            raise ValueError("prompt 'points' needs at least one point (x, y[, label])")
        pts, labs = [], []
        for p in points:
            p = tuple(p)
            if len(p) not in (2, 3):
                raise ValueError(f"point {p!r}: expected (x, y) or (x, y, label)")
            lab = int(p[2]) if len(p) == 3 else 1
            if lab not in (0, 1):
                raise ValueError(f"point {p!r}: label must be 1 (positive) or 0 (negative)")
            pts.append(check_xy(p[0], p[1], "point"))
            labs.append(lab)
        if 1 not in labs:
            raise ValueError("prompt 'points' needs at least one positive point (label 1)")
        return BakedPrompt("points", tuple(pts), tuple(labs))
    if mode == "box":
        if points is not None:
            raise ValueError("prompt 'box' takes no points")
        if box is None or len(tuple(box)) != 4:
            raise ValueError("prompt 'box' needs box=(x0, y0, x1, y1)")
        x0, y0, x1, y1 = (float(v) for v in box)
        check_xy(x0, y0, "box corner")
        check_xy(x1, y1, "box corner")
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): need x0 < x1 and y0 < y1")
        return BakedPrompt("box", ((x0, y0), (x1, y1)), (2, 3))
    raise ValueError(f"unknown prompt mode {mode!r}; choose one of {', '.join(PROMPT_MODES)}")


def _one_hot_selector(num_tokens: int, index: int) -> nn.Linear:
    """A fixed Linear over the token axis that picks token ``index`` (weights 0/1: exact at 8 bits)."""
    lin = nn.Linear(num_tokens, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, index] = 1.0
    lin.weight.requires_grad_(False)
    return lin


def set_deploy_forms(model) -> dict:
    """Put the trunk in its converter form: safe attention + static (H, W) per MobileViT block (batch 1).

    Returns the previous state for :func:`restore_forms`. The function computed is unchanged.
    """
    from napari_ultratinysam.model.trunks import Attention as TrunkAttention
    from napari_ultratinysam.model.trunks import MobileViTBlock

    trunk = model.image_encoder.trunk
    prev = {"safe": {}, "static_hw": {}}
    for name, m in trunk.named_modules():
        if isinstance(m, TrunkAttention):
            prev["safe"][name] = m.safe
        if isinstance(m, MobileViTBlock):
            prev["static_hw"][name] = m.static_hw
    if hasattr(trunk, "set_attention_form"):
        trunk.set_attention_form("safe")
    blocks = {name: m for name, m in trunk.named_modules() if isinstance(m, MobileViTBlock)}
    if blocks:
        seen: dict[str, tuple[int, int]] = {}
        hooks = []
        for name, m in blocks.items():
            m.static_hw = None
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, _n=name: seen.__setitem__(_n, (int(args[0].shape[-2]), int(args[0].shape[-1])))))
        s = model.cfg.image_size
        try:
            with torch.no_grad():
                trunk(torch.zeros(1, 3, s, s))
        finally:
            for h in hooks:
                h.remove()
        for name, m in blocks.items():
            m.static_hw = seen[name]
    return prev


def restore_forms(model, prev: dict) -> None:
    trunk = model.image_encoder.trunk
    mods = dict(trunk.named_modules())
    for name, v in prev.get("safe", {}).items():
        mods[name].safe = v
    for name, v in prev.get("static_hw", {}).items():
        mods[name].static_hw = v


class DeployGraph(nn.Module):
    """Image (1, 3, S, S) = pixels / 256 -> (mask logits (1, K, S/4, S/4), iou (1, K)[, object logit (1, 1)])."""

    def __init__(self, model, prompt: BakedPrompt | str = "center-point"):
        super().__init__()
        cfg = model.cfg
        if not cfg.use_high_res_features:
            raise ValueError("the IMX500 graph needs use_high_res_features=true")
        if isinstance(prompt, str):
            prompt = make_prompt(prompt, image_size=cfg.image_size)
        md = model.mask_decoder
        tr = md.transformer
        if not tr.layers or not tr.layers[0].skip_first_layer_pe:
            raise ValueError("the IMX500 graph expects a two-way transformer whose first layer skips the PE")
        self.model = model  # the same modules: DeployGraph.parameters() are the model's own
        self.prompt = prompt
        self.multimask = prompt.multimask(cfg.multimask_max_points)
        n_mask = md.num_mask_tokens
        self.mask_indices = tuple(range(1, n_mask)) if self.multimask else (0,)
        self.K = len(self.mask_indices)
        self.has_obj = bool(md.pred_obj_scores)
        s = 1 if self.has_obj else 0
        self.num_tokens = T = s + 1 + n_mask + len(prompt.points) + 1  # + exactly one padding token
        self.C = C = md.transformer_dim
        self.h = self.w = cfg.image_size // 16
        self.N = self.h * self.w
        self.C8 = C // 8
        self.lo = cfg.image_size // 4
        self.iou_slice = (self.mask_indices[0], self.mask_indices[-1] + 1)

        # fixed token pickers (structure, not parameters of the model)
        self.sel_mask = nn.ModuleList(_one_hot_selector(T, s + 1 + i) for i in self.mask_indices)
        self.sel_iou = _one_hot_selector(T, s)
        self.sel_obj = _one_hot_selector(T, 0) if self.has_obj else None
        a0 = tr.layers[0].cross_attn_token_to_image
        self.qfold = nn.Linear(a0.internal_dim, a0.heads * T, bias=False)
        self.qfold.weight.requires_grad_(False)

        # constants derived from the model's parameters (refresh() recomputes them)
        self.register_buffer("norm_scale", torch.zeros(1, 3, 1, 1))
        self.register_buffer("norm_shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("dense", torch.zeros(1, C, 1, 1))
        self.register_buffer("key_pe", torch.zeros(1, 1, self.N, C))
        self.register_buffer("query_pe", torch.zeros(1, 1, T, C))
        self.register_buffer("queries0", torch.zeros(1, 1, T, C))
        self._prev_forms = set_deploy_forms(model)
        self.refresh()
        self.eval()

    # ------------------------------------------------------------------------------------------------ constants
    @torch.no_grad()
    def prompt_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        coords = torch.tensor([self.prompt.points], dtype=torch.float32)
        labels = torch.tensor([self.prompt.labels], dtype=torch.float32)
        return coords, labels

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the prompt-only constants from the model's current parameters (call after changing them)."""
        m = self.model
        md = m.mask_decoder
        pe = m.prompt_encoder
        tr = md.transformer
        dev = self.norm_scale.device
        mean = torch.tensor(PIXEL_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=dev).view(1, 3, 1, 1)
        self.norm_scale.copy_(1.0 / (255.0 * INPUT_SCALE) / std)
        self.norm_shift.copy_(-mean / std)
        self.dense.copy_(pe.no_mask_embed.weight.reshape(1, -1, 1, 1))
        self.key_pe.copy_(pe.get_dense_pe().reshape(1, self.C, 1, self.N).permute(0, 2, 3, 1))
        coords, labels = self.prompt_tensors()
        sparse = pe.embed_points(coords.to(dev), labels.to(dev), pad=True)  # (1, n+1, C)
        tokens = torch.cat([md.output_tokens()[None], sparse], dim=1)  # (1, T, C)
        assert tokens.shape[1] == self.num_tokens
        self.query_pe.copy_(tokens[:, None])
        l0 = tr.layers[0]
        q0 = l0.norm1(l0.self_attn(tokens, tokens, tokens))  # constant: the prompt tokens only
        self.queries0.copy_(q0[:, None])
        a0 = l0.cross_attn_token_to_image
        qc = a0.q_proj(q0 + tokens)[0]  # (T, Ci)
        T, d = self.num_tokens, a0.internal_dim // a0.heads
        w = torch.zeros(a0.heads * T, a0.internal_dim, device=dev)
        for h in range(a0.heads):
            w[h * T:(h + 1) * T, h * d:(h + 1) * d] = qc[:, h * d:(h + 1) * d] * d ** -0.5
        self.qfold.weight.copy_(w)

    def release(self) -> None:
        """Give the model back its previous trunk form (fast attention, dynamic shapes)."""
        restore_forms(self.model, self._prev_forms)

    # ------------------------------------------------------------------------------------------------ attention
    @staticmethod
    def _attn(a, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SAM attention on (1, 1, L, C) tensors: per-head last-axis slices and 4-D matmuls."""
        Q, K, V = a.q_proj(q), a.k_proj(k), a.v_proj(v)
        d = a.internal_dim // a.heads
        scale = d ** -0.5
        outs = []
        for h in range(a.heads):
            sl = slice(h * d, (h + 1) * d)
            p = torch.softmax(torch.matmul(Q[..., sl] * scale, K[..., sl].transpose(-1, -2)), dim=-1)
            outs.append(torch.matmul(p, V[..., sl]))
        o = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return a.out_proj(o)

    def _attn_const_q(self, a, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Token->image attention whose queries are constant: scores^T = K @ Qc^T with the dynamic K first."""
        K, V = a.k_proj(k), a.v_proj(v)
        st = self.qfold(K)  # (1, 1, N, heads*T), scale folded in
        T = self.num_tokens
        d = a.internal_dim // a.heads
        outs = []
        for h in range(a.heads):
            p = torch.softmax(st[..., h * T:(h + 1) * T].transpose(-1, -2), dim=-1)  # (1, 1, T, N)
            outs.append(torch.matmul(p, V[..., h * d:(h + 1) * d]))
        o = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return a.out_proj(o)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor):
        m = self.model
        md = m.mask_decoder
        tr = md.transformer
        C, N, h, w = self.C, self.N, self.h, self.w
        x = x * self.norm_scale + self.norm_shift
        f0, f1, f2 = m.image_encoder(x)  # trunk, then FPN laterals (the only consumers of the stage outputs)
        embed = m.channel_expansion_2(f2)
        feat_s0 = md.conv_s0(m.channel_expansion_0(f0))
        feat_s1 = md.conv_s1(m.channel_expansion_1(f1))
        src = embed + self.dense
        keys = src.reshape(1, C, 1, N).permute(0, 2, 3, 1)  # (1, 1, N, C)
        qpe, kpe = self.query_pe, self.key_pe

        l0 = tr.layers[0]
        queries = l0.norm2(self._attn_const_q(l0.cross_attn_token_to_image, keys + kpe, keys) + self.queries0)
        queries = l0.norm3(queries + l0.mlp(queries))
        keys = l0.norm4(keys + self._attn(l0.cross_attn_image_to_token, keys + kpe, queries + qpe, queries))
        for layer in tr.layers[1:]:
            q = queries + qpe
            queries = layer.norm1(queries + self._attn(layer.self_attn, q, q, queries))
            queries = layer.norm2(queries + self._attn(layer.cross_attn_token_to_image, queries + qpe, keys + kpe,
                                                       keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + self._attn(layer.cross_attn_image_to_token, keys + kpe, queries + qpe,
                                                 queries))
        queries = tr.norm_final_attn(queries + self._attn(tr.final_attn_token_to_image, queries + qpe, keys + kpe,
                                                          keys))

        src = keys.permute(0, 3, 1, 2).reshape(1, C, h, w)
        dc1, ln1, act1, dc2, act2 = md.output_upscaling
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)  # (1, C/8, S/4, S/4)

        tok_t = queries.permute(0, 1, 3, 2)  # (1, 1, C, T): token axis last, for the one-hot pickers
        hyper = [md.output_hypernetworks_mlps[i](sel(tok_t).reshape(1, 1, 1, C))
                 for sel, i in zip(self.sel_mask, self.mask_indices)]
        hyper = torch.cat(hyper, dim=2) if len(hyper) > 1 else hyper[0]  # (1, 1, K, C/8)
        lo = self.lo
        masks = torch.matmul(hyper.reshape(1, self.K, self.C8), up.reshape(1, self.C8, lo * lo))
        masks = masks.reshape(1, self.K, lo, lo)
        iou = md.iou_prediction_head(self.sel_iou(tok_t).reshape(1, 1, 1, C))  # (1, 1, 1, num_mask_tokens)
        a, b = self.iou_slice
        iou = iou[..., a:b].reshape(1, self.K)
        if not self.has_obj:
            return masks, iou
        obj = md.pred_obj_score_head(self.sel_obj(tok_t).reshape(1, 1, 1, C)).reshape(1, 1)
        return masks, iou, obj

    # ------------------------------------------------------------------------------------------------ reference
    @torch.no_grad()
    def reference(self, x: torch.Tensor):
        """The float model's own path for the same input and prompt: decode(encode(normalize(pixels)), prompt),
        with pixels = x * 256 (x as the deploy graph takes it)."""
        from napari_ultratinysam.model.ultratinysam import select_masks

        m = self.model
        mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        coords, labels = self.prompt_tensors()
        logits, iou, obj = m.decode(m.encode((x / (255.0 * INPUT_SCALE) - mean) / std), coords, labels)
        logits, iou = select_masks(logits, iou, self.multimask)
        if not self.has_obj:
            return logits, iou
        return logits, iou, obj

    @property
    def output_names(self) -> list[str]:
        return ["masks", "iou"] + (["object_score"] if self.has_obj else [])

    def output_layout(self) -> dict:
        """What each output holds (written to the deploy metadata)."""
        lo = self.lo
        out = {
            "masks": {"shape": [1, self.K, lo, lo], "meaning": "mask logits (threshold at 0) over the full input "
                      "frame at 1/4 resolution", "mask_tokens": list(self.mask_indices)},
            "iou": {"shape": [1, self.K], "meaning": "predicted IoU per mask (sigmoid applied)"},
        }
        if self.has_obj:
            out["object_score"] = {"shape": [1, 1], "meaning": "object-score logit (> 0: an object is present)"}
        return out
