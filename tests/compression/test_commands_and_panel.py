"""`utsam quantize` / `utsam export-imx500` argument handling and the Export to IMX500 panel (fake export)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from napari_ultratinysam.cli.main import build_parser, main
from napari_ultratinysam.widgets.export_panel import ExportRequest, parse_box_text, parse_points_text


def test_commands_are_registered():
    p = build_parser()
    a = p.parse_args(["export-imx500", "-o", "out", "--prompt", "points", "--points", "10,20", "--points", "30,40,0"])
    assert a.points == [(10.0, 20.0), (30.0, 40.0, 0)] and a.method == "ptq" and a.num_images == 128
    a = p.parse_args(["quantize", "--qat", "--qat-steps", "5", "-o", "out", "--prompt", "box", "--box", "1,2,30,40"])
    assert a.qat and a.qat_steps == 5 and a.box == (1.0, 2.0, 30.0, 40.0)
    with pytest.raises(SystemExit):
        p.parse_args(["quantize", "--ptq", "--qat", "-o", "x"])


@pytest.mark.parametrize("argv,msg", [
    (["export-imx500", "-o", "o", "--prompt", "points"], "--prompt points needs --points"),
    (["export-imx500", "-o", "o", "--prompt", "box"], "--prompt box needs --box"),
    (["quantize", "-o", "o", "--box", "1,2,3,4"], "--box is only used with --prompt box"),
])
def test_cli_prompt_errors_are_one_line(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_form_parsing():
    assert parse_points_text("10,20; 30,40,0") == [(10.0, 20.0), (30.0, 40.0, 0)]
    assert parse_box_text("1, 2, 30, 40") == (1.0, 2.0, 30.0, 40.0)
    with pytest.raises(ValueError, match="points"):
        parse_points_text("10")
    with pytest.raises(ValueError, match="box"):
        parse_box_text("1,2,3")
    r = ExportRequest.from_form("out", prompt="points", prompt_text="5,6", method="QAT", qat_steps=7)
    assert r.kwargs()["points"] == [(5.0, 6.0)] and r.method == "qat" and r.qat_steps == 7
    with pytest.raises(ValueError, match="output folder"):
        ExportRequest.from_form("  ")
    with pytest.raises(ValueError, match="checkpoint"):
        ExportRequest.from_form("out", checkpoint="/no/such.safetensors")


def _fake_result(out):
    mem = SimpleNamespace(fits=True, memory_usage_bytes=int(5.91 * 2 ** 20), available_bytes=8 * 2 ** 20)
    return SimpleNamespace(memory=mem, out_dir=str(out))


def test_panel_runs_off_the_gui_thread_and_reports_fit(qtbot, tmp_path):
    import threading

    from napari_ultratinysam.widgets.export_panel import ExportPanel

    seen = {}

    def fake_export(progress=None, **kw):
        seen.update(kw, thread=threading.current_thread().name)
        for i in range(5):
            progress(f"step {i}", i / 5)
            time.sleep(0.01)
        return _fake_result(kw["out"])

    panel = ExportPanel(None, export_fn=fake_export)
    qtbot.addWidget(panel)
    panel.out_edit.setText(str(tmp_path / "out"))
    panel.prompt_combo.setCurrentText("box")
    panel.prompt_edit.setText("10,10,60,70")
    assert panel.start()
    qtbot.waitUntil(lambda: panel.result is not None, timeout=5000)
    assert seen["thread"] != threading.main_thread().name
    assert seen["box"] == (10.0, 10.0, 60.0, 70.0) and seen["method"] == "ptq"
    assert panel.result_label.text().startswith("fits: 5.91 MB of 8 MB")
    assert str(tmp_path / "out") in panel.result_label.text()
    assert panel.export_btn.isEnabled()


def test_panel_shows_errors_and_cancels(qtbot, tmp_path):
    from napari_ultratinysam.widgets.export_panel import ExportPanel

    def failing(progress=None, **kw):
        raise RuntimeError("imxconv-pt (Sony's IMX500 converter) is not installed; install it with: pip ...")

    panel = ExportPanel(None, export_fn=failing)
    qtbot.addWidget(panel)
    panel.out_edit.setText(str(tmp_path))
    assert panel.start()
    qtbot.waitUntil(lambda: panel.status_label.text().startswith("error:"), timeout=5000)
    assert "not installed" in panel.status_label.text()

    def slow(progress=None, **kw):
        for _ in range(500):
            progress("working", None)
            time.sleep(0.01)
        return _fake_result(kw["out"])

    panel2 = ExportPanel(None, export_fn=slow)
    qtbot.addWidget(panel2)
    panel2.out_edit.setText(str(tmp_path))
    assert panel2.start()
    panel2.cancel()
    qtbot.waitUntil(lambda: not panel2.is_running(), timeout=5000)
    qtbot.waitUntil(lambda: panel2.status_label.text() == "cancelled", timeout=5000)
    assert panel2.result is None

    panel3 = ExportPanel(None, export_fn=slow)
    qtbot.addWidget(panel3)
    panel3.out_edit.setText("")
    assert not panel3.start() and "output folder" in panel3.status_label.text()
