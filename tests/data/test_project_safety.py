"""Project data safety: crafted files, two writers, kills during commits, damaged files, read-only folders,
rollback of failed saves, durable and readable files."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import stat
import sys

import numpy as np
import pytest

from napari_ultratinysam.core import io as io_utils
from napari_ultratinysam.data import project as project_mod
from napari_ultratinysam.data import project_files
from napari_ultratinysam.data.project import (
    Project,
    ProjectChangedError,
    ProjectLockedError,
    ProjectReadOnlyError,
)
from napari_ultratinysam.data.project_meta import LOCK_FILE, PROJECT_JSON

posix_only = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and signals")
H, W = 24, 32


@pytest.fixture
def images(tmp_path, write_rgb):
    folder = tmp_path / "imgs"
    for k, name in enumerate(["a", "b", "c"]):
        write_rgb(folder / f"{name}.png", H, W, seed=k)
    return folder


@pytest.fixture
def proj(tmp_path, images):
    """A closed project folder with one object on image 0 and one on image 1."""
    with Project.create(tmp_path / "proj", images) as p:
        p.commit_object(0, _box(0, 6, 0, 6), 1)
        p.commit_object(1, _box(2, 8, 2, 8), 2)
    return tmp_path / "proj"


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _pixel(y, x):
    m = np.zeros((H, W), bool)
    m[y, x] = True
    return m


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _edit_state(folder, edit):
    path = folder / PROJECT_JSON
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


# ------------------------------------------------------------ crafted project.json


@pytest.mark.parametrize("name", ["../../evil", "../evil", "sub/evil", "..", ".", ".hidden", "a\\b", "", "x\x00y",
                                  "ABS"])
def test_crafted_image_names_are_refused_and_never_written_outside(tmp_path, proj, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = str(outside / "evil") if name == "ABS" else name
    _edit_state(proj, lambda s: s["images"][2].__setitem__("name", bad))
    before = _files(tmp_path)
    with pytest.raises(ValueError) as err:
        Project.open(proj)
    msg = str(err.value)
    assert "\n" not in msg and str(proj / PROJECT_JSON) in msg and "images[2].name" in msg
    # even a state that skipped validation cannot make a commit write outside the project
    state = json.loads((proj / PROJECT_JSON).read_text())
    p = Project(proj, state)
    with pytest.raises(ValueError, match="image name"):
        p.commit_object(2, _box(0, 3, 0, 3), 1)
    assert _files(tmp_path) == before and not any(outside.iterdir())


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.pop("images"), "images"),
    (lambda s: s.pop("classes"), "classes"),
    (lambda s: s.pop("cursor"), "cursor"),
    (lambda s: s.__setitem__("cursor", 3), "cursor"),
    (lambda s: s.__setitem__("cursor", "0"), "cursor"),
    (lambda s: s.__setitem__("version", 99), "version"),
    (lambda s: s.__setitem__("generation", -1), "generation"),
    (lambda s: s.__setitem__("images", []), "images"),
    (lambda s: s["images"].__setitem__(1, "b.png"), "images[1]"),
    (lambda s: s["images"][1].__setitem__("name", "a"), "images[1].name"),
    (lambda s: s["images"][1].__setitem__("path", 5), "images[1].path"),
    (lambda s: s["images"][1].__setitem__("size", [0, 32]), "images[1].size"),
    (lambda s: s["images"][1].pop("size"), "images[1].size"),
    (lambda s: s["classes"][2].__setitem__("color", [1, 2]), "classes[2].color"),
    (lambda s: s["classes"][2].__setitem__("name", ""), "classes[2].name"),
])
def test_crafted_project_json_fields_give_one_line(proj, edit, field):
    _edit_state(proj, edit)
    with pytest.raises(ValueError) as err:
        Project.open(proj)
    msg = str(err.value)
    assert "\n" not in msg and str(proj / PROJECT_JSON) in msg and f"'{field}'" in msg
    with pytest.raises(ValueError, match=re.escape(f"'{field}'")):  # a reader validates the same way
        Project.open(proj, read_only=True)


def test_old_project_without_generation_opens_and_counts_from_zero(proj):
    _edit_state(proj, lambda s: s.pop("generation"))
    with Project.open(proj) as p:
        p.go_to(2)
    assert json.loads((proj / PROJECT_JSON).read_text())["generation"] == 1


def test_created_names_are_safe_and_unique_ignoring_case(tmp_path, write_rgb):
    for name in ["A.png", "a.png", "x\\y.png"]:
        write_rgb(tmp_path / "imgs" / name, H, W)
    with Project.create(tmp_path / "proj", tmp_path / "imgs") as p:
        assert p.names == ["A", "a_2", "x_y"]
        p.commit_object(2, _box(0, 2, 0, 2), 1)
    assert (tmp_path / "proj" / "annotations" / "x_y.png").is_file()


# ------------------------------------------------------------ crafted and damaged annotation files


def _rewrite_record(png, edit):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(png) as im:
        arr, rec = np.array(im), json.loads(im.text[project_files._PNG_KEY])
    edit(rec)
    info = PngInfo()
    info.add_itxt(project_files._PNG_KEY, json.dumps(rec))
    Image.fromarray(arr).save(png, pnginfo=info)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad-class", "bad-record", "no-record", "missing-png"])
def test_a_damaged_annotation_quarantines_only_that_image(proj, damage, caplog):
    png = proj / "annotations" / "a.png"
    if damage == "garbage":
        png.write_bytes(b"not a png at all")
    elif damage == "truncated":
        png.write_bytes(png.read_bytes()[:-30])
    elif damage == "bad-class":
        _rewrite_record(png, lambda r: r["instances"].__setitem__("1", 99))
    elif damage == "bad-record":
        _rewrite_record(png, lambda r: r.__setitem__("order", "1,2"))
    elif damage == "no-record":
        from PIL import Image

        Image.fromarray(np.zeros((H, W), np.uint16)).save(png)
    else:
        png.unlink()
    before = png.read_bytes() if png.exists() else None
    with caplog.at_level(logging.WARNING, logger=project_mod.__name__):
        p = Project.open(proj)
    assert list(p.quarantined) == ["a"] and len(p.problems) == 1 and "quarantined" in p.problems[0]
    assert "a.png" in p.problems[0] and "\n" not in p.problems[0]
    assert any("quarantined" in r.getMessage() for r in caplog.records)
    assert p.progress() == (1, 3) and p.is_annotated(1)  # the rest opens
    for write in (lambda: p.commit_object(0, _box(10, 12, 10, 12), 1),
                  lambda: p.set_annotation(0, np.zeros((H, W), np.uint16), {})):
        with pytest.raises(ValueError, match="damaged annotation"):
            write()
    with pytest.raises(ValueError, match="damaged annotation"):
        p.get_annotation(0)
    assert (png.read_bytes() if png.exists() else None) == before  # not overwritten
    assert p.commit_object(1, _box(10, 12, 10, 12), 3) == 2  # other images keep working
    p.go_to(2)


# ------------------------------------------------------------ one writer


def test_second_writer_is_refused_and_read_only_refuses_writes(proj):
    p = Project.open(proj)
    with pytest.raises(ProjectLockedError, match="open for writing in another window") as err:
        Project.open(proj)
    assert isinstance(err.value, OSError) and "\n" not in str(err.value)
    before = _files(proj)
    q = Project.open(proj, read_only=True)
    assert q.read_only and q.get_annotation(0)[1] == {1: 1}
    for write in (lambda: q.commit_object(2, _box(0, 2, 0, 2), 1), lambda: q.set_classes(["u", "v", "w"]),
                  lambda: q.add_class("Dog"), lambda: q.delete_object(0, 1), lambda: q.set_object_class(0, 1, 2),
                  lambda: q.set_annotation(2, np.zeros((H, W), np.uint16), {})):
        with pytest.raises(ProjectReadOnlyError, match="read-only"):
            write()
    assert q.go_to(2) == 2 and q.next() == 2  # a reader browses: the cursor moves in memory only
    assert q.classes == p.classes and _files(proj) == before and p.cursor == 0
    p.commit_object(2, _box(0, 2, 0, 2), 4)  # the writer is unaffected
    p.close()
    with pytest.raises(ProjectReadOnlyError, match="closed"):
        p.go_to(1)
    with Project.open(proj) as r:  # the lock went with close()
        assert r.get_annotation(2)[1] == {1: 4}
    Project.open(proj).close()


@posix_only
def test_a_killed_writer_leaves_no_stale_lock(proj):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready = ctx.Event()

    def hold():
        p = Project.open(proj)
        p.commit_object(2, _box(0, 2, 0, 2), 1)
        ready.set()
        signal.pause()
        p.close()

    child = ctx.Process(target=hold, daemon=True)
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ProjectLockedError):
            Project.open(proj)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert (proj / LOCK_FILE).exists()  # the file stays, the lock does not
    with Project.open(proj) as p:
        assert p.get_annotation(2)[1] == {1: 1}


def test_generation_guard_catches_a_second_writer_that_got_past_the_lock(proj, monkeypatch):
    monkeypatch.setattr(Project, "_lock", staticmethod(lambda folder: None))  # e.g. a file system without flock
    p, q = Project.open(proj), Project.open(proj)
    q.get_annotation(0)  # q has read image 0
    p.commit_object(0, _box(10, 12, 10, 12), 3)
    with pytest.raises(ProjectChangedError, match="another writer") as err:
        q.commit_object(0, _box(20, 22, 20, 22), 4)
    assert "a.png" in str(err.value) and "\n" not in str(err.value)
    assert Project.open(proj, read_only=True).get_annotation(0)[1] == {1: 1, 2: 3}
    p.go_to(1)
    with pytest.raises(ProjectChangedError, match=PROJECT_JSON):
        q.go_to(2)
    assert q.cursor == 0 and json.loads((proj / PROJECT_JSON).read_text())["cursor"] == 1

    # random interleaving: every commit that returned is on disk at the end
    rng = random.Random(0)
    returned, refused = [], 0
    free = [(y, x) for y in range(12, H) for x in range(W)]
    rng.shuffle(free)
    for _ in range(120):
        w, i = rng.choice((p, q)), rng.randrange(3)
        y, x = free.pop()
        try:
            returned.append((i, w.commit_object(i, _pixel(y, x), 1)))
        except ProjectChangedError:
            refused += 1
    assert refused > 0
    final = Project.open(proj, read_only=True)
    for i, iid in returned:
        assert iid in final.get_annotation(i)[1]


# ------------------------------------------------------------ kills during commits


def _commit_forever(folder, conn, seed):
    rng = random.Random(seed)
    p = Project.open(folder)
    while True:
        i = rng.randrange(3)
        ids = p.get_annotation(i)[0]
        ys, xs = np.nonzero(ids == 0)
        k = rng.randrange(len(ys))
        iid = p.commit_object(i, _pixel(ys[k], xs[k]), rng.randrange(11))
        conn.send((i, iid))
        if rng.random() < 0.3:
            p.go_to(rng.randrange(3))
            conn.send(("cursor", p.cursor))


@posix_only
def test_sigkill_at_random_points_of_commits_loses_no_returned_commit(tmp_path, images):
    import multiprocessing as mp

    folder = tmp_path / "proj"
    Project.create(folder, images).close()
    ctx = mp.get_context("fork")
    rng = random.Random(1)
    returned: dict[int, set] = {0: set(), 1: set(), 2: set()}
    for round_ in range(12):
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_commit_forever, args=(folder, send, round_), daemon=True)
        child.start()
        send.close()
        cursor, wanted = None, rng.randint(1, 12)
        n = 0
        while n < wanted and recv.poll(30):
            msg = recv.recv()
            n += msg[0] != "cursor"
            if msg[0] == "cursor":
                cursor = msg[1]
            else:
                returned[msg[0]].add(msg[1])
        if rng.random() < 0.5:  # land anywhere inside the next write
            for _ in range(rng.randrange(20000)):
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        while recv.poll(0):  # sent before the kill: returned commits too
            try:
                msg = recv.recv()
            except EOFError:
                break
            if msg[0] == "cursor":
                cursor = msg[1]
            else:
                returned[msg[0]].add(msg[1])
        recv.close()
        assert n == wanted, "the child stopped committing"
        state = json.loads((folder / PROJECT_JSON).read_text())  # always parses
        with Project.open(folder) as p:
            assert not p.quarantined and not p.problems
            if cursor is not None:
                assert p.cursor in (cursor, state["cursor"])
            for i, ids in returned.items():
                assert ids <= set(p.get_annotation(i)[1]), f"lost commits on image {i}"
    assert sum(len(v) for v in returned.values()) >= 8
    assert not [f for f in (folder / "annotations").iterdir() if f.name.endswith(".tmp")]  # cleaned on open


# ------------------------------------------------------------ read-only folders, rollback, temp files


def _make_sidecar_stale(proj):
    side = proj / "annotations" / "a.json"
    rec = json.loads(side.read_text())
    rec["generation"] = 0
    side.write_text(json.dumps(rec))
    return side.read_bytes()


def test_folder_without_write_permission_opens_read_only(proj, monkeypatch):
    stale = _make_sidecar_stale(proj)
    real_access = os.access
    monkeypatch.setattr(project_mod.os, "access",
                        lambda path, mode, **k: False if mode & os.W_OK else real_access(path, mode, **k))
    p = Project.open(proj)
    assert p.read_only and len(p.problems) == 1 and "read-only" in p.problems[0]
    assert p.get_annotation(0)[1] == {1: 1} and p.progress() == (2, 3)
    assert (proj / "annotations" / "a.json").read_bytes() == stale  # not repaired: nothing written
    with pytest.raises(ProjectReadOnlyError):
        p.commit_object(2, _box(0, 2, 0, 2), 1)
    monkeypatch.undo()
    with Project.open(proj) as q:  # the lock was not kept by the read-only open
        assert not q.read_only


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_really_read_only_folder_with_stale_sidecar_opens(proj):
    _make_sidecar_stale(proj)
    (proj / LOCK_FILE).unlink(missing_ok=True)
    modes = [(d, d.stat().st_mode) for d in (proj / "annotations", proj)]
    try:
        for d, m in modes:
            d.chmod(m & ~0o222)
        p = Project.open(proj)
        assert p.read_only and p.get_annotation(0)[1] == {1: 1}
    finally:
        for d, m in reversed(modes):
            d.chmod(m)


def test_failed_saves_roll_back_in_memory(tmp_path, images, monkeypatch):
    p = Project.create(tmp_path / "proj", images, classes=["cell", "nucleus"])
    classes, colors = p.classes, p.colors

    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(project_mod, "atomic_write_json", boom)
        with pytest.raises(OSError, match="disk full"):
            p.go_to(2)
        with pytest.raises(OSError, match="disk full"):
            p.set_classes(["a", "b", "c"], [(1, 1, 1), (2, 2, 2), (3, 3, 3)])
        with pytest.raises(OSError, match="disk full"):
            p.add_class("debris")
    assert p.cursor == 0 and p.classes == classes and p.colors == colors
    p.next()  # the next write must not carry the failed changes
    p.close()
    with Project.open(tmp_path / "proj") as q:
        assert q.cursor == 1 and q.classes == classes and q.colors == colors


def test_stale_temp_files_are_removed_on_open(proj):
    temps = [proj / ".project.json.k3j2.json.tmp", proj / "annotations" / ".a.png.x8f1.png.tmp",
             proj / "annotations" / ".b.json.q0.json.tmp"]
    keep = [proj / "notes.txt", proj / "annotations" / ".keep"]
    for f in temps + keep:
        f.write_bytes(b"x")
    Project.open(proj, read_only=True)  # a reader removes nothing
    assert all(f.exists() for f in temps)
    Project.open(proj).close()
    assert not any(f.exists() for f in temps) and all(f.exists() for f in keep)


# ------------------------------------------------------------ durable, readable files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_atomic_path_gives_umask_modes_even_when_the_writer_recreates_the_file(tmp_path, umask_022):
    assert io_utils.umask() == 0o022
    out = tmp_path / "new" / "ckpt.bin"
    with io_utils.atomic_path(out) as tmp:
        tmp.unlink()  # as safetensors does: a fresh 0600 file
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"data")
        os.close(fd)
    assert out.read_bytes() == b"data" and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o755
    assert [f.name for f in out.parent.iterdir()] == ["ckpt.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_project_files_are_readable_by_others(tmp_path, images, umask_022):
    with Project.create(tmp_path / "proj", images) as p:
        p.commit_object(0, _box(0, 2, 0, 2), 1)
    for f in (tmp_path / "proj").rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o755 if f.is_dir() else 0o644), f


@pytest.mark.skipif(sys.platform == "win32", reason="no directory fsync on Windows")
def test_commits_fsync_the_file_and_its_folder_before_returning(tmp_path, images, monkeypatch):
    p = Project.create(tmp_path / "proj", images)
    p.commit_object(0, _box(0, 2, 0, 2), 1)
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(io_utils.os, "fsync", spy)
    p.commit_object(0, _box(4, 6, 4, 6), 1)
    ann = (tmp_path / "proj" / "annotations")
    assert synced.count(("dir", ann.stat().st_ino)) == 1  # after the map's rename (the sidecar is rebuilt if stale)
    assert [k for k, _ in synced].count("file") == 1
    assert synced.index(("file", (ann / "a.png").stat().st_ino)) < synced.index(("dir", ann.stat().st_ino))
