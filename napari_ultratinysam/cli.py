"""`utsam`: one command, one subcommand per job; thin wrappers over the package modules.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its subcommand(s) and sets
``func=callable(args) -> int`` on the parser.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "napari_ultratinysam.commands",
    "napari_ultratinysam.evaluation.commands",
    "napari_ultratinysam.training.commands",
    "napari_ultratinysam.data.commands",
    "napari_ultratinysam.compression.commands",
]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="utsam", description="UltraTinySAM: segment, annotate, train, export.")
    parser.add_argument("--version", action="version", version=f"utsam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (CliError, FileNotFoundError, ValueError) as e:
        print(f"utsam {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
