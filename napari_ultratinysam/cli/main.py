"""`utsam`: one command, one subcommand per job; thin wrappers over the package modules.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its subcommand(s) and sets
``func=callable(args) -> int`` on the parser.

:func:`main` is the one error boundary: an expected failure (bad input, unreadable or unwritable file, resource
limit) is one line naming the file or argument and exit code 2; anything else is one line that points to
``--debug``, which re-raises for the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from napari_ultratinysam.core.errors import CliError

# re-exported for code written against cli; command modules import them from .parsers (importing cli would tie
# them to the module that loads them)
from napari_ultratinysam.core.parsers import check_output_dir, check_output_file, nonnegative_int, positive_int  # noqa: F401

COMMAND_MODULES = [
    "napari_ultratinysam.cli.predict",
    "napari_ultratinysam.cli.evaluate",
    "napari_ultratinysam.cli.train",
    "napari_ultratinysam.cli.data",
    "napari_ultratinysam.cli.import_labels",
    "napari_ultratinysam.cli.compress",
    "napari_ultratinysam.cli.segment_all",
]

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (usage is one ``--help`` away), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ the error boundary


def _expected_errors() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [CliError, OSError, ValueError, MemoryError]
    try:
        from PIL import Image

        types.append(Image.DecompressionBombError)  # not an OSError
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(e: BaseException) -> str:
    """One line for an expected failure; OSErrors name their file."""
    if isinstance(e, OSError) and not isinstance(e, CliError) and getattr(e, "filename", None) is not None:
        what = e.strerror or str(e)
        names = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
        return _one_line(f"{names}: {what}")
    if isinstance(e, MemoryError):
        return _one_line(f"out of memory{(': ' + str(e)) if str(e) else ''}")
    try:
        from PIL import Image

        if isinstance(e, Image.DecompressionBombError):
            return _one_line(f"image refused: {e}")
    except ImportError:  # pragma: no cover
        pass
    return _one_line(str(e) or type(e).__name__)


def build_parser() -> argparse.ArgumentParser:
    from napari_ultratinysam._version import __version__

    parser = _Parser(prog="utsam", description="UltraTinySAM: segment, annotate, train, export.")
    parser.add_argument("--version", action="version", version=f"utsam {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    for p in sub.choices.values():  # `utsam CMD ... --debug` works too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    prog = f"utsam {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if args.debug:
            raise
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # an unexpected failure: still one line, the traceback on request
        if args.debug:
            raise
        from napari_ultratinysam.core.extras import as_missing_extra

        missing = as_missing_extra(e)  # an optional extra (torch: [train]) is not installed
        if missing is not None:
            print(f"{prog}: error: {missing}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"{prog}: internal error: {type(e).__name__}: {describe_error(e)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
