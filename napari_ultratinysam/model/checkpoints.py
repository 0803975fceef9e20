"""One checkpoint format: safetensors weights + the ModelConfig that built them (JSON in the metadata).

Loading never unpickles anything. Writes are atomic. Every failure is one line naming the file and the problem.
torch is imported on use (the ``[train]`` extra): the package's ONNX inference path imports this module for
DEFAULT_CHECKPOINT without it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ultratinysam.core.config import ModelConfig, from_dict, to_dict
from napari_ultratinysam.core.extras import require
from napari_ultratinysam.core.io import atomic_path
from napari_ultratinysam.core.paths import DEFAULT_CHECKPOINT

if TYPE_CHECKING:  # annotations only: torch is imported on use
    import torch

FORMAT = "utsam-checkpoint-v1"


class CheckpointError(ValueError):
    """A missing, truncated or mismatched checkpoint."""


def save_checkpoint(model: torch.nn.Module, path: str | Path, extra: dict | None = None,
                    half: bool = False) -> Path:
    """Write ``model``'s weights and config to ``path`` (.safetensors), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    meta = {"format": FORMAT, "config": json.dumps(to_dict(model.cfg)), "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)
        # safetensors re-creates the file (mode 0600) after atomic_path set the usual mode: set it again
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


# sane bounds for every integer of a ModelConfig read from a file: a crafted value must not build a huge model
_INT_BOUNDS = {
    "image_size": (32, 4096), "neck_dim": (1, 4096), "decoder_dim": (1, 4096), "decoder_depth": (1, 64),
    "decoder_heads": (1, 256), "decoder_mlp_dim": (1, 65536), "attention_downsample_rate": (1, 64),
    "num_multimask_outputs": (1, 16), "iou_head_depth": (1, 64), "iou_head_hidden_dim": (1, 65536),
    "mask_in_chans": (1, 4096), "multimask_max_points": (0, 1024),
}
_TRUNKS = ("mobilevit_xs", "efficientnet_lite0")


def validate_model_config(cfg: ModelConfig, where: str) -> None:
    """One CheckpointError naming ``where`` and the field when a ModelConfig read from disk is not sane."""
    def bad(field: str, msg: str):
        raise CheckpointError(f"{where}: config field {field}: {msg}")

    if not isinstance(cfg.name, str) or not cfg.name or len(cfg.name) > 200:
        bad("name", f"expected a short non-empty name, got {cfg.name!r}")
    for field, (lo, hi) in _INT_BOUNDS.items():
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            bad(field, f"expected an integer in {lo}..{hi}, got {v!r}")
    if cfg.image_size % 16:
        bad("image_size", f"must be a multiple of 16, got {cfg.image_size}")
    if cfg.decoder_dim % cfg.decoder_heads:
        bad("decoder_heads", f"{cfg.decoder_heads} does not divide decoder_dim {cfg.decoder_dim}")
    if cfg.trunk not in _TRUNKS:
        bad("trunk", f"unknown trunk {cfg.trunk!r}; expected one of {', '.join(_TRUNKS)}")
    depths = list(cfg.trunk_depths)
    if len(depths) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 64 for d in depths):
        bad("trunk_depths", f"expected two integers in 1..64, got {depths!r}")
    for field in ("trunk_pretrained", "fpn_top_down", "use_high_res_features", "pred_obj_scores",
                  "gate_by_object_score"):
        if not isinstance(getattr(cfg, field), bool):
            bad(field, f"expected true or false, got {getattr(cfg, field)!r}")
    pick = cfg.candidate_pick
    if pick is not None:
        from napari_ultratinysam.core.config import check_pick

        for field in ("mean", "std", "w1", "b1", "w2"):
            vals = getattr(pick, field)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals):
                bad(f"candidate_pick.{field}", "expected finite numbers")
        if not math.isfinite(pick.b2):
            bad("candidate_pick.b2", f"expected a finite number, got {pick.b2!r}")
        try:
            check_pick(pick, where=f"{where}: config field candidate_pick")
        except ValueError as e:
            raise CheckpointError(str(e)) from None


def _check_finite(sd: dict[str, torch.Tensor], path: Path) -> None:
    import torch

    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"checkpoint {path}: weight {k} has NaN or infinite values; the file is "
                                  f"damaged or came from a diverged run")


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """-> (config, state dict, extra metadata). Raises CheckpointError with one clear line."""
    require("torch", "reading a .safetensors checkpoint")
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt / truncated files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({msg}); "
                              f"it may be truncated or of another format") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"checkpoint {path}: no UltraTinySAM config in its metadata "
                              f"(format {meta.get('format')!r}); was it written by utsam?")
    try:
        raw = json.loads(meta["config"])
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        cfg = from_dict(ModelConfig, raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: bad config ({e})") from None
    validate_model_config(cfg, f"checkpoint {path}")
    try:
        extra = json.loads(meta.get("extra", "{}") or "{}")
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: metadata field extra is not JSON ({e})") from None
    if not isinstance(extra, dict):
        raise CheckpointError(f"checkpoint {path}: metadata field extra: expected a JSON object, "
                              f"got {type(extra).__name__}")
    _check_finite(sd, path)
    return cfg, sd, extra


def load_model(path: str | Path | None = None, config: ModelConfig | None = None):
    """Build the model a checkpoint describes and load its weights (strict).

    ``path=None`` loads the shipped default weights (paths.DEFAULT_CHECKPOINT, inside the package).
    ``config`` (optional) must match the checkpoint's architecture.
    """
    require("torch", "loading a checkpoint into the torch model")
    from napari_ultratinysam.model.build import build_model

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    cfg, sd, _extra = read_checkpoint(path)
    if config is not None:
        cfg = config
    cfg.trunk_pretrained = False  # the checkpoint supplies every weight
    model = build_model(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        what = f"{len(missing)} missing keys (first {missing[0]})" if missing else \
            f"{len(unexpected)} unexpected keys (first {unexpected[0]})"
        raise CheckpointError(f"checkpoint {path}: does not match the {cfg.name} architecture: {what}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, "
                                  f"the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return model.eval()


def average_checkpoints(paths, out: str | Path | None = None, extra: dict | None = None):
    """The uniform average of the weights of several checkpoints of one architecture (a "model soup": runs that
    continue from the same checkpoint stay in one basin, and their mean is often better than each). Integer
    buffers (e.g. BatchNorm's batch counters) are taken from the first. Returns the model; ``out`` also writes it.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints: no checkpoints given")
    model = load_model(paths[0])
    own = model.state_dict()
    acc = {k: v.double().clone() for k, v in own.items() if v.is_floating_point()}
    for p in paths[1:]:
        cfg, sd, _ = read_checkpoint(p)
        if cfg.name != model.cfg.name:
            raise CheckpointError(f"checkpoint {p}: architecture {cfg.name} differs from {paths[0]}'s "
                                  f"({model.cfg.name}); only one architecture can be averaged")
        if set(sd) != set(own) or any(tuple(sd[k].shape) != tuple(own[k].shape) for k in own):
            raise CheckpointError(f"checkpoint {p}: its weights do not match {paths[0]}'s (keys or shapes)")
        for k in acc:
            acc[k] += sd[k].double()
    model.load_state_dict({**own, **{k: (v / len(paths)).to(own[k].dtype) for k, v in acc.items()}}, strict=True)
    model.eval()
    if out is not None:
        save_checkpoint(model, out, extra={"averaged": [str(p) for p in paths], **(extra or {})})
    return model
