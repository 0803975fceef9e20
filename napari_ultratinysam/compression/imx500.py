"""Sony IMX500 conversion and the deploy folder.

:func:`export_imx500` is the one function the CLI (``utsam export-imx500``) and the napari panel call::

    checkpoint -> DeployGraph (prompt baked in) -> MCT PTQ or QAT -> MCTQ ONNX -> imxconv-pt -> OUT/

``OUT/`` holds ``packerOut.zip`` (packaged on the Raspberry Pi with ``imx500-package``), the converter's memory
report, ``dnnParams.xml``, the quantized ONNX, ``metadata.json`` (input size, normalisation, prompt, output layout,
memory, times, float-vs-quantized agreement), ``labels.json``, the converter log and ``deploy/`` (a picamera2 script
and its README, from ``compression/templates/``).

Failures are one line each: the converter is missing (names the extra to install), the model does not fit (bytes
needed vs the chip's 8 MB), or the converter rejects the graph (the node and the reason from its log).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from napari_ultratinysam.compression.common import IMX500_EXTRA, Progress
from napari_ultratinysam.compression.metadata import build_metadata
from napari_ultratinysam.core.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONVERTER = "imxconv-pt"
CHIP_MEMORY_BYTES = 8 * 1024 * 1024  # "Total Memory Available On Chip": 8.00MB (MiB in the converter's reports)
TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_FILES = ("imx500_segment.py", "README.md")


class IMX500Error(RuntimeError):
    """A conversion or export failure, explained in one line."""


class ConverterNotFoundError(IMX500Error):
    pass


class ModelDoesNotFitError(IMX500Error):
    def __init__(self, message: str, needed_bytes: int | None = None, available_bytes: int = CHIP_MEMORY_BYTES):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


class ConversionRejectedError(IMX500Error):
    def __init__(self, message: str, reasons: list[str] | None = None, log_path: Path | None = None):
        super().__init__(message)
        self.reasons = reasons or []
        self.log_path = log_path


def _report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(message, fraction)
    log.info(message)


# ------------------------------------------------------------------------------------------------------ converter

def _venv_bin_dir() -> Path:
    """The bin folder of the running interpreter (a venv's console scripts live there even if it is not on PATH)."""
    return Path(sys.executable).parent


def find_converter() -> Path:
    """Path of ``imxconv-pt``: on PATH, or beside the running Python. Raises ConverterNotFoundError."""
    exe = shutil.which(CONVERTER)
    if exe:
        return Path(exe)
    cand = _venv_bin_dir() / CONVERTER
    if cand.is_file() and os.access(cand, os.X_OK):
        return cand
    raise ConverterNotFoundError(f"{CONVERTER} (Sony's IMX500 converter) is not installed; install it with: "
                                 f"{IMX500_EXTRA}")


def find_java() -> Path:
    exe = shutil.which("java")
    if not exe:
        raise IMX500Error(f"{CONVERTER} needs Java (OpenJDK 17 works): no `java` on PATH; install a JDK, e.g. "
                          "`apt install openjdk-17-jre-headless`")
    return Path(exe)


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?B)\s*$", re.I)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def parse_size(text: str | int | float) -> int:
    """A converter size ('1.99MB', '498.5KB', '0B') -> bytes. The reports' KB/MB are binary (8.00MB = 8 MiB)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"cannot read the size {text!r}")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).upper()]))


def format_mb(nbytes: int) -> str:
    return f"{nbytes / 1024 ** 2:.2f} MB"


@dataclass
class MemoryReport:
    path: str
    memory_usage_bytes: int
    available_bytes: int
    fits: bool
    runtime_bytes: int | None = None
    model_bytes: int | None = None
    utilization: str | None = None
    raw: dict = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{verdict}: {format_mb(self.memory_usage_bytes)} of {format_mb(self.available_bytes)}"
                + (f" ({self.utilization})" if self.utilization else ""))


def _find_key(obj, key: str):
    """First value of ``key`` anywhere in a nested JSON object (case/space-insensitive)."""
    norm = key.replace(" ", "").lower()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).replace(" ", "").lower() == norm:
                return v
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find_key(v, key)
            if r is not None:
                return r
    return None


def read_memory_report(path: str | Path) -> MemoryReport:
    """Parse ``<name>_MemoryReport.json`` ("Memory Usage", "Total Memory Available On Chip", "Fit In Chip")."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise IMX500Error(f"memory report {path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IMX500Error(f"memory report {path}: not valid JSON ({e})") from None
    usage = _find_key(raw, "Memory Usage")
    avail = _find_key(raw, "Total Memory Available On Chip")
    fit = _find_key(raw, "Fit In Chip")
    if usage is None or fit is None:
        raise IMX500Error(f"memory report {path}: no 'Memory Usage' / 'Fit In Chip' entries")
    if isinstance(fit, str):
        fit = fit.strip().lower() == "true"

    def opt(key):
        v = _find_key(raw, key)
        try:
            return None if v is None else parse_size(v)
        except ValueError:
            return None

    try:
        return MemoryReport(str(path), parse_size(usage), parse_size(avail) if avail is not None else
                            CHIP_MEMORY_BYTES, bool(fit), opt("Runtime Memory Physical Size"),
                            opt("Model Memory Physical Size"), _find_key(raw, "Memory Utilization"), raw)
    except ValueError as e:
        raise IMX500Error(f"memory report {path}: {e}") from None


_PREFIX_RE = re.compile(r"^\s*\[?\d{4}-\d\d-\d\d[ T][\d:.,]+\]?\s*")  # "2026-11-28 10:51:38,291 "
_SUFFIX_RE = re.compile(r"\s*\[[^\]\s]+\.(?:py|java|scala|kt):\d+\]\s*$")  # " [/.../logger.py:179]"
_NOT_ENOUGH_RE = re.compile(
    r"Not enough memory, available:\s*([0-9.]+\s*[KMG]?B)\s*,\s*required:\s*([0-9.]+\s*[KMG]?B)", re.I)


def _clean(line: str) -> str:
    """A log line without its timestamp and source-file suffix."""
    return _SUFFIX_RE.sub("", _PREFIX_RE.sub("", line.rstrip("\n"))).strip()


def parse_converter_log(text: str) -> dict:
    """Pull the useful failure lines out of an imxconv-pt log.

    Returns {'nodes': ["Node [...] op: X, id: Y: reason: ..."], 'unsupported_ops': "...", 'errors': [ERROR lines],
    'not_enough_memory': (available, required) or None}.
    """
    lines = [_clean(l) for l in text.splitlines()]
    nodes: list[str] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if "Node [" in ln:
            head = ln[ln.index("Node ["):]
            reasons = []
            j = i + 1
            while (j < len(lines) and lines[j] and "Node [" not in lines[j]
                   and not re.match(r"(ERROR|WARN|INFO|DEBUG)\b", lines[j])):
                reasons.append(lines[j].strip())
                j += 1
            m = re.search(r"op:\s*([^,]+),\s*id:\s*([^,]+)", head)
            where = f"node {m.group(2).strip()} ({m.group(1).strip()})" if m else head
            inline = head.split("errors:", 1)[1].strip() if "errors:" in head else ""
            detail = "; ".join(r for r in [inline] + reasons if r)
            nodes.append(f"{where}: {detail}" if detail else where)
            i = j
            continue
        i += 1
    errors = [l for l in lines if "ERROR" in l]
    usop = next((l.split("unsupported ops:", 1)[1].strip() for l in lines if "unsupported ops:" in l), None)
    m = _NOT_ENOUGH_RE.search(text)
    return {"nodes": nodes, "unsupported_ops": usop, "errors": errors,
            "not_enough_memory": (m.group(1), m.group(2)) if m else None}


@dataclass
class ConversionResult:
    out_dir: str
    packer_zip: str
    memory: MemoryReport
    log_path: str
    seconds: float
    files: list[str]


def _raise_for_failure(rc: int, log_text: str, log_path: Path, report: MemoryReport | None) -> None:
    info = parse_converter_log(log_text)
    if report is not None and not report.fits:
        raise ModelDoesNotFitError(
            f"the model does not fit in the IMX500: it needs {format_mb(report.memory_usage_bytes)} "
            f"({report.memory_usage_bytes:,} bytes) but the chip has {format_mb(report.available_bytes)} "
            f"({report.available_bytes:,} bytes)", report.memory_usage_bytes, report.available_bytes)
    if info["not_enough_memory"]:
        avail, need = (parse_size(v) for v in info["not_enough_memory"])
        raise ModelDoesNotFitError(
            f"the model does not fit in the IMX500: it needs {format_mb(need)} ({need:,} bytes) but the chip has "
            f"{format_mb(avail)} ({avail:,} bytes)", need, avail)
    if info["unsupported_ops"]:
        raise ConversionRejectedError(f"{CONVERTER} rejected the model: unsupported ops: {info['unsupported_ops']} "
                                      f"(log: {log_path})", [f"unsupported ops: {info['unsupported_ops']}"], log_path)
    if info["nodes"]:
        more = f" (+{len(info['nodes']) - 1} more)" if len(info["nodes"]) > 1 else ""
        raise ConversionRejectedError(f"{CONVERTER} rejected {info['nodes'][0]}{more} (log: {log_path})",
                                      info["nodes"], log_path)
    errs = [e for e in info["errors"] if "exited with error code" not in e] or info["errors"]
    first = errs[0] if errs else f"exit code {rc}, no ERROR line in the log"
    raise ConversionRejectedError(f"{CONVERTER} failed: {first} (log: {log_path})", errs, log_path)


def run_converter(onnx_path: str | Path, out_dir: str | Path, progress: Progress | None = None,
                  timeout: float | None = None, extra_args: tuple[str, ...] = (),
                  fraction: tuple[float, float] = (0.0, 1.0)) -> ConversionResult:
    """Run ``imxconv-pt -i MODEL.onnx -o OUT --overwrite-output``, streaming its log to ``progress`` and
    ``OUT/imxconv.log``; copy packerOut.zip, the memory report and dnnParams.xml into ``out_dir``.

    Raises ConverterNotFoundError, ModelDoesNotFitError or ConversionRejectedError with one clear line.
    """
    onnx_path = Path(onnx_path).resolve()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path}: not found")
    exe = find_converter()
    find_java()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".imxconv-", dir=out_dir))
    conv_out = work / "out"
    tmp = work / "tmp"  # the converter leaves its intermediate files in TMPDIR on failure: keep them here
    tmp.mkdir()
    log_path = out_dir / "imxconv.log"
    cmd = [str(exe), "-i", str(onnx_path), "-o", str(conv_out), "--overwrite-output", *extra_args]
    env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp))
    env["PATH"] = os.pathsep.join([str(exe.parent), env.get("PATH", "")])
    lo, hi = fraction
    _report(progress, f"converting with {CONVERTER} (several minutes for the full model)", lo)
    t0 = time.perf_counter()
    lines: list[str] = []
    try:
        with open(log_path, "w", encoding="utf-8") as logf:
            logf.write("$ " + " ".join(cmd) + "\n")
            # own process group: a timeout or a cancel (an exception from ``progress``) ends the Java child too
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    errors="replace", bufsize=1, start_new_session=True)
            lines_q: queue.Queue = queue.Queue()

            def pump():
                assert proc.stdout is not None
                for ln in proc.stdout:
                    lines_q.put(ln)
                lines_q.put(None)

            reader = threading.Thread(target=pump, name="imxconv-log", daemon=True)
            reader.start()
            last_msg, last_beat = "", 0.0
            try:
                while True:
                    try:
                        line = lines_q.get(timeout=1.0)
                    except queue.Empty:
                        line = ""
                    if line is None:
                        break
                    el = time.perf_counter() - t0
                    if line:
                        lines.append(line)
                        logf.write(line)
                        logf.flush()
                        last_msg = _clean(line) or last_msg
                    if line or el - last_beat >= 5.0:  # a heartbeat while the Java stages are silent
                        last_beat = el
                        # the converter has no progress measure: creep towards hi, never reach it
                        frac = lo + (hi - lo) * (1 - 1 / (1 + el / 120.0))
                        _report(progress, f"{CONVERTER} [{el:4.0f} s] {last_msg[:160]}", frac)
                    if timeout is not None and el > timeout:
                        raise IMX500Error(f"{CONVERTER} did not finish within {timeout:.0f} s (log: {log_path})")
                rc = proc.wait()
                reader.join(timeout=5)
            except BaseException:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        seconds = time.perf_counter() - t0
        text = "".join(lines)
        reports = sorted(conv_out.glob("*_MemoryReport.json")) if conv_out.is_dir() else []
        report = None
        if reports:
            dest = out_dir / reports[0].name
            with atomic_path(dest) as t:
                shutil.copyfile(reports[0], t)
            report = read_memory_report(dest)
        packer = conv_out / "packerOut.zip"
        if rc != 0 or not packer.is_file() or (report is not None and not report.fits):
            _raise_for_failure(rc, text, log_path, report)
        files = []
        for f in sorted(conv_out.iterdir()):
            if f.is_file():
                dest = out_dir / f.name
                with atomic_path(dest) as t:
                    shutil.copyfile(f, t)
                files.append(dest.name)
        if report is None:
            raise IMX500Error(f"{CONVERTER} wrote no memory report (log: {log_path})")
        report.path = str(out_dir / Path(report.path).name)
        _report(progress, f"converted in {seconds:.0f} s: {report.summary()}", hi)
        return ConversionResult(str(out_dir), str(out_dir / "packerOut.zip"), report, str(log_path), seconds, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ deploy folder

def write_deploy_folder(out_dir: str | Path, metadata: dict) -> Path:
    """``OUT/deploy/``: the Raspberry Pi script and README from the templates, plus a copy of metadata.json."""
    deploy = Path(out_dir) / "deploy"
    deploy.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        src = TEMPLATES / name
        if not src.is_file():
            raise IMX500Error(f"template {src} is missing from the installed package")
        atomic_write_text(deploy / name, src.read_text(encoding="utf-8"))
    os.chmod(deploy / "imx500_segment.py", 0o755)
    atomic_write_json(deploy / "metadata.json", metadata)
    return deploy


@dataclass
class ExportResult:
    out_dir: str
    onnx_path: str
    packer_zip: str
    memory: MemoryReport
    method: str
    prompt: dict
    times: dict
    agreement: dict | None
    float_check_max_abs_diff: float

    def summary(self) -> str:
        return f"{self.memory.summary()} -> {self.out_dir}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = {k: v for k, v in d["memory"].items() if k != "raw"}
        return d


def export_imx500(checkpoint: str | Path | None = None, prompt: str = "center-point", points=None, box=None,
                  calibration: str | Path | None = None, method: str = "ptq", out: str | Path = "imx500_out",
                  progress: Progress | None = None, num_images: int = 128, qat_steps: int = 200,
                  qat_lr: float = 1e-5, config: str | None = None, model=None, agreement_images: int = 8,
                  timeout: float | None = None) -> ExportResult:
    """Checkpoint -> deploy graph -> PTQ/QAT -> MCTQ ONNX -> imxconv-pt -> ``out/`` (see the module docstring).

    ``checkpoint`` None = the shipped weights; ``config`` (a preset name or YAML) builds random weights instead;
    ``model`` passes a live UltraTinySAM (the panel's model in use; it is copied, not modified).
    ``progress(message, fraction)`` is called throughout (fraction in [0, 1] or None).
    """
    from napari_ultratinysam.compression.pipeline import METHODS, quantize_to_onnx

    if method.lower() not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose ptq or qat")
    find_converter()  # fail in a second, not after minutes of quantisation
    find_java()
    out = Path(out)
    t_all = time.perf_counter()
    q = quantize_to_onnx(checkpoint, prompt, points, box, calibration, method, out, num_images, qat_steps, qat_lr,
                         config, model, agreement_images, progress, fraction=(0.0, 0.55))
    try:
        conv = run_converter(q.onnx_path, out, progress, timeout=timeout, fraction=(0.55, 0.98))
        times = dict(q.times, conversion_s=round(conv.seconds, 1), total_s=round(time.perf_counter() - t_all, 1))
        meta = build_metadata(q.graph, q.source, q.method, conv.memory, {
            "calibration": {"source": str(calibration) if calibration else "default", "num_images": num_images},
            "times": times, "float_vs_quantized": q.agreement, "float_check_max_abs_diff": q.float_check_max_abs_diff,
            "files": {"packer": "packerOut.zip", "memory_report": Path(conv.memory.path).name,
                      "onnx": q.onnx_path.name, "log": "imxconv.log"},
        })
        atomic_write_json(out / "metadata.json", meta)
        atomic_write_json(out / "labels.json", ["background", "object"])
        write_deploy_folder(out, meta)
        result = ExportResult(str(out), str(q.onnx_path), conv.packer_zip, conv.memory, q.method,
                              q.graph.prompt.to_dict(), times, q.agreement, q.float_check_max_abs_diff)
        _report(progress, result.summary(), 1.0)
        return result
    finally:
        q.graph.release()
