"""Export safety (issue 20): crafted dataset.json, the atomic swap and its recovery, umask, kills at any point."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import time

import numpy as np
import pytest

from napari_ultratinysam.data import export as export_mod
from napari_ultratinysam.data import staging as staging_mod
from napari_ultratinysam.data.export import export_dataset
from napari_ultratinysam.data.readers import read_dataset
from napari_ultratinysam.data.staging import recover_staged
from napari_ultratinysam.data.types import AnnotatedImage

CLASSES = ["a", "b", "c"]


def _items(n: int = 6, variant: int = 0) -> list[AnnotatedImage]:
    rng = np.random.default_rng(variant)
    out = []
    for k in range(n):
        img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        masks = np.zeros((2, 16, 20), bool)
        masks[0, 2:8, 3:9 + variant] = True
        masks[1, 9:14, 10:18] = True
        out.append(AnnotatedImage(img, masks, np.array([k % 3, (k + variant) % 3]), name=f"im{k}"))
    return out


def _export(out, items, **kw):
    return export_dataset(items, out, ratios=(0.5, 0.25, 0.25), classes=CLASSES, **kw)


def _digest(folder) -> dict[str, str]:
    """Content of a folder; dataset.json without its timestamp (two exports of the same data are equal)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "dataset.json":
                meta = json.loads(data)
                meta.pop("updated")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def _tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _craft(ds, edit) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    edit(meta)
    (ds / "dataset.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- crafted dataset.json


@pytest.mark.parametrize("field,value,match", [
    ("file", "../../victim.txt", r"images\['im0'\]\.file: expected a relative path inside the dataset"),
    ("file", "ABS", r"images\['im0'\]\.file"),
    ("file", "train/../../victim.txt", r"images\['im0'\]\.file"),
    ("file", "train\\..\\..\\victim.txt", r"images\['im0'\]\.file"),
    ("split", "../..", r"images\['im0'\]\.split: expected a plain name"),
    ("split", "train/x", r"images\['im0'\]\.split"),
    ("size", "big", r"images\['im0'\]\.size"),
])
def test_crafted_entry_never_deletes_or_reads_outside(tmp_path, field, value, match):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    ds = tmp_path / "out" / "ds"
    _export(ds, _items())
    if value == "ABS":
        value = str(victim)
    _craft(ds, lambda m: m["images"]["im0"].__setitem__(field, value))
    before = _tree(tmp_path / "out")
    with pytest.raises(ValueError, match=match) as e:
        _export(ds, _items(variant=1))  # a re-export would replace im0: it used to unlink its 'file'
    assert "dataset.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=match):
        read_dataset(ds)  # reading follows 'file' too: refused with the same line
    assert victim.read_text() == "keep me"
    assert _tree(tmp_path / "out") == before


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["images"].__setitem__("../evil", m["images"].pop("im0")), r"images\['\.\./evil'\]"),
    (lambda m: m["images"].__setitem__(".hidden", m["images"].pop("im0")), r"images\['\.hidden'\]"),
    (lambda m: m.__setitem__("images", []), r"images: expected an object"),
    (lambda m: m["images"].__setitem__("im0", "x"), r"images\['im0'\]: expected an object"),
    (lambda m: m["images"]["im0"].pop("file"), r"images\['im0'\]: missing key 'file'"),
    (lambda m: m.__setitem__("classes", "abc"), r"classes: expected a list"),
    (lambda m: m.__setitem__("colors", [[0, 0]]), r"colors: expected one \[r, g, b\]"),
    (lambda m: m.__setitem__("void_index", 1), r"void_index: expected an integer in 3\.\.255"),
    (lambda m: m.pop("images"), r"missing key 'images'"),
])
def test_crafted_schema_is_one_line_naming_the_field(tmp_path, edit, match):
    ds = tmp_path / "ds"
    _export(ds, _items(2))
    _craft(ds, edit)
    for call in (lambda: read_dataset(ds), lambda: _export(ds, _items(2, variant=1))):
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert str(e.value).startswith(str(ds / "dataset.json")) and "\n" not in str(e.value)


def test_symlink_leading_out_of_the_dataset_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    ds = tmp_path / "ds"
    _export(ds, _items(2))
    meta = json.loads((ds / "dataset.json").read_text())
    split = meta["images"]["im0"]["split"]
    (ds / split / "link.png").symlink_to(secret)
    _craft(ds, lambda m: m["images"]["im0"].__setitem__("file", f"{split}/link.png"))
    with pytest.raises(ValueError, match=r"images\['im0'\]\.file"):
        read_dataset(ds)
    with pytest.raises(ValueError, match=r"images\['im0'\]\.file"):
        _export(ds, _items(2, variant=1))
    assert secret.read_bytes() == b"not yours"


# ---------------------------------------------------------------- swap, recovery, permissions


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_exports_get_the_user_umask(tmp_path, umask022):
    for fmt in ("camvid", "coco", "yolo"):
        out = tmp_path / fmt
        _export(out, _items(2), format=fmt)
        modes = _modes(out)
        assert modes["."] == 0o755  # a renamed mkdtemp folder was 0700
        assert all(m == (0o755 if (out / p).is_dir() else 0o644) for p, m in modes.items()), modes
    os.chmod(tmp_path / "camvid", 0o700)  # as the first exports of earlier versions left it
    _export(tmp_path / "camvid", _items(2, variant=1))
    assert _modes(tmp_path / "camvid")["."] == 0o755


def test_swap_is_an_exchange_and_the_two_step_fallback_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out" / "ds"
    _export(out, _items())
    calls = []
    real = staging_mod.exchange_paths
    monkeypatch.setattr(staging_mod, "exchange_paths", lambda a, b: calls.append((a, b)) or real(a, b))
    _export(out, _items(variant=1))
    assert len(calls) == 1 and calls[0][1] == out
    if staging_mod._renameat2 is not None:  # Linux with glibc >= 2.28
        a, b = tmp_path / "x", tmp_path / "y"
        a.mkdir(), b.mkdir()
        (a / "A").touch()
        assert staging_mod.exchange_paths(a, b) and (b / "A").exists() and not (a / "A").exists()
    monkeypatch.setattr(staging_mod, "_renameat2", None)
    assert staging_mod.exchange_paths(tmp_path, tmp_path) is False
    _export(out, _items(variant=2))
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]
    assert _digest(out) == _digest(_reference(tmp_path, _items(variant=2)))


def _outside(tmp_path) -> dict[str, str]:
    return {k: v for k, v in _tree(tmp_path).items() if k.split("/")[0] != "out"}


def _reference(tmp_path, items):
    ref = tmp_path / f"ref{len(list(tmp_path.glob('ref*')))}" / "ds"
    _export(ref, items)
    return ref


def test_recovery_rolls_back_a_half_done_two_step_swap_and_cleans_stages(tmp_path):
    out = tmp_path / "out" / "ds"
    _export(out, _items())
    old = _digest(out)
    # a kill between the two renames: the old export aside, a complete-looking stage, nothing under the name
    os.rename(out, out.parent / ".ds.old-0123abcd")
    stage = out.parent / ".ds.tmp-89abcdef"
    (stage / "train").mkdir(parents=True)
    (stage / "train" / "half.png").write_bytes(b"partial")
    (out.parent / ".ds.tmp-deadbeef").mkdir()
    (out.parent / ".other.tmp-01234567").mkdir()  # another dataset's: not ours to clean
    done = recover_staged(out)
    assert any("restored" in d for d in done)
    assert _digest(out) == old
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.tmp-01234567", "ds"]
    # a kill after the second rename: the new export is in place, the old one lingers aside
    os.mkdir(out.parent / ".ds.old-00000000")
    (out.parent / ".ds.old-00000000" / "x").write_text("old")
    _export(out, _items(variant=1))  # the next export finishes it
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.tmp-01234567", "ds"]


def test_live_stage_is_not_removed_and_orphan_temps_are_dropped(tmp_path):
    out = tmp_path / "out" / "ds"
    _export(out, _items())
    live = out.parent / ".ds.tmp-0badf00d"
    live.mkdir()
    fd = staging_mod._lock(live)  # another exporter, still running
    try:
        (out / ".dataset.json.abc123.json.tmp").write_text("{")  # an atomic write killed before its rename
        _export(out, _items(variant=1))
        assert live.is_dir()
        assert not list(out.glob(".*.tmp"))
    finally:
        staging_mod._unlock(fd)
    _export(out, _items(variant=1))
    assert not live.exists()


# ---------------------------------------------------------------- fault injection


def _instrument(kill_at: int | None, counter: list[int]) -> None:
    """Count the export's file-system steps (in a forked child) and SIGKILL the process at step ``kill_at``."""
    def step():
        counter[0] += 1
        if counter[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn):
        def inner(*a, **k):
            step()
            out = fn(*a, **k)
            step()
            return out
        return inner

    for mod, names in ((export_mod, ("_write_image", "write_png", "atomic_write_json", "_write_lists",
                                     "_write_class_dict", "_remove_entry")),
                       (staging_mod, ("fsync_dir", "exchange_paths", "_new_dir", "_lock"))):
        for name in names:
            setattr(mod, name, wrap(getattr(mod, name)))

    class _Proxy:
        """A module whose chosen functions count as steps."""

        def __init__(self, module, names):
            self._module = module
            for n in names:
                setattr(self, n, wrap(getattr(module, n)))

        def __getattr__(self, name):
            return getattr(self._module, name)

    staging_mod.os = _Proxy(os, ("rename", "replace", "chmod", "mkdir", "unlink"))
    staging_mod.shutil = _Proxy(shutil, ("rmtree", "copytree"))


def _child_export(out, items, kill_at, two_step) -> int:
    """Fork; the child exports (killed at step ``kill_at``). Returns the child's step count or -signal."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            counter = [0]
            _instrument(kill_at, counter)
            if two_step:
                staging_mod._renameat2 = None
            _export(out, items)
            os.write(w, str(counter[0]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else int(data)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("two_step", [False, True], ids=["exchange", "two-step"])
def test_kill_at_any_step_keeps_old_or_new_export(tmp_path, two_step):
    old_items, new_items = _items(), _items(variant=1)
    old_ref, new_ref = _digest(_reference(tmp_path, old_items)), _digest(_reference(tmp_path, new_items))
    assert old_ref != new_ref
    out = tmp_path / "out" / "ds"
    _export(out, old_items)
    (tmp_path / "victim.txt").write_text("keep me")
    outside = _outside(tmp_path)
    steps = _child_export(out, new_items, None, two_step)  # an unkilled run counts the steps
    assert steps > 20 and _digest(out) == new_ref
    _export(out, old_items)
    rng = random.Random(0)
    # every step around the swap, and a sample of the rest
    points = sorted(set(range(steps - 14, steps + 1)) | set(rng.sample(range(1, steps - 14), 10)))
    outcomes = set()
    for k in points:
        assert _child_export(out, new_items, k, two_step) == -signal.SIGKILL
        if not two_step:  # the exchange leaves a complete export under the name at every instant
            assert _digest(out) in (old_ref, new_ref), k
        recover_staged(out)  # what the next export does first
        state = _digest(out)
        assert state in (old_ref, new_ref), k
        outcomes.add("new" if state == new_ref else "old")
        assert [p.name for p in out.parent.iterdir()] == ["ds"], k
        if state == new_ref:
            _export(out, old_items)
    assert outcomes == {"old", "new"}
    assert _outside(tmp_path) == outside  # nothing touched outside the output folder's parent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_at_random_times(tmp_path):
    old_items, new_items = _items(12), _items(12, variant=1)
    old_ref, new_ref = _digest(_reference(tmp_path, old_items)), _digest(_reference(tmp_path, new_items))
    out = tmp_path / "out" / "ds"
    _export(out, old_items)
    t0 = time.perf_counter()
    _export(out, new_items)
    took = time.perf_counter() - t0
    rng = random.Random(1)
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            try:
                _export(out, new_items)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, took * 1.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        state = _digest(out)
        assert state in (old_ref, new_ref)
        if state == new_ref:
            _export(out, old_items)
    _export(out, new_items)
    assert _digest(out) == new_ref and [p.name for p in out.parent.iterdir()] == ["ds"]
