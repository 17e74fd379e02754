"""Work on a spool's batch files on a few threads, the results in the files' order.

The compiled batch parser (``_cbatch.c``), file reads and most of pyarrow's work run without the
GIL, so a second thread parses the next files while the first turns its columns into Arrow
arrays. :func:`ordered_map` keeps only a few files in flight (``threads + 1``), gives the results
in the order of its input (every answer is the one a single thread gives), and raises a worker's
exception where the single-threaded loop would have raised it.

:func:`file_bytes` reads a batch file into a buffer each thread keeps for its next file.

``CIRRON_READ_THREADS`` sets the number of threads (``1``: everything on the calling thread, as
before; default: 2, or 1 on a one-core machine).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import Any, TypeVar

__all__ = ["THREADS_ENV", "file_bytes", "ordered_map", "read_threads"]

THREADS_ENV = "CIRRON_READ_THREADS"

#: More threads than this gain nothing on the reads (the GIL-bound part of each file caps them).
MAX_THREADS = 8

T = TypeVar("T")
R = TypeVar("R")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_threads() -> int:
    """How many threads read batch files: ``CIRRON_READ_THREADS`` when it is a positive integer
    (at most :data:`MAX_THREADS`), else 2 (1 on a one-core machine)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return min(int(raw), MAX_THREADS)
    return max(1, min(2, _cores()))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> Generator[R, None, None]:
    """``fn(item)`` for each item, in order, computed on ``threads`` threads (default
    :func:`read_threads`) with at most ``threads + 1`` items in flight. Close the iterator (or
    exhaust it) to stop: the items not started are dropped and the running ones awaited, so no
    thread outlives it."""
    n = read_threads() if threads is None else threads
    if n <= 1 or (isinstance(items, Sized) and len(items) < 2):  # no thread for a lone file
        yield from map(fn, items)
    else:
        yield from _threaded(fn, iter(items), n)


def _threaded(fn: Callable[[T], R], items: Iterator[T], n: int) -> Generator[R, None, None]:
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(n, thread_name_prefix="cirron-read")
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > n:
                break
        while pending:
            result = pending.popleft().result()
            for item in items:  # keep the threads busy while the caller works on this result
                pending.append(pool.submit(fn, item))
                break
            yield result
            del result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


#: Batch files up to this size are read into one buffer per thread, used again for the next file:
#: a fresh buffer for each would be fresh pages (page faults) each time.
_REUSED_BUFFER_MAX = 16 << 20
_read_buffers = threading.local()


def file_bytes(fh: Any) -> bytes | memoryview:
    """All of ``fh``: up to :data:`_REUSED_BUFFER_MAX` in this thread's reused buffer (so valid
    until this thread's next call; keep nothing that refers to it)."""
    size = os.fstat(fh.fileno()).st_size
    if size > _REUSED_BUFFER_MAX:
        return fh.read()
    buf = getattr(_read_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _read_buffers.buf = bytearray(max(size, 1 << 20))
    got = fh.readinto(memoryview(buf)[:size]) or 0
    rest = fh.read()  # the file grew meanwhile (or a short read)
    return memoryview(buf)[:got] if not rest else bytes(buf[:got]) + rest
