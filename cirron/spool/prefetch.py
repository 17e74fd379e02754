"""Batch files parsed early, while the command still imports its libraries.

An export spends its first ~0.15 s importing numpy and pyarrow, on one core. :func:`start` has a
thread parse the first sessions' batch files meanwhile with the compiled parser (``_cbatch.parse``:
no pyarrow, and no GIL while it parses); :func:`cirron.spool.columnar.read_file` then takes a
file's parse from here (:func:`take`) instead of reading it again. Only whole sessions of at most
:data:`PREFETCH_BYTES` together are parsed early (a small spool's; a big session is read as before),
each parse is handed over once and only while the file is unchanged (size, times, inode), a file the
reader asks for before the thread reached it is read by the reader itself, and :func:`stop` lets go of
what nobody took. What the parser declines is left to the reader, which reads the file as always.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cirron import _native as native
from cirron._safeopen import open_regular
from cirron.spool.parallel import file_bytes, read_threads

__all__ = ["PREFETCH_BYTES", "start", "stop", "take"]

#: Bytes of batch files parsed early at most (a session of 25,000 spans and marks: ~12 MB).
PREFETCH_BYTES = 32 << 20

_cbatch = native.load("cirron.spool._cbatch")
_lock = threading.Lock()
_early: dict[tuple[Path, bool], _Early] = {}


class _Early:
    """One file's early parse: ``result`` once ``done`` is set (None: declined or unreadable)."""

    def __init__(self, path: Path, with_marks: bool) -> None:
        self.path, self.with_marks = path, with_marks
        self.started = False
        self.dropped = False  # taken before it started: the reader reads the file itself
        self.done = threading.Event()
        self.result: Any = None
        self.version: tuple[int, ...] = ()  # of the file parsed

    def run(self) -> None:
        try:
            with open_regular(self.path, follow_symlinks=False) as fh:
                self.version = _version(os.fstat(fh.fileno()))
                data = file_bytes(fh)
            self.result = _cbatch.parse(data, self.with_marks) if _cbatch is not None else None
        except (OSError, ValueError, MemoryError):  # the reader reads it again and says why
            self.result = None
        finally:
            self.done.set()


def _version(st: os.stat_result) -> tuple[int, ...]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def start(sessions: Iterable[Any], with_marks: bool) -> None:
    """Parse the batch files of the first ``sessions`` (summaries with ``files``, ``bytes`` and
    ``streamable``) on a thread, whole sessions of at most :data:`PREFETCH_BYTES` together, in
    their order. Nothing happens without the compiled parser or with one read thread."""
    if _cbatch is None or read_threads() <= 1:
        return
    todo: list[_Early] = []
    budget = PREFETCH_BYTES
    for info in sessions:
        if not info.streamable or info.bytes > budget:
            break
        budget -= info.bytes
        todo.extend(_Early(bf.path, with_marks) for bf in info.files)
    if not todo:
        return
    with _lock:
        for e in todo:
            _early[(e.path, with_marks)] = e
    threading.Thread(target=_parse_all, args=(todo,), name="cirron-prefetch", daemon=True).start()


def _parse_all(todo: list[_Early]) -> None:
    for e in todo:
        with _lock:
            if e.dropped:
                continue
            e.started = True
        e.run()


def take(path: Path, with_marks: bool) -> Any:
    """The early parse of ``path`` (what ``_cbatch.parse(data, with_marks)`` gave), waiting for it
    while it runs; None where there is none (not asked for, declined, already taken, or not
    started yet: it will not be, the caller reads the file)."""
    if not _early:
        return None
    with _lock:
        e = _early.pop((path, with_marks), None)
        if e is None:
            return None
        if not e.started:
            e.dropped = True
            return None
    e.done.wait()
    try:
        same = e.version == _version(os.stat(path, follow_symlinks=False))
    except OSError:
        same = False
    return e.result if same else None  # a file changed since: read again


def stop() -> None:
    """Let go of the parses nobody took (the files not started are not parsed)."""
    with _lock:
        for e in _early.values():
            e.dropped = True
        _early.clear()
