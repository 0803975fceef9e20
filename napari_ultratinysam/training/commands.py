"""`utsam train -c CONFIG.yaml [key=value ...]`: train from scratch or fine-tune (training/loop.py)."""
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
