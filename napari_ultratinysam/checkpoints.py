"""One checkpoint format: safetensors weights + the ModelConfig that built them (JSON in the metadata).

Loading never unpickles anything. Writes are atomic. Every failure is one line naming the file and the problem.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ModelConfig, from_dict, to_dict
from .io_utils import atomic_path
from .paths import DEFAULT_CHECKPOINT

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
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """-> (config, state dict, extra metadata). Raises CheckpointError with one clear line."""
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
        cfg = from_dict(ModelConfig, json.loads(meta["config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: bad config ({e})") from None
    extra = json.loads(meta.get("extra", "{}") or "{}")
    return cfg, sd, extra


def load_model(path: str | Path | None = None, config: ModelConfig | None = None):
    """Build the model a checkpoint describes and load its weights (strict).

    ``path=None`` loads the shipped default weights (paths.DEFAULT_CHECKPOINT, inside the package).
    ``config`` (optional) must match the checkpoint's architecture.
    """
    from .network.build import build_model

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
