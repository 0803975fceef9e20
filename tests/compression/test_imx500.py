"""IMX500 conversion: the real converter on the tiny preset (every run) and the paper preset (slow), the deploy
folder, and every failure path with its message."""
from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from napari_ultratinysam.compression import imx500
from napari_ultratinysam.compression.imx500 import (
    ConversionRejectedError,
    ConverterNotFoundError,
    ModelDoesNotFitError,
    parse_converter_log,
    parse_size,
    read_memory_report,
    run_converter,
)

from .conftest import needs_converter, needs_mct


def _check_out_dir(out: Path, res) -> dict:
    assert (out / "packerOut.zip").is_file() and zipfile.is_zipfile(out / "packerOut.zip")
    assert (out / "ultratinysam_imx500.onnx").is_file()
    assert list(out.glob("*_MemoryReport.json"))
    assert (out / "imxconv.log").is_file()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["input"]["shape"] == [1, 3, 128, 128]
    assert meta["prompt"]["mode"] == "center-point" and meta["prompt"]["points"] == [[64.0, 64.0]]
    assert meta["outputs"]["masks"]["shape"] == [1, 3, 32, 32]
    assert meta["memory"]["fits"] is True
    assert json.loads((out / "labels.json").read_text())
    for f in ("imx500_segment.py", "README.md", "metadata.json"):
        assert (out / "deploy" / f).is_file()
    readme = (out / "deploy" / "README.md").read_text()
    assert "imx500-package -i packerOut.zip -o out/" in readme
    compile((out / "deploy" / "imx500_segment.py").read_text(), "imx500_segment.py", "exec")
    assert not list(out.glob(".imxconv-*")), "converter work folder left behind"
    assert res.memory.fits and res.memory.memory_usage_bytes < res.memory.available_bytes
    assert res.memory.summary().startswith("fits: ") and "of 8.00 MB" in res.memory.summary()
    return meta


@needs_mct
@needs_converter
def test_real_converter_tiny_preset_converts_and_fits(tmp_path):
    """The CI check: tiny preset (full MobileViT-XS trunk, small decoder) -> PTQ -> imxconv-pt -> fits."""
    torch.set_num_threads(1)
    out = tmp_path / "out"
    msgs = []
    res = imx500.export_imx500(config="tiny_test", out=out, num_images=8, agreement_images=4,
                               progress=lambda m, f=None: msgs.append((m, f)))
    meta = _check_out_dir(out, res)
    fr = [f for _, f in msgs if f is not None]
    assert fr == sorted(fr) and fr[-1] == 1.0, "progress must only move forward and end at 1"
    print(f"\ntiny preset: {res.memory.summary()}; PTQ {res.times['ptq_s']} s, conversion "
          f"{res.times['conversion_s']} s; float vs PTQ mean mask IoU {res.agreement['mean_iou']:.3f}")
    assert meta["times"]["conversion_s"] > 0
    # the export folder is what DevicePredictor reads (ONNX + baked prompt from metadata.json): no second PTQ
    import numpy as np

    from napari_ultratinysam.compression.device_predictor import DevicePredictor

    dp = DevicePredictor.from_quantized_onnx(out)
    assert dp.prompt.mode == "center-point" and dp.prompt.points == ((64.0, 64.0),)
    dp.set_image(np.full((60, 90, 3), 120, np.uint8))
    r = dp.predict(points=[[45, 30]])
    assert r.masks.shape == (3, 60, 90) and dp.last_roi.w == 60


@pytest.mark.slow
@needs_mct
@needs_converter
def test_real_converter_paper_preset_converts_and_fits(tmp_path):
    """The paper's model (5.3 M parameters): converts and fits in the IMX500's 8 MB (several minutes)."""
    from napari_ultratinysam.model.checkpoints import DEFAULT_CHECKPOINT

    torch.set_num_threads(1)
    kw = {"checkpoint": DEFAULT_CHECKPOINT} if DEFAULT_CHECKPOINT.is_file() else {"config": "ultratinysam"}
    res = imx500.export_imx500(out=tmp_path / "out", num_images=16, agreement_images=4, **kw)
    _check_out_dir(tmp_path / "out", res)
    print(f"\npaper preset: {res.memory.summary()}; times {res.times}")


# ------------------------------------------------------------------------------------------------ failure paths

def test_converter_missing_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(imx500, "_venv_bin_dir", lambda: tmp_path)
    with pytest.raises(ConverterNotFoundError, match=r'pip install "napari-ultratinysam\[imx500\]"'):
        imx500.find_converter()
    # export fails at once, before minutes of quantisation
    with pytest.raises(ConverterNotFoundError, match="imxconv-pt"):
        imx500.export_imx500(config="tiny_test", out=tmp_path / "o")


def test_cli_converter_missing_is_one_line(monkeypatch, tmp_path, capsys):
    from napari_ultratinysam.cli.main import main

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(imx500, "_venv_bin_dir", lambda: tmp_path)
    rc = main(["export-imx500", "--config", "tiny_test", "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "napari-ultratinysam[imx500]" in err[0]


FAKE = textwrap.dedent("""\
    #!{python}
    import os, sys, json, zipfile
    args = sys.argv[1:]
    onnx, out = args[args.index("-i") + 1], args[args.index("-o") + 1]
    stem = os.path.splitext(os.path.basename(onnx))[0]
    os.makedirs(out, exist_ok=True)
    mode = os.environ["FAKE_IMXCONV"]
    p = lambda s: print("2026-11-28 10:51:38,291 " + s + " [/x/uni/common/logger.py:179]", flush=True)
    p("INFO : Running version 3.18.2")
    def report(usage, fit):
        json.dump({{"Memory Report": {{"Runtime Memory Physical Size": "384.00KB", "Model Memory Physical Size":
                  "11.21MB", "Memory Usage": usage, "Total Memory Available On Chip": "8.00MB",
                  "Memory Utilization": "145%", "Fit In Chip": fit}}}}, open(os.path.join(out, stem +
                  "_MemoryReport.json"), "w"))
    if mode == "nofit":
        report("11.59MB", False)
        p("ERROR: CODE: [ISM] ConvFe error (ISM) on 'r18': Not enough memory, available: 8.00MB , required: 11.59MB")
        p("ERROR : sdspconv exited with error code: 1, uni files can be found in /tmp/tmpX")
        sys.exit(1)
    if mode == "reject":
        p("ERROR : CODE: [INVOP] The network is not aligned with SDSP converter's restrictions. Errors are:")
        print("Node [Framework.nnir] op: FullyConnected, id: /dec/q/MatMul, [Framework.onnx] op: MatMul, "
              "id: /dec/q/MatMul, errors:")
        print("\\tInput error - input index: 0, input node: /Transpose, reason: Only 2d input (N,D) or 4d "
              "(N, D0, D1, D2) input is supported")
        print("Node [Framework.nnir] op: FullyConnected, id: /dec/k/MatMul, errors:")
        print("\\tInput error - input index: 0, reason: Only 2d input (N,D) or 4d (N, D0, D1, D2) input is supported")
        sys.exit(3)
    if mode == "java":
        p("ERROR: CODE: [GE] Caught exception while converting'net': 2")
        p("ERROR: CODE: [FEFSUC] Failure in conversion process:")
        p("ERROR : sdspconv exited with error code: 1, uni files can be found in /tmp/tmpX")
        sys.exit(1)
    if mode == "hang":  # a silent Java stage that never ends, with a child process like the real one
        import subprocess, time
        child = subprocess.Popen(["sleep", "120"])
        open(os.environ["FAKE_CHILD_PID"], "w").write(str(child.pid))
        p("INFO : CODE: [START] Starting SDSPconv")
        time.sleep(120)
    report("5.91MB", True)
    zipfile.ZipFile(os.path.join(out, "packerOut.zip"), "w").writestr("x", "y")
    open(os.path.join(out, "dnnParams.xml"), "w").write("<x/>")
    p("INFO : Converted successfully")
""")


@pytest.fixture
def fake_converter(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "imxconv-pt"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    java = bindir / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"not really onnx")
    return onnx


def test_fake_converter_success_copies_outputs(fake_converter, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_IMXCONV", "ok")
    lines = []
    res = run_converter(fake_converter, tmp_path / "out", progress=lambda m, f=None: lines.append(m))
    assert res.memory.fits and res.memory.memory_usage_bytes == parse_size("5.91MB")
    assert (tmp_path / "out" / "packerOut.zip").is_file() and (tmp_path / "out" / "net_MemoryReport.json").is_file()
    assert any("Converted successfully" in m for m in lines)
    assert not list((tmp_path / "out").glob(".imxconv-*"))


def test_does_not_fit_shows_bytes_needed_vs_8mb(fake_converter, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_IMXCONV", "nofit")
    with pytest.raises(ModelDoesNotFitError) as ei:
        run_converter(fake_converter, tmp_path / "out")
    msg = str(ei.value)
    assert "does not fit" in msg and "11.59 MB" in msg and "8.00 MB" in msg and "8,388,608 bytes" in msg
    assert ei.value.needed_bytes == parse_size("11.59MB") and "\n" not in msg
    assert not list((tmp_path / "out").glob(".imxconv-*"))


def test_rejected_op_shows_node_and_reason(fake_converter, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_IMXCONV", "reject")
    with pytest.raises(ConversionRejectedError) as ei:
        run_converter(fake_converter, tmp_path / "out")
    msg = str(ei.value)
    assert "/dec/q/MatMul" in msg and "Only 2d input" in msg and "(+1 more)" in msg and "\n" not in msg
    assert len(ei.value.reasons) == 2 and "/dec/k/MatMul" in ei.value.reasons[1]


def test_java_front_end_failure_shows_the_error_line(fake_converter, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_IMXCONV", "java")
    with pytest.raises(ConversionRejectedError, match=r"Caught exception while converting'net': 2"):
        run_converter(fake_converter, tmp_path / "out")


def test_parse_log_and_sizes(tmp_path):
    info = parse_converter_log("2026-11-28 10:00:00,000 ERROR : CODE: [USOP] The network contains unsupported ops: "
                               "DepthToSpace [/x/logger.py:1]\n")
    assert info["unsupported_ops"] == "DepthToSpace"
    assert parse_size("8.00MB") == 8 * 1024 * 1024 and parse_size("498.5KB") == 510464 and parse_size("0B") == 0
    with pytest.raises(ValueError):
        parse_size("lots")
    p = tmp_path / "m_MemoryReport.json"
    p.write_text(json.dumps({"Memory Usage": "1.99MB", "Total Memory Available On Chip": "8.00MB",
                             "Fit In Chip": True, "Memory Utilization": "25%"}))
    r = read_memory_report(p)
    assert r.fits and r.summary() == "fits: 1.99 MB of 8.00 MB (25%)"
    p.write_text("{broken")
    with pytest.raises(imx500.IMX500Error, match="not valid JSON"):
        read_memory_report(p)


@needs_mct
@needs_converter
def test_real_converter_rejects_pixel_shuffle(tmp_path):
    """A net with pixel_shuffle (ONNX DepthToSpace) is rejected in seconds; the message names the op."""
    from napari_ultratinysam.compression.calibration import load_calibration
    from napari_ultratinysam.compression.mct import export_quantized_onnx, quantize_ptq

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.head = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.head(torch.nn.functional.pixel_shuffle(torch.relu(self.conv(x)), 2))

    samples = load_calibration(None, num_images=2)
    qm = quantize_ptq(Net().eval(), samples)
    onnx = export_quantized_onnx(qm, tmp_path / "ps.onnx", samples)
    with pytest.raises(ConversionRejectedError, match="DepthToSpace"):
        run_converter(onnx, tmp_path / "out", timeout=600)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state


def test_timeout_and_cancel_end_the_whole_converter(fake_converter, monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("FAKE_IMXCONV", "hang")
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PID", str(pid_file))
    beats = []
    t = time.perf_counter()
    with pytest.raises(imx500.IMX500Error, match="did not finish within 3 s"):
        run_converter(fake_converter, tmp_path / "out", timeout=3, progress=lambda m, f=None: beats.append(m))
    assert time.perf_counter() - t < 30
    time.sleep(0.5)
    assert _gone(int(pid_file.read_text())), "the converter's child process survived the timeout"

    class Stop(Exception):
        pass

    def cancel(m, f=None):
        if "SDSPconv" in m:
            raise Stop()

    pid_file.unlink()
    with pytest.raises(Stop):
        run_converter(fake_converter, tmp_path / "out2", progress=cancel)
    time.sleep(0.5)
    assert _gone(int(pid_file.read_text()))
    assert not list((tmp_path / "out2").glob(".imxconv-*"))
