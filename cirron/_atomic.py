"""Atomic file replacement, the one way cirron writes a file a reader might open.

The data goes to a temporary file in the destination's directory and is renamed over the
final name, so no reader ever sees a partial file under that name, even after a crash.
Temporary names start with ``.tmp-<pid>-``: readers skip them and a later writer can tell
which ones belonged to a process that is gone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-{path.name}")


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        return False
    return False


def remove_orphaned_temporaries(directory: str | os.PathLike[str]) -> int:
    """Delete the temporary files (:func:`temporary_name`) in ``directory`` whose writer died
    mid-write (its pid is gone); returns how many. Only regular files are touched."""
    removed = 0
    try:
        it = os.scandir(directory)
    except OSError:
        return 0
    with it:
        for entry in it:
            if not entry.name.startswith(TMP_PREFIX):
                continue
            pid = entry.name[len(TMP_PREFIX):].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                if not entry.is_file(follow_symlinks=False) or not _pid_gone(int(pid)):
                    continue
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on any failure it is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | list[bytes], fsync: bool = True) -> None:
    """Write ``data`` (bytes, or a list of pieces) atomically.

    Pieces go out with ``os.writev``: one system call, so the GIL is released and taken back
    once per file rather than once per piece (each take-back can wait a whole switch interval
    behind a busy recording thread), and no joined copy is made."""
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    with atomic_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _writev_all(fd, pieces)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


_IOV_MAX = 512


def _writev_all(fd: int, pieces: list[Any]) -> None:
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written and views:
            n = views[0].nbytes
            if written >= n:
                written -= n
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0
