"""`utsam train -c CONFIG.yaml [key=value ...]`: train from scratch or fine-tune (training/loop.py).
`utsam fit-pick`: fit a checkpoint's learned choice among a single click's candidates (pick.py)."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune UltraTinySAM (single process or torchrun DDP)",
                              description="Train or fine-tune. Every config key can be overridden as key=value "
                                          "(dotted for sections, e.g. prompts.p_box=0.3; YAML values, e.g. "
                                          "datasets='[{path: DIR, split: train}]').")
    p.add_argument("-c", "--config", required=True,
                   help="training YAML (model/configs/train_scratch.yaml, finetune.yaml) or a preset name")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)

    q = subparsers.add_parser("fit-pick", help="fit the learned choice among a single click's 3 candidates",
                              description="Click every object of a dataset (centre of mass, interior point and a "
                                          "random pixel), record the 3 candidates' features and real IoUs, fit the "
                                          "pick (pick.py) and write a checkpoint that carries it. Fit it on the "
                                          "data the checkpoint was fine-tuned on, never on a test split.")
    q.add_argument("--checkpoint", required=True, help="the checkpoint (.safetensors) to add the pick to")
    q.add_argument("--dataset", required=True, help="dataset folder (any reader: camvid, coco, ...)")
    q.add_argument("--split", default="train", help="split to fit on (default train)")
    q.add_argument("--format", default="auto", help="dataset format (default auto)")
    q.add_argument("--val-split", default=None, help="also report the pick on this split (not fitted on)")
    q.add_argument("--out", required=True, help="the checkpoint to write (may be --checkpoint itself)")
    q.add_argument("--min-area", type=int, default=200, help="skip objects with fewer pixels (default 200)")
    q.add_argument("--max-images", type=int, default=None, help="use at most this many images of each split")
    q.add_argument("--hidden", type=int, default=16, help="hidden units of the pick MLP (default 16)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_fit_pick)


def _pick_data(predictor, path: str, fmt: str, split: str, min_area: int, max_images, seed: int, what: str):
    from tqdm import tqdm

    from ..data.readers import read_dataset
    from ..pick import collect_pick_data

    ds = read_dataset(path, format=fmt, split=split, min_area=min_area)
    n = len(ds) if max_images is None else min(len(ds), max(0, int(max_images)))
    if n == 0:
        raise ValueError(f"{path}: split {split!r} has no images")
    bar = tqdm(total=n, desc=f"fit-pick {what}", unit="img")
    items = ((ds[i].image, ds[i].masks) for i in range(n))
    data = collect_pick_data(predictor, items, seed=seed, min_area=min_area, progress=lambda k: bar.update(1))
    bar.close()
    return data


def run_fit_pick(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoints import load_model, read_checkpoint, save_checkpoint
    from ..pick import chosen_iou, fit_candidate_pick
    from ..predictor import Predictor

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: --checkpoint file does not exist")
    if args.hidden < 1:
        raise ValueError(f"--hidden: must be >= 1, got {args.hidden}")
    _, sd, extra = read_checkpoint(args.checkpoint)
    half = any(v.dtype == torch.float16 for v in sd.values())  # keep a half-precision checkpoint half
    model = load_model(args.checkpoint)
    model.cfg.candidate_pick = None  # the data are collected with the plain highest-IoU order
    predictor = Predictor.from_model(model)
    fit = _pick_data(predictor, args.dataset, args.format, args.split, args.min_area, args.max_images, args.seed,
                     args.split)
    pick = fit_candidate_pick(fit, hidden=args.hidden, seed=args.seed,
                              fitted_on=f"{Path(args.dataset).name} {args.split}: {len(fit)} clicks")
    report = {"fit_prompts": len(fit), "fit_iou_by_score": round(chosen_iou(None, fit), 4),
              "fit_iou_by_pick": round(chosen_iou(pick, fit), 4)}
    if args.val_split:
        val = _pick_data(predictor, args.dataset, args.format, args.val_split, args.min_area, args.max_images,
                         args.seed, args.val_split)
        report.update({"val_prompts": len(val), "val_iou_by_score": round(chosen_iou(None, val), 4),
                       "val_iou_by_pick": round(chosen_iou(pick, val), 4)})
    model.cfg.candidate_pick = pick
    save_checkpoint(model, args.out, extra={**extra, "candidate_pick": pick.fitted_on}, half=half)
    print(json.dumps({"out": str(args.out), **report}))
    return 0


def run(args) -> int:
    import dataclasses

    from .config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    from .loop import train

    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0
