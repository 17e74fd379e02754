"""Per-thread record buffers and the registry the flush service drains them from.

Each thread that records gets a :class:`ThreadBuffer`: a span deque and a mark ring. Only the
owning thread appends and bumps the counters, so counting needs no lock; the flush service
takes records out with ``popleft`` (atomic on a deque) from its own thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cirron import _native as native

_C = TypeVar("_C")


def _no_untrack(container: _C) -> _C:
    return container


def _nothing() -> None:
    pass


_cscope = native.load("cirron._record._cscope")
#: Takes a record container out of the cyclic GC's sight (with the compiled module). A full
#: collection walks every item of every tracked list and deque: with a few hundred thousand
#: buffered and recently drained spans that is 10-20 ms, in whichever thread triggers it.
#: These containers hold only records and are never part of a reference cycle.
untrack = _cscope.untrack if _cscope is not None else _no_untrack
if _cscope is not None:  # a closed record's frozen attributes read as a (read-only) mapping
    Mapping.register(_cscope.Attrs)

#: Spans waiting for the flush service, per thread. Beyond this the newest spans are dropped.
SPAN_BUFFER_CAPACITY = 1 << 18
#: Spans per list that :meth:`BufferRegistry.drain` hands out. The cyclic GC walks every item of
#: a young list, so one list of 100,000 drained spans would make the next collection, in
#: whichever thread triggers it (often a recording one), take milliseconds.
DRAIN_CHUNK = 4096


class ThreadBuffer:
    """The records one thread has made and the flush service has not taken yet, with its counts."""

    __slots__ = (
        "spans", "marks", "thread", "thread_id", "mark_capacity", "span_capacity",
        "spans_dropped", "marks_dropped", "spans_drained", "marks_drained",
    )

    def __init__(self, mark_capacity: int, span_capacity: int) -> None:
        self.thread: threading.Thread = threading.current_thread()
        self.thread_id: int = threading.get_ident()
        self.spans: deque[Any] = untrack(deque())
        self.marks: deque[tuple[Any, ...]] = untrack(deque())
        self.mark_capacity: int = mark_capacity
        self.span_capacity: int = span_capacity
        # The owner thread only counts drops; the flush service counts what it took out.
        # Recorded = drained + still buffered + dropped, with no counting on the hot path.
        self.spans_dropped: int = 0
        self.marks_dropped: int = 0
        self.spans_drained: int = 0
        self.marks_drained: int = 0


class BufferRegistry:
    """Every thread buffer of one recorder, plus the counts of buffers already retired."""

    def __init__(self, mark_capacity: int, span_capacity: int = SPAN_BUFFER_CAPACITY) -> None:
        self.mark_capacity = mark_capacity
        self.span_capacity = span_capacity
        self.local: threading.local = threading.local()
        self._lock = threading.Lock()
        self._buffers: list[ThreadBuffer] = []
        #: Called (once per new thread buffer) while set; a forked child starts its service here.
        self.on_new_buffer: Callable[[], None] | None = None
        # Counters of buffers whose thread ended and that were emptied and dropped.
        self.retired: dict[str, int] = {
            "spans_recorded": 0, "spans_dropped": 0, "marks_recorded": 0, "marks_dropped": 0,
        }

    def new_thread_buffer(self) -> ThreadBuffer:
        tb = ThreadBuffer(self.mark_capacity, self.span_capacity)
        with self._lock:
            self._buffers.append(tb)
        self.local.tb = tb
        hook = self.on_new_buffer
        if hook is not None:
            hook()
        return tb

    def buffers(self) -> list[ThreadBuffer]:
        with self._lock:
            return list(self._buffers)

    def drain(self, between_chunks: Callable[[], None] = _nothing) -> tuple[list[list[Any]], list[Any]]:
        """Take out everything buffered so far: ``(span lists of at most DRAIN_CHUNK each, marks)``.
        ``between_chunks`` is called after each chunk (the flush service hands the GIL over there)."""
        spans: list[list[Any]] = []
        marks: list[Any] = untrack([])
        for tb in self.buffers():
            sq, mq = tb.spans, tb.marks
            n = len(sq)
            pop = sq.popleft
            for start in range(0, n, DRAIN_CHUNK):
                spans.append(untrack([pop() for _ in range(min(DRAIN_CHUNK, n - start))]))
                between_chunks()
            tb.spans_drained += n
            n = len(mq)
            popm = mq.popleft
            for start in range(0, n, DRAIN_CHUNK):
                marks += [popm() for _ in range(min(DRAIN_CHUNK, n - start))]
                between_chunks()
            tb.marks_drained += n
        self._retire_dead()
        return spans, marks

    def _retire_dead(self) -> None:
        with self._lock:
            keep = []
            for tb in self._buffers:
                if not tb.thread.is_alive() and not tb.spans and not tb.marks:
                    r = self.retired
                    r["spans_recorded"] += tb.spans_drained + tb.spans_dropped
                    r["spans_dropped"] += tb.spans_dropped
                    r["marks_recorded"] += tb.marks_drained + tb.marks_dropped
                    r["marks_dropped"] += tb.marks_dropped
                else:
                    keep.append(tb)
            self._buffers = keep

    def totals(self) -> dict[str, int]:
        out = dict(self.retired)
        out["spans_pending"] = 0
        out["marks_pending"] = 0
        for tb in self.buffers():
            spans_dropped, marks_dropped = tb.spans_dropped, tb.marks_dropped
            spans_buffered, marks_buffered = len(tb.spans), len(tb.marks)
            out["spans_recorded"] += tb.spans_drained + spans_buffered + spans_dropped
            out["spans_dropped"] += spans_dropped
            out["marks_recorded"] += tb.marks_drained + marks_buffered + marks_dropped
            out["marks_dropped"] += marks_dropped
            out["spans_pending"] += spans_buffered
            out["marks_pending"] += marks_buffered
        return out

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's buffers (the parent writes them) and locks."""
        # Cleared in place, not replaced: the recorder keeps a reference to this object. Only
        # the thread that forked exists in the child, so its value is the only one left.
        self.local.__dict__.clear()
        self._lock = threading.Lock()
        self._buffers = []
        self.retired = dict.fromkeys(self.retired, 0)
