"""Atomic, durable file writes: every file that matters is written to a temporary name, fsynced, renamed into place,
and its folder fsynced, so a write that returned survives a kill or a power cut."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

# fsync of a folder is not supported everywhere (Windows cannot open one; some file systems refuse): skip there
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR, errno.EACCES, errno.EPERM}


def umask() -> int:
    """The process umask: read from /proc where it can be, since setting it to read it races with other threads."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def try_lock(path: str | os.PathLike) -> int | None:
    """Take an exclusive, non-blocking lock on the file ``path`` (created if missing); its descriptor, or None if
    another open file holds it. The OS drops the lock when the descriptor closes or the process dies, so a killed
    process never leaves a stale lock. Release with ``os.close(fd)``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return None
        raise
    return fd


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename or a new file in it) to disk; a no-op where the OS cannot."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def _mkdirs(folder: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so new folders survive a crash too."""
    if folder.is_dir():
        return
    _mkdirs(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir():
            raise
        return
    fsync_dir(folder.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced, renamed onto ``path``, and the folder fsynced.

    The temporary name is ``.NAME.<random><suffix>`` (``suffix`` defaults to ``path``'s suffix + ``.tmp``), so stale
    ones left by a killed process can be found and removed. On any exception the temporary file is removed and
    ``path`` is left as it was. The file gets the usual permissions (0666 less the umask). ``durable=False`` skips
    both fsyncs (still atomic) for files that are rebuilt from another one when they are found stale.
    """
    path = Path(path)
    _mkdirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or (path.suffix + ".tmp"), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the body: a writer may have re-created the file (mkstemp's 0600 or its own mode)
        os.chmod(tmp_path, 0o666 & ~umask())
        if durable:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        named = naming(e, path)
        if named is not None:
            raise named from e
        raise
    if durable:
        fsync_dir(path.parent)


def naming(e: BaseException, path: str | os.PathLike) -> OSError | None:
    """An OSError like ``e`` that names ``path``, when ``e`` is one that names no file (writers such as PIL or torch
    raise e.g. ENOSPC without a file name, and the one-line error must say where); else None."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror, str(path))
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n", durable)


def read_tagged_json(path: str | os.PathLike, field: str, tag: str, what: str,
                     not_found_hint: str = "") -> dict:
    """Read a JSON object whose ``field`` must equal ``tag``; one clear error naming ``path`` otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {not_found_hint or 'file not found'}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot parse JSON ({e})") from None
    if not isinstance(data, dict) or data.get(field) != tag:
        raise ValueError(f"{path}: not {what}")
    return data
