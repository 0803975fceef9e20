"""The training loop: prompt simulation, AdamW + warm-up/cosine, clipping, validation, checkpoints, resume, DDP.

One process on CPU or one GPU by default. Under ``torchrun`` (WORLD_SIZE set) it runs PyTorch DDP: gloo on CPU,
nccl on GPU; every rank sees different samples (sample index = (step * world + rank) * batch + j) and rank 0 writes
logs and checkpoints.

Prompt simulation per step (napari_ultratinysam.core.prompts is the one simulator): per batch either a noisy box
(p_box) or clicks: a first positive click (the interior point = distance-transform maximum with
p_interior_first, else uniform in the mask), sometimes 1..max_extra_clicks extra random positive clicks; then
``correction_rounds`` error-driven clicks, each with the previous low-res logits fed back as mask input. A single
click is supervised through the 3 multimask outputs (min-loss), everything else through token 0.

Files in OUT: last_state.pt (resume: float32 weights, optimizer, step, random states; training/state.py),
last.safetensors (the same weights as a checkpoint, fp16 with save_half), best.safetensors (best validation
mIoU@1), train_log.csv, val_log.csv, config.yaml.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import yaml

from napari_ultratinysam.core import prompts
from napari_ultratinysam.core.io import atomic_path
from napari_ultratinysam.core.transforms import normalize
from napari_ultratinysam.model.build import build_model
from napari_ultratinysam.model.checkpoints import load_model, save_checkpoint
from napari_ultratinysam.training.config import LossConfig, PromptConfig, TrainConfig
from napari_ultratinysam.training.data import MixDataset, ValSet, load_cached
from napari_ultratinysam.training.losses import sam_loss
from napari_ultratinysam.training.state import (
    TrainStateError,
    load_train_state,
    save_train_state,
    validate_train_config,
)

ProgressCallback = Callable[[dict], None]


# ------------------------------------------------------------------ prompt simulation + loss


def _points_tensor(pts: list[np.ndarray], device) -> torch.Tensor:
    return torch.from_numpy(np.stack(pts).astype(np.float32)).to(device)


class SimulatedStep(nn.Module):
    """One training/validation forward: encode once per image, then the prompt rounds for every object.

    A module (not a function) so DDP can wrap it: its forward uses the model's encode and decode.
    """

    def __init__(self, model: nn.Module, pcfg: PromptConfig, lcfg: LossConfig):
        super().__init__()
        self.model, self.pcfg, self.lcfg = model, pcfg, lcfg
        self.rng = np.random.default_rng(0)

    def forward(self, images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, deterministic: bool = False):
        """images (B, S, S, 3) uint8; masks (B, K, S, S) bool; valid (B, S, S) bool -> (loss, stats dict)."""
        m, pc, rng = self.model, self.pcfg, self.rng
        dev = next(m.parameters()).device
        b, k, s = masks.shape[0], masks.shape[1], masks.shape[-1]
        feats = m.encode(normalize(images.to(dev)))
        feats = {n: f.repeat_interleave(k, 0) for n, f in feats.items()}
        gt = masks.reshape(b * k, s, s).to(dev)
        val = valid.to(dev).repeat_interleave(k, 0)
        gt_np, val_np = gt.cpu().numpy(), val.cpu().numpy()
        n = b * k
        if deterministic:
            use_box, extra, rounds = False, 0, 0
        else:
            use_box = rng.random() < pc.p_box
            extra = int(rng.integers(1, pc.max_extra_clicks + 1)) if (not use_box and pc.max_extra_clicks > 0
                                                                        and rng.random() < pc.p_extra_clicks) else 0
            rounds = pc.correction_rounds
        if use_box:
            boxes = [prompts.noisy_box(gt_np[i], rng, pc.box_noise, pc.box_max_px) for i in range(n)]
            pts = [bx.reshape(2, 2) for bx in boxes]
            labels = np.tile(np.array([[2, 3]], np.float32), (n, 1))
        else:
            pts = []
            for i in range(n):
                if deterministic or rng.random() < pc.p_interior_first:
                    first = prompts.interior_point(gt_np[i])
                else:
                    first = prompts.random_point(gt_np[i], rng)
                p = [first[None]]
                if extra:
                    p.append(prompts.random_points(gt_np[i], extra, rng))
                pts.append(np.concatenate(p))
            labels = np.ones((n, 1 + extra), np.float32)
        coords = _points_tensor(pts, dev)
        lab = torch.from_numpy(labels).to(dev)
        multimask = (not use_box) and coords.shape[1] == 1
        total, steps, stats = 0.0, 0, {}
        mask_input = None
        for r in range(rounds + 1):
            logits, iou, obj = m.decode(feats, coords, lab, mask_input)
            out = sam_loss(logits, iou, obj, gt, val, self.lcfg, multimask)
            w = self.lcfg.first_round if r == 0 else 1.0
            total = total + w * out["total"]
            steps += w
            if r == 0:
                stats = {f"first_{key}": float(out[key]) for key in ("focal", "dice", "iou", "obj")}
                stats["first_total"] = float(out["total"].detach())
                stats["miou_first"] = float(out["chosen_iou"].mean())
            stats["miou_last"] = float(out["chosen_iou"].mean())
            if r == rounds:
                break
            best = pc.feedback == "best"  # correct the candidate a good pick would show, not the IoU head's
            pred = ((out["up_best" if best else "up"] > 0) & val).cpu().numpy()
            new_pts, new_lab = [], []
            for i in range(n):
                pt, l = prompts.correction_click(gt_np[i], pred[i], rng, pc.prob_from_gt, ignore=~val_np[i],
                                                 p_error_interior=pc.p_error_interior)
                new_pts.append(pt)
                new_lab.append(l)
            coords = torch.cat([coords, _points_tensor(new_pts, dev)[:, None]], 1)
            lab = torch.cat([lab, torch.tensor(new_lab, dtype=lab.dtype, device=dev)[:, None]], 1)
            idx = out["best" if best else "chosen"].to(dev)
            mask_input = logits.detach().gather(1, idx[:, None, None, None].expand(-1, 1, *logits.shape[-2:]))
            multimask = False
        loss = total / steps
        stats["loss"] = float(loss.detach())
        stats["prompt"] = "box" if use_box else f"{1 + extra}click"
        return loss, stats


# ------------------------------------------------------------------ helpers


def lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    """The learning rate over ``cfg.lr`` at ``step``: linear warm-up over ``warmup_steps``, then cosine from 1 to
    ``min_lr_ratio`` over ``progress`` in [0, 1]."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, max(0.0, progress))
    return cfg.min_lr_ratio + 0.5 * (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * p))


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, start_step: int,
                 progress: Callable[[], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule as a LambdaLR that has set the lr of ``start_step``; each ``step()`` sets the next step's,
    ``cfg.lr * lr_factor(progress(), step)``.

    A LambdaLR, not LinearLR + CosineAnnealingLR: with a time budget the cosine follows ``progress()``, the steps
    done or the wall time spent, whichever is further, and those schedulers count steps only. Its position is the
    step, so a resumed run restores it from the state's step; its base is ``cfg.lr``, also on resume (as before,
    a resumed run follows its config)."""
    for g in opt.param_groups:
        g["initial_lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(progress(), step, cfg),
                                             last_epoch=start_step - 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def restrict_training(model: nn.Module, prefixes: list[str]) -> int:
    """Train only the parameters whose names start with one of ``prefixes`` (empty: all); returns how many values
    are trained. Raises ValueError naming the prefixes when they match no parameter."""
    prefixes = [str(p) for p in prefixes]
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(not prefixes or any(name.startswith(x) for x in prefixes))
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"train_only: {prefixes} match no parameter of the model "
                         "(e.g. mask_decoder.iou_prediction_head)")
    return n


def set_train_mode(model: nn.Module, on: bool = True) -> None:
    """model.train(on), but batch-norm layers with frozen parameters stay in eval mode (their statistics too)."""
    model.train(on)
    if on:
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in mod.parameters()):
                mod.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    d = torch.device(cfg.device)
    if d.type == "cuda" and d.index is None:
        d = torch.device(f"cuda:{local_rank}")
    return d


class _CsvLog:
    def __init__(self, path: Path, fields: list[str], enabled: bool):
        self.path, self.fields, self.enabled = path, fields, enabled
        if enabled and not path.is_file():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([row.get(k, "") for k in self.fields])


def build_training_model(cfg: TrainConfig) -> nn.Module:
    if cfg.init_checkpoint:
        model = load_model(cfg.init_checkpoint)
        # a learned candidate pick (inference/pick.py) fits only the weights it was fitted on: start without one
        # (utsam fit-pick fits a new one)
        model.cfg.candidate_pick = None
        return model
    return build_model(cfg.model)


@torch.no_grad()
def validate(step_module: SimulatedStep, val_set: ValSet, batch_size: int = 16) -> dict:
    """Validation loss (first pass) and mIoU@1 (interior click, candidate with the highest predicted IoU, IoU at
    the model resolution inside the valid area) over the fixed validation objects."""
    model = step_module.model
    was_training = model.training
    model.eval()
    losses, ious, count = 0.0, 0.0, 0
    for i in range(0, len(val_set), batch_size):
        items = [val_set[j] for j in range(i, min(len(val_set), i + batch_size))]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["masks"] for it in items])
        valid = torch.stack([it["valid"] for it in items])
        _, st = step_module(images, masks, valid, deterministic=True)
        nb = len(items)
        losses += st["first_total"] * nb
        ious += st["miou_first"] * nb
        count += nb
    set_train_mode(model, was_training)
    return {"val_loss": losses / max(1, count), "val_miou1": ious / max(1, count), "val_objects": count}


# ------------------------------------------------------------------ the loop


def train(cfg: TrainConfig, progress_callback: ProgressCallback | None = None,
          should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) training as configured. Returns a summary dict (steps, best/last validation, paths).

    ``progress_callback(dict)`` is called every ``log_every`` steps and after each validation (rank 0 only);
    ``should_stop()`` returning True ends the run cleanly after the current step (a checkpoint is written).
    """
    validate_train_config(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = "WORLD_SIZE" in os.environ and world >= 1
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(cfg, local_rank)
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not cfg.datasets:
        raise ValueError("train: no datasets configured (datasets: [{path: ...}])")
    if cfg.prompts.feedback not in ("predicted", "best"):
        raise ValueError(f"prompts.feedback: must be predicted or best, got {cfg.prompts.feedback!r}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    if main:
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump({"train": dataclasses.asdict(cfg)}, sort_keys=False))

    # data (rank 0 builds the caches first so ranks never write the same file)
    if distributed and not main:
        torch.distributed.barrier()
    sets = [load_cached(s, cache_dir, min_px=20, log=log if main else (lambda *_: None)) for s in cfg.datasets]
    vsets = [load_cached(s, cache_dir, min_px=20, for_training=False, log=log if main else (lambda *_: None))
             for s in cfg.val_datasets]
    if distributed and main:
        torch.distributed.barrier()
    n_train = sum(len(s) for s in sets)
    total_steps = (cfg.steps if cfg.steps > 0
                   else max(1, int(math.ceil(cfg.epochs * n_train / (cfg.batch_size * world)))))
    if main:
        log(f"train: {n_train} images / {sum(s.num_objects for s in sets)} objects in {len(sets)} sets; "
            f"{total_steps} steps x {cfg.batch_size} images x {cfg.objects_per_image} objects x {world} process(es)"
            + (f", time budget {cfg.time_budget_min} min" if cfg.time_budget_min > 0 else ""))
    mix = MixDataset(sets, cfg.data, cfg.objects_per_image, seed=cfg.seed)
    val_set = ValSet(vsets, cfg.val_images) if vsets else None

    # model + optimiser
    seed_everything(cfg.seed)
    model = build_training_model(cfg).to(device)
    n_trained = restrict_training(model, cfg.train_only)
    set_train_mode(model, True)
    if main and cfg.train_only:
        log(f"train_only {cfg.train_only}: {n_trained} of {sum(p.numel() for p in model.parameters())} values trained")
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    step_mod = SimulatedStep(model, cfg.prompts, cfg.loss)
    start_step, elapsed_before, best = 0, 0.0, -1.0
    state_path, last_path, best_path = out / "last_state.pt", out / "last.safetensors", out / "best.safetensors"
    if cfg.resume and state_path.is_file() and last_path.is_file():
        st = load_train_state(state_path)  # first: a refused state file stops before anything else is read
        if st.get("model") is not None:  # the float32 weights of the state's own step
            try:
                model.load_state_dict(st["model"])
            except RuntimeError:
                raise TrainStateError(f"training state {state_path}: its weights do not match the configured "
                                      "model; use another out_dir or resume=false") from None
        else:  # a state written before the weights moved into it
            resumed = load_model(last_path)
            try:
                model.load_state_dict(resumed.state_dict())
            except RuntimeError:
                raise TrainStateError(f"{last_path}: does not match the configured model ({resumed.cfg.name}); "
                                      "use another out_dir or resume=false") from None
        try:
            opt.load_state_dict(st["optimizer"])
            start_step, elapsed_before, best = int(st["step"]), float(st["elapsed"]), float(st["best"])
            step_mod.rng = np.random.default_rng()
            step_mod.rng.bit_generator.state = st["rng"][rank] if rank < len(st["rng"]) else st["rng"][0]
            torch.set_rng_state(st["torch_rng"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainStateError(f"training state {state_path}: does not fit this run ({msg}); delete it (with "
                                  "last.safetensors) or set resume=false to start over") from None
        if main:
            log(f"resumed from {last_path} at step {start_step}")
    else:
        step_mod.rng = np.random.default_rng([cfg.seed, rank])
    runner: nn.Module = step_mod
    if distributed:
        runner = nn.parallel.DistributedDataParallel(step_mod, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=True)

    class _Indices(torch.utils.data.Sampler):
        def __iter__(self_inner):
            s = start_step
            while True:
                base = (s * world + rank) * cfg.batch_size
                yield from range(base, base + cfg.batch_size)
                s += 1

    loader = torch.utils.data.DataLoader(mix, batch_size=cfg.batch_size, sampler=_Indices(),
                                         num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    train_log = _CsvLog(out / "train_log.csv", ["step", "loss", "focal", "dice", "iou_loss", "obj", "miou_first",
                                                "miou_last", "lr", "samples_per_s", "elapsed_s", "prompt"], main)
    val_log = _CsvLog(out / "val_log.csv", ["step", "val_loss", "val_miou1", "val_objects", "elapsed_s"], main)
    use_amp = cfg.amp and device.type == "cuda"

    def save(step: int, elapsed: float) -> None:
        if not main:
            return
        rng_states = [step_mod.rng.bit_generator.state]
        if distributed:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        # the state first: it alone decides a resume, so a kill between the two files is harmless
        save_train_state(state_path, model, opt, step, elapsed, best, rng_states)
        save_checkpoint(model, last_path, extra={"step": step, "elapsed_s": round(elapsed, 1)}, half=cfg.save_half)

    def gather_rng_if_needed():
        if distributed and not main:
            torch.distributed.all_gather_object([None] * world, step_mod.rng.bit_generator.state)

    def run_val(step: int, elapsed: float) -> dict | None:
        nonlocal best
        if val_set is None or not main:
            return None
        res = validate(step_mod, val_set)
        val_log.write({"step": step, **{k: round(v, 5) if isinstance(v, float) else v for k, v in res.items()},
                       "elapsed_s": round(elapsed, 1)})
        log(f"step {step}: val_loss {res['val_loss']:.4f} val_mIoU@1 {res['val_miou1']:.4f} "
            f"({res['val_objects']} objects)")
        if res["val_miou1"] > best:
            best = res["val_miou1"]
            save_checkpoint(model, best_path, extra={"step": step, "val_miou1": round(best, 5),
                                                     "val_loss": round(res["val_loss"], 5)}, half=cfg.save_half)
        if progress_callback:
            progress_callback({"event": "val", "step": step, "total": total_steps, **res})
        return res

    t_start = time.time() - elapsed_before

    def progress_at(done: int) -> float:
        """Where the schedule is: the steps done or, with a time budget, the time spent, whichever is further."""
        p = done / total_steps
        if cfg.time_budget_min > 0:
            p = max(p, (time.time() - t_start) / (cfg.time_budget_min * 60))
        return p

    first_val = None
    if start_step == 0:
        first_val = run_val(0, 0.0)
    try:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start_step, disable=not main, dynamic_ncols=True, mininterval=5)
    except ImportError:  # pragma: no cover
        bar = None
    step = start_step
    it = iter(loader)
    t_win, n_win = time.time(), 0
    stopped = "steps"
    # progress is measured before each step (at the end of the one before: after its validation and checkpoint)
    # and read by the stop rule and the scheduler, which sets the step's lr from it
    progress = progress_at(step)
    sched = lr_scheduler(opt, cfg, start_step, lambda: progress)
    while step < total_steps:
        stop = progress >= 1.0 or bool(should_stop and should_stop())
        if distributed:
            flag = torch.tensor([1.0 if stop else 0.0])
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            stopped = "time budget" if progress >= 1.0 else "stopped"
            break
        lr = sched.get_last_lr()[0]
        batch = next(it)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, st = runner(batch["image"], batch["masks"], batch["valid"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        n_win += cfg.batch_size * world
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{st['loss']:.3f}", iou=f"{st['miou_last']:.3f}", lr=f"{lr:.2e}", refresh=False)
        if step % cfg.log_every == 0 or step == total_steps:
            now = time.time()
            sps = n_win / max(1e-9, now - t_win)
            t_win, n_win = now, 0
            row = {"step": step, "loss": round(st["loss"], 5), "focal": round(st["first_focal"], 5),
                   "dice": round(st["first_dice"], 5), "iou_loss": round(st["first_iou"], 5),
                   "obj": round(st["first_obj"], 5), "miou_first": round(st["miou_first"], 4),
                   "miou_last": round(st["miou_last"], 4), "lr": f"{lr:.3e}", "samples_per_s": round(sps, 2),
                   "elapsed_s": round(now - t_start, 1), "prompt": st["prompt"]}
            train_log.write(row)
            if progress_callback and main:
                progress_callback({"event": "train", "total": total_steps, **row})
        if cfg.val_every > 0 and step % cfg.val_every == 0:
            run_val(step, time.time() - t_start)
        if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
            save(step, time.time() - t_start) if main else gather_rng_if_needed()
        progress = progress_at(step)
        sched.step()
    if bar is not None:
        bar.close()
    elapsed = time.time() - t_start
    last_val = None
    if val_set is not None and (cfg.val_every <= 0 or step % cfg.val_every != 0):
        last_val = run_val(step, elapsed)
    save(step, elapsed) if main else gather_rng_if_needed()
    if main and not best_path.is_file():
        save_checkpoint(model, best_path, extra={"step": step}, half=cfg.save_half)
    summary = {"steps": step, "total_steps": total_steps, "stopped_by": stopped, "elapsed_s": round(elapsed, 1),
               "best_val_miou1": best, "first_val": first_val, "last_val": last_val, "out_dir": str(out),
               "last": str(last_path), "best": str(best_path)}
    if main:
        log(f"done: {step} steps in {elapsed / 60:.1f} min ({stopped}); best val mIoU@1 {best:.4f}")
        if progress_callback:
            progress_callback({"event": "done", **summary})
    if distributed:
        torch.distributed.barrier()
    return summary
