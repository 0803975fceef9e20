"""The version is written in one place (napari_ultratinysam/_version.py) and read from there everywhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import napari_ultratinysam
from napari_ultratinysam import _version
from napari_ultratinysam.cli.main import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def test_one_version_source():
    assert napari_ultratinysam.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", _version.__version__)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "napari_ultratinysam._version.__version__"
    written = [p.relative_to(REPO).as_posix() for p in (REPO / "napari_ultratinysam").rglob("*.py")
               if re.search(r"^__version__\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert written == ["napari_ultratinysam/_version.py"]


def test_cli_reports_the_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"utsam {_version.__version__}"
