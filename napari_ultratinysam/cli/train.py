"""`utsam train -c CONFIG.yaml [key=value ...]`: train from scratch or fine-tune (training/loop.py).
`utsam fit-pick`: fit a checkpoint's learned choice among a single click's candidates (inference/pick.py)."""
from __future__ import annotations

import json

from napari_ultratinysam.core.parsers import check_output_file, nonnegative_int
from napari_ultratinysam.training.fit_pick import CLICK_STYLES


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
                              description="Click every object of the fitting data (centre of mass, interior point "
                                          "and a random pixel), record the 3 candidates' features and real IoUs, "
                                          "fit the pick (inference/pick.py), write a checkpoint that carries it. The "
                                          "fitting data are a training config's datasets (-c, with key=value "
                                          "overrides; its val_datasets are reported) or one --dataset; fit on the "
                                          "data the checkpoint was trained on, never on a test split.")
    q.add_argument("--checkpoint", required=True, help="the checkpoint (.safetensors) to add the pick to")
    q.add_argument("--out", required=True, help="the checkpoint to write (may be --checkpoint itself)")
    q.add_argument("-c", "--config", default=None, help="training YAML or preset: fit on its datasets")
    q.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the -c config")
    q.add_argument("--dataset", default=None, help="or fit on this dataset folder (any reader)")
    q.add_argument("--split", default="train", help="--dataset's split (default train)")
    q.add_argument("--format", default="auto", help="--dataset's format (default auto)")
    q.add_argument("--val-split", default=None, help="also report the pick on this split of --dataset")
    q.add_argument("--min-area", type=nonnegative_int, default=200, help="skip objects with fewer pixels (default 200)")
    q.add_argument("--min-area-128", type=nonnegative_int, default=0,
                   help="skip objects with fewer pixels once squashed to 128x128 (the paper protocol's floor: 150)")
    q.add_argument("--clicks", default=",".join(CLICK_STYLES),
                   help=f"first clicks per object, comma list of {', '.join(CLICK_STYLES)} (default all three)")
    q.add_argument("--max-images", type=nonnegative_int, default=0,
                   help="at most this many images of each dataset (0 = all)")
    q.add_argument("--hidden", type=int, default=16, help="hidden units of the pick MLP (default 16)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_fit_pick)


def _fit_pick_specs(args) -> tuple[list, list]:
    """(fitting DatasetSpecs, reported DatasetSpecs) from -c CONFIG or --dataset."""
    from napari_ultratinysam.training.config import DatasetSpec, load_train_config

    if (args.config is None) == (args.dataset is None):
        raise ValueError("fit-pick: give either -c CONFIG (fit on its datasets) or --dataset DIR")
    if args.config is None:
        if args.overrides:
            raise ValueError(f"fit-pick: key=value overrides ({args.overrides[0]}) need -c CONFIG")
        one = dict(path=args.dataset, format=args.format, min_area=args.min_area)
        val = [DatasetSpec(**one, split=args.val_split)] if args.val_split else []
        return [DatasetSpec(**one, split=args.split)], val
    cfg = load_train_config(args.config, args.overrides)
    if not cfg.datasets:
        raise ValueError(f"fit-pick: config {args.config} has no datasets")
    return list(cfg.datasets), list(cfg.val_datasets)


def _click_styles(text: str) -> list[str]:
    styles = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in styles if c not in CLICK_STYLES]
    if bad or not styles:
        raise ValueError(f"--clicks: unknown {bad or text!r}; choose from {', '.join(CLICK_STYLES)}")
    return styles


def _pick_data(predictor, specs, args, styles: list[str], what: str):
    from tqdm import tqdm

    from napari_ultratinysam.data.readers import read_dataset
    from napari_ultratinysam.training.data import select_names
    from napari_ultratinysam.training.fit_pick import PickData, collect_pick_data

    data = PickData([], [])
    for spec in specs:
        if what == "fit" and (spec.split or "").lower() == "test":
            raise ValueError(f"dataset {spec.path}: refusing to fit the pick on a test split")
        ds = read_dataset(spec.path, format=spec.format, split=spec.split, min_area=max(spec.min_area, 0),
                          **(spec.reader_kwargs or {}))
        idx = select_names(ds.names, spec)
        if args.max_images > 0:
            idx = idx[:args.max_images]
        if not idx:
            raise ValueError(f"dataset {spec.path} (split {spec.split}): no images to fit on")
        bar = tqdm(total=len(idx), desc=f"fit-pick {what} {spec.path} {spec.split or ''}".rstrip(), unit="img")
        items = ((ds[i].image, ds[i].masks) for i in idx)
        got = collect_pick_data(predictor, items, styles=styles, seed=args.seed,
                                min_area=args.min_area, min_area_128=args.min_area_128,
                                progress=lambda k: bar.update(1))
        bar.close()
        data.features += got.features
        data.ious += got.ious
    return data


def run_fit_pick(args) -> int:
    from pathlib import Path

    import torch

    from napari_ultratinysam.inference.predictor import Predictor
    from napari_ultratinysam.model.checkpoints import load_model, read_checkpoint, save_checkpoint
    from napari_ultratinysam.training.fit_pick import chosen_iou, fit_candidate_pick

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: --checkpoint file does not exist")
    if args.hidden < 1:
        raise ValueError(f"--hidden: must be >= 1, got {args.hidden}")
    check_output_file(args.out, "--out")  # before the fit: a bad --out must not throw the work away
    fit_specs, val_specs = _fit_pick_specs(args)
    styles = _click_styles(args.clicks)
    _, sd, extra = read_checkpoint(args.checkpoint)
    half = any(v.dtype == torch.float16 for v in sd.values())  # keep a half-precision checkpoint half
    model = load_model(args.checkpoint)
    model.cfg.candidate_pick = None  # the data are collected with the plain highest-IoU order
    predictor = Predictor.from_model(model)
    fit = _pick_data(predictor, fit_specs, args, styles, "fit")
    names = ", ".join(f"{Path(s.path).name} {s.split or ''}".rstrip() for s in fit_specs)
    pick = fit_candidate_pick(fit, hidden=args.hidden, seed=args.seed, fitted_on=f"{names}: {len(fit)} clicks")
    report = {"fit_prompts": len(fit), "fit_iou_by_score": round(chosen_iou(None, fit), 4),
              "fit_iou_by_pick": round(chosen_iou(pick, fit), 4)}
    if val_specs:
        val = _pick_data(predictor, val_specs, args, styles, "val")
        report.update({"val_prompts": len(val), "val_iou_by_score": round(chosen_iou(None, val), 4),
                       "val_iou_by_pick": round(chosen_iou(pick, val), 4)})
    model.cfg.candidate_pick = pick
    save_checkpoint(model, args.out, extra={**extra, "candidate_pick": pick.fitted_on}, half=half)
    print(json.dumps({"out": str(args.out), **report}))
    return 0


def run(args) -> int:
    import dataclasses

    from napari_ultratinysam.training.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    from napari_ultratinysam.training.loop import train

    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0
