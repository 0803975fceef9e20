"""Error types of the command line.

A leaf module: the command modules raise these and ``cli.main`` (the one error boundary) turns them into one line,
so neither needs to import the other.
"""
from __future__ import annotations


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""
