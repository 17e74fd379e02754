"""Open files that came from disk we do not control without ever blocking.

A FIFO, a character device or a socket can sit where a batch file, a lock file or a snapshot
blob should be; a plain ``open()`` on a FIFO waits forever for a writer. :func:`open_regular`
opens non-blocking, checks the type of what it opened (``fstat``, so there is no race between a
check and the open) and gives back a normal blocking file object only for a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = ["NotRegularFile", "open_regular", "open_regular_fd"]


class NotRegularFile(OSError):
    """What was opened is a FIFO, device, socket or directory, not a regular file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EINVAL, "not a regular file", str(path))


def open_regular_fd(path: str | os.PathLike[str], flags: int = os.O_RDONLY, *, follow_symlinks: bool = True) -> int:
    """An fd on ``path`` opened without blocking, after checking it is a regular file (the fd is
    switched back to blocking mode). Raises :class:`NotRegularFile` or the ``OSError`` of the open."""
    extra = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        extra |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | extra)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """``open(path, "rb")`` that refuses (:class:`NotRegularFile`) anything but a regular file
    and never blocks on a FIFO."""
    return os.fdopen(open_regular_fd(path, follow_symlinks=follow_symlinks), "rb")
