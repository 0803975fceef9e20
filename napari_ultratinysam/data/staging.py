"""Writing a folder atomically: build it in a stage next to its final name, then swap it into place.

Used by the dataset export, the label import and the shard writer. ``staged_dir`` yields the stage; on success
every file and folder in it is fsynced and the stage replaces the final folder, on failure it is removed and the
final folder is untouched.

Safety: the swap is one atomic ``renameat2(RENAME_EXCHANGE)`` where the OS has it, else two renames that the next
write rolls back or finishes after a kill between them (``recover_staged``); files and folders are fsynced before
the swap and the parent folder after it; stage folders of killed writes are removed by the next write to the same
name, while a live writer's stage is protected by the flock it holds on it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from napari_ultratinysam.core.io import fsync_dir, naming, umask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; stale stages are then removed unconditionally
    fcntl = None

# Names next to ``final``: a stage being written (its writer holds an flock on it while alive) and, for the
# two-step swap only, the previous folder moved aside. A random hex token keeps them apart from other names.
_TOKEN = r"[0-9a-f]{8}"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _stage_re(final: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(final.name)}\.tmp-{_TOKEN}")


def _old_re(final: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(final.name)}\.old-{_TOKEN}")


def _load_renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28, not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (renameat2 RENAME_EXCHANGE); False where the OS or filesystem lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # kernel or filesystem without RENAME_EXCHANGE: the caller falls back
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files written by PIL or the shard writer are not yet)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _lock(path: Path, blocking: bool = True) -> int | None:
    """An exclusive flock on a folder (None when another live process holds it); it dies with the process."""
    if fcntl is None:  # pragma: no cover
        return -1
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        os.close(fd)


def recover_staged(final: str | Path) -> list[str]:
    """Finish what a killed write to ``final`` left: roll back a half-done two-step swap (the old folder returns
    under its name when the new one is not there), and remove stale stage folders and moved-aside old folders.

    Folders held by a live writer (flocked) are left alone. Returns what was done, one line per folder.
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return []
    done: list[str] = []
    stage_re, old_re = _stage_re(final), _old_re(final)
    entries = sorted(parent.iterdir(), key=lambda q: q.name)
    for q in entries:
        if not old_re.fullmatch(q.name) or q.is_symlink() or not q.is_dir():
            continue
        fd = _lock(q, blocking=False)
        if fd is None:
            continue
        try:
            if not os.path.lexists(final):
                os.rename(q, final)  # the kill came between the two renames: the old folder comes back
                fsync_dir(parent)
                done.append(f"restored {final} from {q.name}")
            else:
                shutil.rmtree(q, ignore_errors=True)
                done.append(f"removed {q.name}")
        finally:
            _unlock(fd)
    for q in entries:
        if not stage_re.fullmatch(q.name) or not os.path.lexists(q):
            continue
        if q.is_symlink() or not q.is_dir():
            q.unlink(missing_ok=True)
            done.append(f"removed {q.name}")
            continue
        fd = _lock(q, blocking=False)
        if fd is None:
            continue
        try:
            shutil.rmtree(q, ignore_errors=True)
            done.append(f"removed {q.name}")
        finally:
            _unlock(fd)
    return done


def _new_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder with the user's umask (mkdtemp makes 0700 folders, which a rename would publish)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _swap_into_place(stage: Path, final: Path) -> None:
    """Put ``stage`` under the name ``final``: one atomic exchange where the OS has it, else two renames that
    ``recover_staged`` finishes or rolls back after a kill between them."""
    parent = final.parent
    if not os.path.lexists(final):
        os.rename(stage, final)
    elif exchange_paths(stage, final):
        shutil.rmtree(stage, ignore_errors=True)  # now the old folder; a kill here leaves a stale stage
    else:
        fd = _lock(final)  # the lock travels with the folder: no concurrent recovery takes it for abandoned
        try:
            while True:
                old = parent / f".{final.name}.old-{secrets.token_hex(4)}"
                if not os.path.lexists(old):
                    break
            os.rename(final, old)
            try:
                os.rename(stage, final)
            except BaseException:
                os.rename(old, final)
                raise
            fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            _unlock(fd)
    fsync_dir(parent)


def _skip_temp(_dir: str, names: list[str]) -> set[str]:
    """Orphan temporaries of atomic writes (``.NAME.*.tmp``) are not carried into the next stage."""
    return {n for n in names if n.startswith(".") and n.endswith(".tmp")}


@contextlib.contextmanager
def staged_dir(final: str | Path, keep_existing: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``final`` (pre-filled with hard links to its files when ``keep_existing``).

    On success every file is fsynced and the folder replaces ``final`` atomically (see ``_swap_into_place``);
    on any exception it is removed and ``final`` is untouched. What killed writes left is cleaned first.
    Files in the stage may be hard links: replace them (unlink first), never write into them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_staged(final)
    stage = _new_dir(final.parent, f".{final.name}.tmp-")
    fd = _lock(stage)
    try:
        if keep_existing and final.is_dir():
            shutil.copytree(final, stage, symlinks=True, copy_function=_link_or_copy, ignore=_skip_temp,
                            dirs_exist_ok=True)
            os.chmod(stage, 0o777 & ~umask())  # copytree copied the old folder's mode (0700 before this fix)
        yield stage
        _fsync_tree(stage)
        _swap_into_place(stage, final)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        named = naming(e, final)  # e.g. ENOSPC from a write: the one-line error names the export
        if named is not None:
            raise named from e
        raise
    finally:
        _unlock(fd)
