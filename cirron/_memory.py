"""Handing freed memory back to the system, so a reader's peak is its largest moment and not the
sum of its passes. glibc only; elsewhere every function here does nothing.

glibc raises its mmap threshold each time a big block is freed, after which arrays of a few MB
come from the heap, where freed blocks stay counted in the process's resident memory (+70 MB on
the second session of 2.5M spans). :func:`map_big_blocks` pins the threshold at
:data:`MAP_BYTES`, so blocks above it are mapped and unmapped on their own, and :func:`trim`
returns the heap's free memory. A command whose big blocks are buffers freed and allocated
again slice after slice (the column exports) undoes the pin with :func:`reuse_heap`: mapped, each
such block costs its pages' faults again (seconds of system time on an export of 1M spans)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["MAP_BYTES", "map_big_blocks", "returned_memory", "reuse_heap", "reused_heap", "trim"]

#: Blocks of at least this many bytes are mapped on their own once :func:`map_big_blocks` ran.
MAP_BYTES = 256 << 10
#: With :func:`reuse_heap`: blocks below this come from the heap (glibc's own ceiling for the threshold
#: it raises by itself), and the heap's free top is kept until it exceeds :data:`KEEP_TOP_BYTES`.
HEAP_BYTES = 32 << 20
KEEP_TOP_BYTES = 64 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_ARENA_MAX = -8
_LIBC: list[Any] = []
#: The mode the last of :func:`map_big_blocks` / :func:`reuse_heap` set (``None``: glibc's own),
#: so that :func:`returned_memory` can put it back.
_mode: list[Any] = [None]


def _glibc() -> Any:
    if not _LIBC:
        lib = None
        try:
            import ctypes

            cand = ctypes.CDLL(None)
            if hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim") and hasattr(cand, "gnu_get_libc_version"):
                lib = cand
        except (OSError, AttributeError):
            pass
        _LIBC.append(lib)
    return _LIBC[0]


def map_big_blocks() -> None:
    """Pin glibc's mmap threshold at :data:`MAP_BYTES` for the rest of the process, and keep one
    malloc arena: every thread's blocks then come from the one heap that :func:`trim` returns,
    not from a heap per thread each keeping its own free memory (a big session's encoding thread
    in ``export --format perfetto``: 333 -> 293 MB at 10M spans, same time)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MAP_BYTES)
        libc.mallopt(_M_ARENA_MAX, 1)
        _mode[0] = map_big_blocks


def reuse_heap() -> None:
    """Undo :func:`map_big_blocks` for the rest of the process: blocks up to :data:`HEAP_BYTES`
    come from the heap and are reused once freed, as glibc does by itself once its threshold rose.
    For commands that measured as low a peak this way (the column exports)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TOP_BYTES)
        _mode[0] = reuse_heap


def trim() -> None:
    """Return the free memory of glibc's heap to the system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def returned_memory() -> Iterator[None]:
    """Around a pass that builds and drops big arrays: what it frees goes back to the system.
    Afterwards the mode set before (:func:`reuse_heap` for the column exports) applies again: a
    big session's pieces are written under it (left pinned, ``export json`` of 2.5M spans took
    8.8 s of system time)."""
    before = _mode[0]
    map_big_blocks()
    try:
        yield
    finally:
        trim()
        if before is reuse_heap:
            reuse_heap()


@contextlib.contextmanager
def reused_heap() -> Iterator[None]:
    """Around a pass whose big blocks are buffers freed and allocated again slice after slice,
    in a command that pinned the threshold (:func:`map_big_blocks`): the blocks come from the
    heap (:func:`reuse_heap`) for the pass, then the pin applies again and the heap's free memory
    goes back. Elsewhere (glibc's own threshold already rises to reuse them) it changes nothing."""
    if _mode[0] is not map_big_blocks:
        yield
        return
    reuse_heap()
    try:
        yield
    finally:
        map_big_blocks()
        trim()
