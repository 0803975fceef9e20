"""The one point / box text parser (napari_ultratinysam.core.parsers), used by `utsam segment`, `utsam quantize` /
`export-imx500` and the Export to IMX500 panel alike."""
from __future__ import annotations

import argparse

import pytest

from napari_ultratinysam.cli.main import build_parser
from napari_ultratinysam.core.parsers import box_arg, parse_box, parse_point, parse_points, point_arg
from napari_ultratinysam.widgets.export_panel import parse_box_text, parse_points_text


def test_point_forms():
    assert parse_point("10,20") == (10.0, 20.0)
    assert parse_point(" 10 , 20 , 0 ") == (10.0, 20.0, 0)
    assert parse_point("10,20,1.0") == (10.0, 20.0, 1)
    assert parse_point("10,20", default_label=1) == (10.0, 20.0, 1)
    assert parse_points("1,2; 3,4,0\n5,6") == [(1.0, 2.0), (3.0, 4.0, 0), (5.0, 6.0)]


@pytest.mark.parametrize("text,msg", [
    ("1;2", "expected X,Y or X,Y,LABEL"),
    ("1,2,3,4", "expected X,Y or X,Y,LABEL"),
    ("a,2", "numbers"),
    ("nan,2", "finite"),
    ("1,2,2", "LABEL must be 1 (positive) or 0 (negative)"),
])
def test_bad_points_name_the_field(text, msg):
    with pytest.raises(ValueError, match="--point") as e:
        parse_point(text, "--point")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_box_and_bad_boxes():
    assert parse_box("1, 2, 30, 40") == (1.0, 2.0, 30.0, 40.0)
    for bad in ("1,2,3", "1,2,3,x", "1,2,3,inf", ""):
        with pytest.raises(ValueError, match="box"):
            parse_box(bad)
    with pytest.raises(ValueError, match="give at least one"):
        parse_points(" ; ")


def test_argparse_types_name_the_flag():
    with pytest.raises(argparse.ArgumentTypeError, match="--points '7': expected X,Y"):
        point_arg("--points")("7")
    with pytest.raises(argparse.ArgumentTypeError, match="--box '1,2': expected X0,Y0,X1,Y1"):
        box_arg("--box")("1,2")


def test_every_caller_parses_alike():
    p = build_parser()
    seg = p.parse_args(["segment", "x.png", "--point", "5,6", "--point", "7,8,0", "--box", "1,2,3,4", "-o", "m.png"])
    imx = p.parse_args(["export-imx500", "-o", "out", "--prompt", "points", "--points", "5,6", "--points", "7,8,0",
                        "--box", "1,2,3,4"])
    assert seg.point == [(5.0, 6.0, 1), (7.0, 8.0, 0)]  # segment: positive unless told
    assert imx.points == [(5.0, 6.0), (7.0, 8.0, 0)] == parse_points_text("5,6; 7,8,0")
    assert seg.box == imx.box == parse_box_text("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
