"""TrainConfig: everything a training or fine-tuning run needs, loaded from YAML plus ``key=value`` overrides.

Presets (in a source checkout): model/configs/train_scratch.yaml (train from a model preset) and
model/configs/finetune.yaml (fine-tune a checkpoint on one CamVid-style dataset).
``utsam train -c PRESET.yaml lr=1e-4 data.copy_paste_p=0`` overrides any key, dotted for nested sections.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_ultratinysam.core.config import load_config, read_yaml
from napari_ultratinysam.core.paths import training_preset


@dataclass
class DatasetSpec:
    """One dataset of a mix.

    ``holdout`` (0..1): fraction of the images held out *by name hash* (md5 of the image name), independent of
    the listing order; ``take`` selects which part is used here: ``rest`` (not held out: training), ``holdout``
    (only the held-out part: validation / zero-shot evaluation) or ``all``.
    """

    path: str = ""
    format: str = "auto"
    split: str | None = "train"
    weight: float = 1.0
    holdout: float = 0.0
    take: str = "rest"
    min_area: int = 0                      # at the stored resolution (reader argument)
    max_images: int = 0                    # 0 = all
    reader_kwargs: dict = field(default_factory=dict)


@dataclass
class PromptConfig:
    p_box: float = 0.5                     # per batch: noisy box (else clicks); the original draws it per batch
    box_noise: float = 0.1                 # U(-1,1) * min(noise * side, box_max_px) per coordinate
    box_max_px: float = 20.0               # at 1024 in SAM; scaled to our 128 px frame by default below
    p_interior_first: float = 0.5          # first click at the distance-transform maximum, else uniform in the mask
    p_extra_clicks: float = 0.2            # per batch: add 1..max_extra_clicks random positive clicks to the first
    max_extra_clicks: int = 2
    correction_rounds: int = 2             # error-driven clicks, previous low-res logits fed back as mask input
    prob_from_gt: float = 0.1              # correction click drawn from the GT instead of the errors
    p_error_interior: float = 0.0          # correction click at the interior of the largest error region (as the
                                           # evaluation clicker and a user place it) instead of uniform in the errors
    feedback: str = "predicted"            # the candidate corrected after click 1: highest predicted IoU, or "best"


@dataclass
class LossConfig:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    obj: float = 1.0
    focal_alpha: float = -1.0             # < 0: no class weighting. SAM2's 0.25 collapsed short CPU runs to
                                           # empty masks (MODEL_CARD.md); set 0.25 for the original recipe
    focal_gamma: float = 2.0
    multimask_all: bool = False           # also train the 3 multimask candidates on several clicks and boxes
                                           # (the paper's protocol picks among them for every prompt)
    iou_rank: float = 0.0                 # weight of a pairwise ranking term on the IoU head among the candidates
                                           # of one prompt (trains the pick by predicted IoU); 0 = off
    first_round: float = 1.0              # weight of the first prompt's loss against each correction round's: with
                                           # many rounds the first click otherwise gets a small share of the loss


@dataclass
class AugConfig:
    hflip_p: float = 0.5
    scale_min: float = 0.6                 # random zoom of the letterboxed image (crop when > 1, pad when < 1)
    scale_max: float = 1.6
    scale_p: float = 0.7
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grayscale_p: float = 0.05
    copy_paste_p: float = 0.3              # paste 1..copy_paste_max objects of another image onto this one
    copy_paste_max: int = 2
    min_object_px: int = 30                # objects smaller than this at 128x128 (after augmentation) are not used


@dataclass
class TrainConfig:
    """A training or fine-tuning run. Defaults train the EfficientNet-Lite0 preset for a short CPU run."""

    model: str = "ultratinysam_effnet"     # model preset name (the package's configs/) or a model YAML
    init_checkpoint: str | None = None     # start from these weights (fine-tuning); overrides `model`
    datasets: list[DatasetSpec] = field(default_factory=list)
    val_datasets: list[DatasetSpec] = field(default_factory=list)
    steps: int = 1000                      # optimizer steps (0: derived from epochs)
    epochs: float = 0.0                    # used when steps == 0: epochs over the mixed training images
    time_budget_min: float = 0.0           # > 0: stop after this many minutes; the schedule follows time then
    batch_size: int = 8                    # images per step (per process)
    objects_per_image: int = 3
    lr: float = 3e-4
    min_lr_ratio: float = 0.1              # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1              # 0 for biases and norm parameters
    grad_clip: float = 1.0                 # L2 norm; 0 = off
    train_only: list[str] = field(default_factory=list)  # parameter-name prefixes to train (empty: all); frozen
                                           # batch-norm layers keep their statistics
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: AugConfig = field(default_factory=AugConfig)
    seed: int = 123
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    amp: bool = True                       # bf16 autocast, GPU only (ignored on CPU)
    threads: int = 0                       # torch CPU threads per process; 0 = torch default
    out_dir: str = "runs/train"
    val_every: int = 200                   # steps; 0 = only at the end
    val_images: int = 64                   # validation images (fixed, deterministic); 0 = all
    log_every: int = 10
    ckpt_every: int = 200                  # write last.safetensors every N steps (and at the end)
    save_half: bool = False                # store fp16 weights in best/last (the loader casts back)
    num_workers: int = 0                   # DataLoader workers
    cache_dir: str | None = None           # cache of letterboxed arrays (default: OUT/cache)
    resume: bool = True                    # continue from OUT/last.* when present


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (a preset name in a checkout's model/configs works too) + ``key=value`` overrides -> TrainConfig."""
    if path is not None:
        path = training_preset(path)
        data = read_yaml(path)
        if "train" in data and isinstance(data["train"], dict):
            return load_config(TrainConfig, path, overrides, section="train")
    return load_config(TrainConfig, path, overrides)
