"""Drain the hot-path buffers into batches, keep ``ci.trace()``'s view, and keep the books.

The collector is the single consumer of a recorder's buffers. It runs under its lock, in the
flush service's worker thread, or directly from ``ci.trace()``/``flush()`` when no profiler runs.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from cirron._flush.batch import (
    MAX_MARKS_PER_BATCH,
    MAX_SPANS_PER_BATCH,
    Batch,
    GilBudget,
    release_unshared,
)
from cirron._ids import IDS
from cirron._record.buffer import DRAIN_CHUNK, untrack
from cirron._record.span import MARK_TUPLE_FIELDS, Recorder, Scope

#: ``kind="point"`` marks kept per span for ``ci.trace()`` (summary marks are all kept).
TRACE_POINT_MARKS_PER_SPAN = 1024


def open_tuple(span: Scope) -> tuple[Any, ...]:
    """An open span in the closed-tuple layout, ``end_ns`` None."""
    parent = span.parent
    return (span.id, parent.id if parent is not None else 0, span.name, span.index, span.start_ns, None, None,
            span.gpu_ns, span.memory_peak_bytes, span.thread_id, dict(span.attrs) if span.attrs else None)


class TraceStore:
    """The bounded in-memory view ``ci.trace()`` reads: recent closed spans and their marks.

    Spans are kept as the lists the drains produced (adding a drain costs O(1), not a step per
    span); whole lists fall off the old end once the newer ones hold ``max_spans``, and a read
    trims to exactly the newest ``max_spans``. A span's marks are one list, out of the cyclic GC's
    sight (they hold only records), until it holds over 2,048; then a :class:`SpanMarks` keeps
    every summary mark and the newest 1,024 point marks, so adding a mark stays one append
    whatever the span holds. Marks of spans that left the window are pruned in bulk.
    """

    def __init__(self, max_spans: int, open_spans: dict[int, Any] | None = None) -> None:
        self.max_spans = max_spans
        self._chunks: deque[list[tuple[Any, ...]]] = deque()
        self._count = 0
        self.marks: dict[int, list[tuple[Any, ...]] | SpanMarks] = {}
        #: The recorder's open spans: their marks are kept until the span itself arrives.
        self.open_spans = open_spans if open_spans is not None else {}
        #: Lists that fell out of the window, freed by :meth:`release_evicted` off the lock.
        self._evicted: list[list[tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def add(self, span_lists: list[list[tuple[Any, ...]]], marks: list[tuple[Any, ...]]) -> None:
        self.add_marks(marks)
        self.add_spans(span_lists)

    def add_spans(self, span_lists: list[list[tuple[Any, ...]]]) -> None:
        with self._lock:
            for spans in span_lists:
                if spans:
                    self._chunks.append(spans)
                    self._count += len(spans)
            while self._chunks and self._count - len(self._chunks[0]) >= self.max_spans:
                evicted = self._chunks.popleft()
                self._count -= len(evicted)
                self._evicted.append(evicted)
            if len(self.marks) > 2 * self.max_spans + 1024:
                self._prune_marks()

    def release_evicted(self, budget: GilBudget) -> None:
        """Free the spans that left the window, in slices (see :func:`~cirron._flush.batch.release`),
        unless a batch still holds them (it frees them once written)."""
        with self._lock:
            evicted, self._evicted = self._evicted, []
        release_unshared(evicted, budget)

    def _prune_marks(self) -> None:
        """Drop the marks of spans that left the window or never arrived (dropped when full)."""
        keep = {sp[0] for sp in self._window()}
        open_ids = self.open_spans
        self.marks = {k: v for k, v in self.marks.items() if k in keep or k in open_ids or k == 0}

    def _window(self) -> list[tuple[Any, ...]]:
        spans = [sp for chunk in self._chunks for sp in chunk]
        return spans[-self.max_spans :] if len(spans) > self.max_spans else spans

    def add_marks(self, marks: list[tuple[Any, ...]]) -> None:
        if not marks:
            return
        with self._lock:
            store = self.marks
            for mark in marks:
                sid = mark[0]
                kept = store.get(sid)
                if kept is None:
                    store[sid] = untrack([mark])
                elif type(kept) is list:
                    kept.append(mark)
                    if len(kept) > 2 * TRACE_POINT_MARKS_PER_SPAN:
                        store[sid] = SpanMarks(kept)
                else:
                    kept.add(mark)

    def snapshot(self, open_spans: list[Scope]) -> tuple[list[tuple[Any, ...]], dict[int, list[Any]]]:
        with self._lock:
            spans = self._window() + [open_tuple(s) for s in open_spans]
            ids = {sp[0] for sp in spans}
            marks = {k: _in_time_order(v) for k, v in self.marks.items() if k in ids or k == 0}
        return spans, marks

    def reset_after_fork(self, open_spans: dict[int, Any]) -> None:
        self._lock = threading.Lock()
        self.open_spans = open_spans


class SpanMarks:
    """The marks of a span that has many: every summary mark and the newest point marks, each
    new one kept in O(1)."""

    __slots__ = ("summary", "points")

    def __init__(self, marks: list[tuple[Any, ...]]) -> None:
        self.summary: list[tuple[Any, ...]] = untrack([])
        self.points: deque[tuple[Any, ...]] = untrack(deque(maxlen=TRACE_POINT_MARKS_PER_SPAN))
        for mark in marks:
            self.add(mark)

    def add(self, mark: tuple[Any, ...]) -> None:
        if mark[3] == "summary":
            self.summary.append(mark)
        else:
            self.points.append(mark)

    def in_time_order(self) -> list[tuple[Any, ...]]:
        if not self.summary:
            return list(self.points)
        return sorted([*self.summary, *self.points], key=_mark_ts)


def _in_time_order(kept: list[tuple[Any, ...]] | SpanMarks) -> list[tuple[Any, ...]]:
    """A span's marks for ``ci.trace()``: every summary mark and the newest 1,024 point marks."""
    if type(kept) is list:
        if sum(1 for m in kept if m[3] != "summary") <= TRACE_POINT_MARKS_PER_SPAN:
            return list(kept)
        kept = SpanMarks(kept)
    return kept.in_time_order()


_mark_ts = itemgetter(MARK_TUPLE_FIELDS.index("ts_ns"))


def resource_attributes(rank: int, world_size: int, project: str | None, project_version: str | None) -> dict[str, Any]:
    import socket  # once per session; not part of import cirron

    res: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "rank": rank, "world_size": world_size}
    if project is not None:
        res["project"] = project
        res["project_version"] = project_version
    return res


class Collector:
    def __init__(self, rec: Recorder, trace: TraceStore, backlog_max_spans: int, backlog_max_marks: int) -> None:
        self.rec = rec
        self.trace = trace
        self.lock = threading.RLock()
        self._snapshots: deque[dict[str, Any]] = deque()
        self._jobs: deque[Callable[[], None]] = deque()
        # Records drained while nothing was there to write them (before ci.profile()).
        self._backlog_spans: deque[tuple[Any, ...]] = deque()
        self._backlog_marks: deque[tuple[Any, ...]] = deque()
        self.backlog_max_spans = backlog_max_spans
        self.backlog_max_marks = backlog_max_marks
        self.drops: dict[str, int] = {}
        self.job_errors = 0
        self.last_job_error: str | None = None

    # -- inputs other than the hot path ----------------------------------------------------

    def add_snapshot(self, record: dict[str, Any]) -> None:
        self._snapshots.append(record)

    def add_job(self, fn: Callable[[], None]) -> None:
        self._jobs.append(fn)

    def run_jobs(self) -> None:
        while self._jobs:
            fn = self._jobs.popleft()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a failed snapshot job must not stop flushing
                self.job_errors += 1
                self.last_job_error = f"{type(exc).__name__}: {exc}"

    def count_drop(self, reason: str, spans: int = 0, marks: int = 0) -> None:
        if spans:
            self.drops[f"spans_{reason}"] = self.drops.get(f"spans_{reason}", 0) + spans
        if marks:
            self.drops[f"marks_{reason}"] = self.drops.get(f"marks_{reason}", 0) + marks

    # -- draining --------------------------------------------------------------------------

    def _drain(self, budget: GilBudget) -> tuple[list[list[tuple[Any, ...]]], list[tuple[Any, ...]]]:
        spans, marks = self.rec.buffers.drain(budget.tick)
        self.trace.add(spans, marks)
        return spans, marks

    def drain_to_trace(self) -> None:
        """Without a profiler: feed ``ci.trace()`` and keep the records for a later session."""
        with self.lock:
            budget = GilBudget()
            span_lists, marks = self._drain(budget)
            for sp in chain.from_iterable(span_lists):
                if len(self._backlog_spans) >= self.backlog_max_spans:
                    self._backlog_spans.popleft()
                    self.count_drop("buffer_full", spans=1)
                self._backlog_spans.append(sp)
            for mark in marks:
                if len(self._backlog_marks) >= self.backlog_max_marks:
                    self._backlog_marks.popleft()
                    self.count_drop("buffer_full", marks=1)
                self._backlog_marks.append(mark)
            self.trace.release_evicted(budget)

    def collect(self, session_id: str | None, resource: dict[str, Any]) -> list[Batch]:
        """Everything recorded since the last call, as batches ready for the sinks."""
        with self.lock:
            self.run_jobs()
            budget = GilBudget()
            span_lists, marks = self._drain(budget)
            if self._backlog_spans:
                span_lists[:0] = _chunked(list(self._backlog_spans))
                self._backlog_spans.clear()
            if self._backlog_marks:
                marks = list(self._backlog_marks) + marks
                self._backlog_marks.clear()
            root = self.rec.root
            root_key = (root.id, root.id_hex) if root is not None else (0, None)
            closed = sum(map(len, span_lists))
            opened = []
            for span in list(self.rec.open.values()):
                if not span.written_open and span.end_ns is None:
                    span.written_open = True
                    opened.append(open_tuple(span))
            if opened:
                span_lists.extend(_chunked(opened))
            mark_ids = list(islice(IDS.ids, len(marks)))
            snaps = []
            while self._snapshots:
                snaps.append(self._snapshots.popleft())
            batches = _split(session_id, resource, span_lists, closed, marks, mark_ids, snaps, root_key)
            self.trace.release_evicted(budget)
            return batches

    def pending(self) -> tuple[int, int]:
        return len(self._backlog_spans), len(self._backlog_marks)

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self._snapshots.clear()
        self._jobs.clear()
        self._backlog_spans.clear()
        self._backlog_marks.clear()


def _chunked(records: list[Any]) -> list[list[Any]]:
    """``records`` as lists of at most ``DRAIN_CHUNK`` (see :mod:`cirron._record.buffer`)."""
    if len(records) <= DRAIN_CHUNK:
        return [records]
    return [records[i : i + DRAIN_CHUNK] for i in range(0, len(records), DRAIN_CHUNK)]


def _split(session_id: str | None, resource: dict[str, Any], span_lists: list[list[tuple[Any, ...]]], closed: int,
           marks: list[tuple[Any, ...]], mark_ids: list[int], snaps: list[dict[str, Any]],
           root: tuple[int, str | None]) -> list[Batch]:
    """One batch, or several when the records exceed a batch's bounds. ``span_lists`` hold the
    ``closed`` closed spans first, then the open ones."""
    span_total = sum(map(len, span_lists))
    if not (span_total or marks or snaps):
        return []
    if span_total <= MAX_SPANS_PER_BATCH and len(marks) <= MAX_MARKS_PER_BATCH:
        return [Batch(session_id, resource, span_lists, marks, mark_ids, snaps, closed, root)]
    groups: list[list[list[tuple[Any, ...]]]] = [[]]
    size = 0
    for rows in span_lists:  # each list holds at most DRAIN_CHUNK spans
        if size + len(rows) > MAX_SPANS_PER_BATCH and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(rows)
        size += len(rows)
    batches = []
    seen = 0
    for i in range(max(len(groups), -(-len(marks) // MAX_MARKS_PER_BATCH))):
        lists = groups[i] if i < len(groups) else []
        n = sum(map(len, lists))
        n_closed = max(0, min(n, closed - seen))
        seen += n
        lo, hi = i * MAX_MARKS_PER_BATCH, (i + 1) * MAX_MARKS_PER_BATCH
        batches.append(Batch(session_id, resource, lists, marks[lo:hi], mark_ids[lo:hi], snaps if i == 0 else [],
                             n_closed, root))
    return batches
