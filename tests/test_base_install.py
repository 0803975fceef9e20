"""The light install: annotation, `utsam segment` and the default model run without torch or timm.

The no-torch checks run a subprocess in which torch, torchvision and timm cannot be imported (a sitecustomize
with a meta path finder that refuses them, put first on PYTHONPATH), as on a base install without the ``[train]``
extra. The wheel check installs the built wheel into a new virtual environment outside the checkout, without the
network (``--no-index``; it skips when the dependencies' wheels are not available locally).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_ultratinysam.core.paths import DEFAULT_CHECKPOINT, SAMPLE_DIR
from napari_ultratinysam.inference import int8 as rq
from napari_ultratinysam.inference.backends.onnx import EXPORT_FORMAT, SHARED_WEIGHTS

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "timm")

BLOCKER = f"""
import importlib.util
import sys

class _NoTorch:
    # a base install: the [train] extra's packages are not there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
_find_spec = importlib.util.find_spec

def find_spec(name, package=None):  # "is torch installed?" says no, as on a base install (onnxruntime asks)
    return None if name.split(".")[0] in {BLOCKED!r} else _find_spec(name, package)

importlib.util.find_spec = find_spec
"""


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict:
    """Environment for a subprocess in which torch / torchvision / timm cannot be imported; the package comes
    from this checkout, the ONNX cache from a fresh folder."""
    d = tmp_path_factory.mktemp("no-torch")
    (d / "sitecustomize.py").write_text(BLOCKER)
    cache = tmp_path_factory.mktemp("no-torch-cache")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(d), str(REPO)]), "UTSAM_CACHE_DIR": str(cache)}


def run_py(code: str, env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def test_the_blocker_blocks(no_torch_env, tmp_path):
    r = run_py("""
        import importlib.util
        try:
            import torch
        except ImportError as e:
            print("blocked", e.name, importlib.util.find_spec("timm"), importlib.util.find_spec("numpy") is not None)
        """, no_torch_env, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "blocked torch None True", r.stderr[-2000:]


def test_predictor_and_segment_run_without_torch(no_torch_env, tmp_path):
    """Predictor.from_default() (its default backend is torch: without torch it runs the shipped ONNX graphs),
    set_image, predict, and `utsam segment` on a sample, in one process that never imports torch or timm."""
    out = tmp_path / "mask.png"
    r = run_py(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        from napari_ultratinysam import Predictor
        from napari_ultratinysam.cli.main import main
        from napari_ultratinysam.inference.int8 import SHIPPED_ONNX_DIR

        image = np.asarray(Image.open({str(SAMPLE_DIR / "coffee.jpg")!r}))
        p = Predictor.from_default()
        p.set_image(image)
        r = p.predict(points=[[330, 200]], labels=[1])
        m = r.mask(0)
        rc = main(["segment", {str(SAMPLE_DIR / "shapes.png")!r}, "--point", "60,60", "-o", {str(out)!r}])
        print(json.dumps({{"backend": p.backend.name, "folder": str(p.backend.folder),
                          "shipped": str(SHIPPED_ONNX_DIR), "shape": list(m.shape), "area": int(m.sum()),
                          "rc": rc, "modules": sorted(k for k in sys.modules if k.split(".")[0] in {BLOCKED!r})}}))
        """, no_torch_env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["modules"] == [], f"imported without need: {res['modules']}"
    assert res["backend"] == "onnx" and res["folder"] == res["shipped"]  # the shipped graphs: no export step
    assert res["shape"] == [400, 600] and 0 < res["area"] < 400 * 600 and res["rc"] == 0
    from PIL import Image

    mask = np.asarray(Image.open(out))
    assert mask.shape == np.asarray(Image.open(SAMPLE_DIR / "shapes.png")).shape[:2] and mask.max() == 255


def test_commands_that_need_torch_name_the_extra(no_torch_env, tmp_path):
    """Without torch, a command that needs it fails with one line naming the [train] extra (exit code 2)."""
    for args in (["export-onnx", "-o", str(tmp_path / "x")], ["info"]):  # a checked import, a plain one
        r = subprocess.run([sys.executable, "-m", "napari_ultratinysam.cli", *args], capture_output=True, text=True,
                           cwd=tmp_path, env=no_torch_env, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith(f"utsam {args[0]}: error:") and "internal error" not in lines[0]
        assert "torch" in lines[0] and "[train]" in lines[0] and "pip install" in lines[0]
    r = run_py("""
        from napari_ultratinysam import Predictor
        from napari_ultratinysam.core.extras import MissingExtraError
        from napari_ultratinysam.core.paths import DEFAULT_CHECKPOINT
        try:
            Predictor.from_checkpoint(DEFAULT_CHECKPOINT, backend="torch")
        except MissingExtraError as e:
            print("missing:", e)
        """, no_torch_env, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("missing:") and "[train]" in r.stdout and len(r.stdout.strip().splitlines()) == 1


def test_finetune_panel_names_the_missing_extra(monkeypatch):
    """The Fine-tune panel's training process reports a missing torch as the extra to install."""
    import queue
    import threading

    import napari_ultratinysam.training.loop as loop
    from napari_ultratinysam.training.job import _worker

    def train(*a, **k):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(loop, "train", train)
    q = queue.Queue()
    _worker(None, q, threading.Event())
    kind, msg, _tb = q.get_nowait()
    assert kind == "error" and "[train]" in msg and "pip install" in msg and "\n" not in msg


@pytest.mark.slow
def test_int8_graphs_are_made_from_the_shipped_float_graphs_without_torch(no_torch_env, tmp_path):
    r = run_py("""
        import json, sys
        import numpy as np
        from napari_ultratinysam import Predictor
        p = Predictor.from_default(backend="onnx", precision="int8")
        p.set_image(np.full((64, 80, 3), 128, np.uint8))
        p.predict(points=[[40, 30]]).mask(0)
        print(json.dumps({"precision": p.backend.precision,
                          "modules": sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "timm"))}))
        """, no_torch_env, tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"precision": "int8", "modules": []}
    assert "making the int8 ONNX graphs" in r.stderr  # the one-time build says so


# ------------------------------------------------------------------ the shipped graphs
def test_shipped_onnx_graphs_are_current():
    """The float graphs in weights/onnx belong to the shipped weights and to the current export format: after
    changing either, run `python scripts/write_shipped_onnx.py` (needs the [train] extra)."""
    folder = rq.SHIPPED_ONNX_DIR
    meta = json.loads((folder / "config.json").read_text())
    hint = "stale weights/onnx: run python scripts/write_shipped_onnx.py"
    assert meta["export_format"] == EXPORT_FORMAT, hint
    assert meta["weights_sha256"] == rq._file_sha256(DEFAULT_CHECKPOINT), hint
    assert rq.shipped_onnx_folder() == folder
    assert meta["external_data"] == [SHARED_WEIGHTS] and (folder / SHARED_WEIGHTS).is_file()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 25 * 2**20, f"weights/onnx holds {size / 2**20:.1f} MiB: the two decoders should share weights"


def test_a_stale_shipped_folder_is_not_used(tmp_path):
    stale = tmp_path / "onnx"
    shutil.copytree(rq.SHIPPED_ONNX_DIR, stale)
    assert rq.shipped_onnx_folder(folder=stale) == stale
    assert rq.shipped_onnx_folder("0" * 64, folder=stale) is None  # other weights
    meta = json.loads((stale / "config.json").read_text())
    (stale / "config.json").write_text(json.dumps({**meta, "export_format": EXPORT_FORMAT - 1}))
    assert rq.shipped_onnx_folder(folder=stale) is None  # an older export
    (stale / "config.json").write_text(json.dumps(meta))
    (stale / SHARED_WEIGHTS).unlink()
    from napari_ultratinysam.inference.backends.onnx import read_onnx_folder

    with pytest.raises(FileNotFoundError, match="external_data"):
        read_onnx_folder(stale)


def test_default_onnx_model_loads_without_an_export(monkeypatch):
    import napari_ultratinysam.inference.backends.onnx as rt
    from napari_ultratinysam import Predictor

    def no_export(*a, **k):
        raise AssertionError("exported although the graphs ship with the weights")

    monkeypatch.setattr(rt, "export_onnx", no_export)
    p = Predictor.from_default(backend="onnx")
    assert p.backend.folder == rq.SHIPPED_ONNX_DIR


def test_shipped_graphs_give_the_torch_models_masks():
    """The shipped graphs are the shipped weights: their masks are the torch model's."""
    pytest.importorskip("torch")
    from PIL import Image

    from napari_ultratinysam import Predictor

    ref, onnx = Predictor.from_default(backend="torch"), Predictor.from_default(backend="onnx")
    image = np.asarray(Image.open(SAMPLE_DIR / "coffee.jpg"))
    for p in (ref, onnx):
        p.set_image(image)
    for pt in ([330, 200], [100, 300], [500, 80]):
        a, b = ref.predict(points=[pt], zoom_refine=False), onnx.predict(points=[pt], zoom_refine=False)
        assert np.allclose(a.lowres, b.lowres, atol=1e-3)
        inter, union = np.logical_and(a.mask(0), b.mask(0)).sum(), np.logical_or(a.mask(0), b.mask(0)).sum()
        assert union == 0 or inter / union > 0.99


# ------------------------------------------------------------------ the wheel in a new virtual environment
def _find_links() -> list[str]:
    """Local folders of already-downloaded wheels: UTSAM_WHEELHOUSE and pip's own find-links setting."""
    dirs = [os.environ.get("UTSAM_WHEELHOUSE", "")]
    dirs += os.environ.get("PIP_FIND_LINKS", "").split()
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True,
                       text=True)
    dirs += r.stdout.split() if r.returncode == 0 else []
    return [d for d in dict.fromkeys(dirs) if d and Path(d).is_dir()]


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A new virtual environment (outside the checkout) with the wheel and its base dependencies, installed
    without the network; skips when the wheel cannot be built or the dependencies' wheels are not here."""
    tmp = tmp_path_factory.mktemp("base-install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "napari_ultratinysam"):
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif p.is_file():
            shutil.copy2(p, src / name)
    dist = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", str(src), "-w", str(dist)], capture_output=True, text=True, cwd=tmp, timeout=600)
    wheels = sorted(dist.glob("napari_ultratinysam-*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.skip(f"cannot build the wheel offline: {r.stderr.strip()[-300:]}")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for f in ("config.json", "encoder.onnx", "decoder.onnx", "decoder_nomask.onnx", SHARED_WEIGHTS):
        assert f"napari_ultratinysam/weights/onnx/{f}" in names, f
    links = _find_links()
    if not links:
        pytest.skip("no local wheels of the dependencies (set UTSAM_WHEELHOUSE to a folder of them)")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    cmd = [str(py), "-m", "pip", "install", "-q", "--no-index", str(wheels[0])]
    for d in links:
        cmd += ["--find-links", d]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=900,
                       env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")})
    if r.returncode != 0:
        pytest.skip(f"the base dependencies are not all available offline: {r.stderr.strip()[-300:]}")
    return venv


def test_wheel_base_install_segments_without_torch(base_venv, tmp_path):
    py = base_venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('torch', 'timm') "
                                       "if u.find_spec(m)])"], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "[]", "the base install pulled in torch or timm"
    out = tmp_path / "mask.png"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["UTSAM_CACHE_DIR"] = str(tmp_path / "cache")
    r = subprocess.run([str(base_venv / "bin" / "utsam"), "segment", str(SAMPLE_DIR / "shapes.png"),
                        "--point", "60,60", "-o", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.is_file() and "px" in r.stdout
    assert not (tmp_path / "cache").exists()  # the shipped graphs: nothing exported or cached
