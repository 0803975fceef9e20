"""One builder from a config; parameter and MAC counts per part."""
from __future__ import annotations

from pathlib import Path

import torch

from napari_ultratinysam.core.config import ModelConfig, resolve_model_config
from napari_ultratinysam.model.ultratinysam import UltraTinySAM


def build_model(config: ModelConfig | str | Path | None = None) -> UltraTinySAM:
    """Build UltraTinySAM from a ModelConfig, a model preset name (the package's configs/) or a YAML path (random
    init except for pretrained trunk weights the config asks for)."""
    cfg = config if isinstance(config, ModelConfig) else resolve_model_config(config)
    torch.manual_seed(0)  # deterministic init, so two builds of one config are equal (the PE buffer included)
    model = UltraTinySAM(cfg)
    return model.eval()


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_table(model: UltraTinySAM) -> list[tuple[str, int]]:
    md = model.mask_decoder
    rows = [
        ("image_encoder.trunk", count_params(model.image_encoder.trunk)),
        ("image_encoder.neck", count_params(model.image_encoder.neck)),
        ("channel_expansion_0..2", sum(count_params(getattr(model, f"channel_expansion_{i}")) for i in range(3))),
        ("prompt_encoder", count_params(model.prompt_encoder)),
        ("mask_decoder.transformer", count_params(md.transformer)),
        ("mask_decoder (rest)", count_params(md) - count_params(md.transformer)),
    ]
    rows.append(("total", count_params(model)))
    return rows


def mac_table(model: UltraTinySAM, num_points: int = 1) -> list[tuple[str, float]]:
    """MACs per part for one image and one prompt, counted by torch's FlopCounterMode (FLOPs / 2; includes
    attention matmuls, which fvcore in the original count left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    s = model.image_size
    x = torch.zeros(1, 3, s, s)
    pts = torch.full((1, num_points, 2), s / 2.0)
    lab = torch.ones(1, num_points)
    model = model.eval()
    # (no torch.no_grad(): FlopCounterMode's module tracker needs autograd graphs)
    with FlopCounterMode(display=False) as fc_trunk:
        feats_t = model.image_encoder.trunk(x)
    with FlopCounterMode(display=False) as fc_neck:
        model.image_encoder.neck(feats_t)
    with FlopCounterMode(display=False) as fc_enc:
        feats = model.encode(x)
    with FlopCounterMode(display=False) as fc_dec:
        model.decode(feats, pts, lab)
    trunk = fc_trunk.get_total_flops() / 2
    neck = fc_neck.get_total_flops() / 2
    enc = fc_enc.get_total_flops() / 2
    dec = fc_dec.get_total_flops() / 2
    return [
        ("image_encoder.trunk", trunk),
        ("image_encoder.neck", neck),
        ("adapters + high-res convs", enc - trunk - neck),
        ("prompt_encoder + mask_decoder", dec),
        ("total", enc + dec),
    ]
