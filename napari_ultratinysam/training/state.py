"""The training run's files that must be right before any work starts: the config's numbers and folders
(:func:`validate_train_config`) and the resume state OUT/last_state.pt (:func:`save_train_state`,
:func:`load_train_state`: tensors and plain data only, read with ``torch.load(weights_only=True)``, its schema
checked, so a crafted state file cannot run code on resume)."""
from __future__ import annotations

import dataclasses
import errno
import math
import os
from pathlib import Path

import torch

from napari_ultratinysam.core.io import atomic_path
from napari_ultratinysam.training.config import TrainConfig


class TrainStateError(ValueError):
    """A training state (OUT/last_state.pt) that cannot be resumed from: one line naming the file."""


# numeric config keys that may be negative, and those that must be > 0 (every other number: finite and >= 0)
_MAY_BE_NEGATIVE = {"loss.focal_alpha"}
_POSITIVE = {"batch_size", "objects_per_image", "lr", "log_every", "data.scale_min", "data.scale_max"}
_AT_MOST_ONE = {"min_lr_ratio", "loss.focal_alpha"}


def _check_numbers(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        key, v = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _check_numbers(v, key + ".")
            continue
        if isinstance(v, list) and v and all(dataclasses.is_dataclass(x) for x in v):
            for i, x in enumerate(v):
                _check_numbers(x, f"{key}[{i}].")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"train config key {key}: must be a finite number, got {v!r}")
        if key in _POSITIVE and v <= 0:
            raise ValueError(f"train config key {key}: must be > 0, got {v!r}")
        if key not in _MAY_BE_NEGATIVE and v < 0:
            raise ValueError(f"train config key {key}: must be >= 0, got {v!r}")
        leaf = f.name
        if (key in _AT_MOST_ONE or leaf.startswith("p_") or leaf.endswith("_p") or leaf in ("prob_from_gt",
                                                                                            "holdout")) and v > 1:
            raise ValueError(f"train config key {key}: must be at most 1, got {v!r}")


def validate_train_config(cfg: TrainConfig) -> None:
    """One ValueError naming the key for a config that cannot train as meant (before any work starts)."""
    _check_numbers(cfg)
    if cfg.steps == 0 and cfg.epochs <= 0:
        raise ValueError("train config key steps: 0 means 'derive from epochs', but epochs is 0; set steps > 0 "
                         "or epochs > 0")
    if cfg.data.scale_max < cfg.data.scale_min:
        raise ValueError(f"train config key data.scale_max: {cfg.data.scale_max} is below data.scale_min "
                         f"{cfg.data.scale_min}")
    for i, d in enumerate(list(cfg.datasets) + list(cfg.val_datasets)):
        if d.holdout >= 1:
            raise ValueError(f"train config key datasets[{i}].holdout: must be below 1, got {d.holdout}")
    if not isinstance(cfg.device, str) or not cfg.device.strip():
        raise ValueError(f"train config key device: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.device != "auto":
        try:
            d = torch.device(cfg.device)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"train config key device: {cfg.device!r} is not a device; expected auto, cpu, "
                             "cuda or cuda:N") from None
        if d.type not in ("cpu", "cuda"):
            raise ValueError(f"train config key device: {cfg.device!r}: only cpu and cuda are supported")
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"train config key device: {cfg.device!r}, but CUDA is not available here "
                                 "(use device=auto or cpu)")
            if d.index is not None and d.index >= torch.cuda.device_count():
                raise ValueError(f"train config key device: {cfg.device!r}, but only {torch.cuda.device_count()} "
                                 "CUDA device(s) exist")
    out = Path(cfg.out_dir)
    if not str(cfg.out_dir).strip():
        raise ValueError("train config key out_dir: empty")
    if out.exists() and not out.is_dir():
        raise ValueError(f"train config key out_dir: {out} is a file, not a folder")
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ValueError(f"train config key out_dir: {out} lies under {p}, which is a file")
    if cfg.cache_dir and Path(cfg.cache_dir).exists() and not Path(cfg.cache_dir).is_dir():
        raise ValueError(f"train config key cache_dir: {cfg.cache_dir} is a file, not a folder")


def load_train_state(path: Path) -> dict:
    """Read OUT/last_state.pt without unpickling arbitrary objects; its schema is checked. One TrainStateError
    naming the file otherwise (a crafted, truncated or foreign file)."""
    import pickle

    hint = "delete it (with last.safetensors) or set resume=false to start over"
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainStateError(f"training state {path}: refused, it holds Python objects other than tensors and "
                              f"plain data (not written by utsam train); {hint}") from None
    except MemoryError:
        raise
    except Exception as e:  # torch raises several types for truncated / foreign files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainStateError(f"training state {path}: cannot be read ({msg}); it may be truncated; "
                              f"{hint}") from None
    problems = []
    if not isinstance(st, dict):
        problems.append(f"expected a mapping, got {type(st).__name__}")
    else:
        if not isinstance(st.get("optimizer"), dict):
            problems.append("optimizer: missing or not a mapping")
        if isinstance(st.get("step"), bool) or not isinstance(st.get("step"), int) or st["step"] < 0:
            problems.append(f"step: expected an integer >= 0, got {st.get('step')!r}")
        for k in ("elapsed", "best"):
            v = st.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{k}: expected a finite number, got {v!r}")
        rng = st.get("rng")
        if not isinstance(rng, list) or not rng or not all(isinstance(r, dict) for r in rng):
            problems.append("rng: expected a non-empty list of generator states")
        t = st.get("torch_rng")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 1:
            problems.append("torch_rng: expected a 1-D uint8 tensor")
        model = st.get("model")  # absent in states written before the weights moved in
        if model is not None and (not isinstance(model, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):
            problems.append("model: expected a mapping of parameter names to tensors")
    if problems:
        raise TrainStateError(f"training state {path}: field {problems[0]}; {hint}")
    return st


def save_train_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     elapsed: float, best: float, rng_states: list) -> None:
    """Write OUT/last_state.pt atomically: the float32 weights, the optimizer, the step and the random states in
    one file, so a kill at any point leaves a state that resumes consistently (the weights and the optimizer of
    one step, never a mix)."""
    with atomic_path(path) as tmp:
        try:
            torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": optimizer.state_dict(), "step": step, "elapsed": elapsed, "best": best,
                        "rng": rng_states, "torch_rng": torch.get_rng_state()}, tmp)
        except RuntimeError as e:  # torch reports a short write (e.g. a full disk) as a RuntimeError
            fs = os.statvfs(tmp.parent)
            code = errno.ENOSPC if fs.f_bavail * fs.f_frsize < (1 << 20) else errno.EIO
            raise OSError(code, f"{os.strerror(code)} (the training state could not be written)", str(path)) \
                from e
