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

TMP_PREFIX = ".tmp-"


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}-{path.name}")


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
    """Write ``data`` (bytes, or a list of pieces written without joining them) atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            f.writelines(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
