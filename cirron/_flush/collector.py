"""Drain the hot-path buffers into batches, keep ``ci.trace()``'s view, and keep the books.

The collector is the single consumer of a recorder's buffers. It runs under its lock, in the
flush service's worker thread, or directly from ``ci.trace()``/``flush()`` when no profiler runs.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from itertools import chain
from typing import Any

from cirron._flush.batch import (
    MAX_MARKS_PER_BATCH,
    MAX_SPANS_PER_BATCH,
    Batch,
    GilBudget,
    MarkRecord,
    SpanRecord,
    release,
)
from cirron._ids import IDS, hex_id
from cirron._record.span import Recorder, Scope
from cirron._schema import ROOT_SENTINEL, encode_float, strict_json

#: ``kind="point"`` marks kept per span for ``ci.trace()`` (summary marks are all kept).
TRACE_POINT_MARKS_PER_SPAN = 1024

_VALUE_TYPES = {float: "float", int: "int", str: "str", bool: "bool"}
#: Records converted between two looks at the GIL budget.
_CHUNK = 256
_INF = float("inf")


def open_tuple(span: Scope) -> tuple:
    """An open span in the closed-tuple layout, ``end_ns`` None."""
    parent = span.parent
    return (span.id, parent.id if parent is not None else 0, span.name, span.index, span.start_ns, None, None,
            span.gpu_ns, span.memory_peak_bytes, span.thread_id, dict(span.attrs) if span.attrs else None)


class TraceStore:
    """The bounded in-memory view ``ci.trace()`` reads: recent closed spans and their marks.

    Spans are kept as the lists the drains produced (adding a drain costs O(1), not a step per
    span); whole lists fall off the old end once the newer ones hold ``max_spans``, and a read
    trims to exactly the newest ``max_spans``. Marks are kept in one plain list per span,
    compacted to every summary mark plus the newest 1,024 point marks once it grows past twice
    that; marks of spans that left the window are pruned in bulk.
    """

    def __init__(self, max_spans: int, open_spans: dict[int, Any] | None = None) -> None:
        self.max_spans = max_spans
        self._chunks: deque[list[tuple]] = deque()
        self._count = 0
        self.marks: dict[int, list[tuple]] = {}
        #: The recorder's open spans: their marks are kept until the span itself arrives.
        self.open_spans = open_spans if open_spans is not None else {}
        #: Lists that fell out of the window, freed by :meth:`release_evicted` off the lock.
        self._evicted: list[list[tuple]] = []
        self._lock = threading.Lock()

    def add(self, span_lists: list[list[tuple]], marks: list[tuple]) -> None:
        self.add_marks(marks)
        self.add_spans(span_lists)

    def add_spans(self, span_lists: list[list[tuple]]) -> None:
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
        """Free the spans that left the window, in slices (see :func:`~cirron._flush.batch.release`).
        Called once the drain that evicted them has been converted."""
        with self._lock:
            evicted, self._evicted = self._evicted, []
        while evicted:
            release(evicted.pop(), budget)

    def _prune_marks(self) -> None:
        """Drop the marks of spans that left the window or never arrived (dropped when full)."""
        keep = {sp[0] for sp in self._window()}
        open_ids = self.open_spans
        self.marks = {k: v for k, v in self.marks.items() if k in keep or k in open_ids or k == 0}

    def _window(self) -> list[tuple]:
        spans = [sp for chunk in self._chunks for sp in chunk]
        return spans[-self.max_spans :] if len(spans) > self.max_spans else spans

    def add_marks(self, marks: list[tuple]) -> None:
        if not marks:
            return
        with self._lock:
            store = self.marks
            for mark in marks:
                kept = store.get(mark[0])
                if kept is None:
                    store[mark[0]] = [mark]
                    continue
                kept.append(mark)
                if len(kept) > 2 * TRACE_POINT_MARKS_PER_SPAN:
                    store[mark[0]] = _compact(kept)

    def snapshot(self, open_spans: list[Scope]) -> tuple[list[tuple], dict[int, list]]:
        with self._lock:
            spans = self._window() + [open_tuple(s) for s in open_spans]
            ids = {sp[0] for sp in spans}
            marks = {k: _compact(v) for k, v in self.marks.items() if k in ids or k == 0}
        return spans, marks

    def reset_after_fork(self, open_spans: dict[int, Any]) -> None:
        self._lock = threading.Lock()
        self.open_spans = open_spans


def _compact(marks: list[tuple]) -> list[tuple]:
    """Every summary mark and the newest point marks, in time order."""
    points = [m for m in marks if m[3] != "summary"]
    if len(points) <= TRACE_POINT_MARKS_PER_SPAN:
        return marks
    keep = set(map(id, points[-TRACE_POINT_MARKS_PER_SPAN:]))
    return [m for m in marks if m[3] == "summary" or id(m) in keep]


def resource_attributes(rank: int, world_size: int, project: str | None, project_version: str | None) -> dict[str, Any]:
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
        self._backlog_spans: deque[tuple] = deque()
        self._backlog_marks: deque[tuple[tuple, int]] = deque()
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

    def _drain(self) -> tuple[list[list[tuple]], list[tuple[tuple, int]]]:
        spans, marks = self.rec.buffers.drain()
        self.trace.add(spans, [m for m, _ in marks])
        return spans, marks

    def drain_to_trace(self) -> None:
        """Without a profiler: feed ``ci.trace()`` and keep the records for a later session."""
        with self.lock:
            span_lists, marks = self._drain()
            for sp in chain.from_iterable(span_lists):
                if len(self._backlog_spans) >= self.backlog_max_spans:
                    self._backlog_spans.popleft()
                    self.count_drop("buffer_full", spans=1)
                self._backlog_spans.append(sp)
            for mark, tid in marks:
                if len(self._backlog_marks) >= self.backlog_max_marks:
                    self._backlog_marks.popleft()
                    self.count_drop("buffer_full", marks=1)
                self._backlog_marks.append((mark, tid))
            self.trace.release_evicted(GilBudget())

    def collect(self, session_id: str | None, resource: dict[str, Any]) -> list[Batch]:
        """Everything recorded since the last call, as batches ready for the sinks."""
        with self.lock:
            self.run_jobs()
            span_lists, marks = self._drain()
            if self._backlog_spans:
                span_lists.insert(0, list(self._backlog_spans))
                self._backlog_spans.clear()
            if self._backlog_marks:
                marks = list(self._backlog_marks) + marks
                self._backlog_marks.clear()
            pid, rank = resource["pid"], resource["rank"]
            root = self.rec.root
            root_id = root.id if root is not None else 0
            root_hex = root.id_hex if root is not None else None
            hexes: dict[int, str] = {}

            def hx(value: int) -> str:
                h = hexes.get(value)
                if h is None:
                    h = hexes[value] = hex_id(value)
                return h

            out: list[SpanRecord] = []
            budget = GilBudget()
            record, hid = SpanRecord, hex_id
            for spans in span_lists:
                for i in range(0, len(spans), _CHUNK):
                    out += [
                        record(hid(sid), hx(parent) if parent else (root_hex if sid != root_id else None), name,
                               index, start, end, cpu, gpu, mem, tid, pid, rank, strict_json(attrs) if attrs else {})
                        for sid, parent, name, index, start, end, cpu, gpu, mem, tid, attrs in spans[i : i + _CHUNK]
                    ]
                    budget.tick()
            closed = len(out)
            for span in list(self.rec.open.values()):
                if not span.written_open and span.end_ns is None:
                    span.written_open = True
                    t = open_tuple(span)
                    parent_hex = hx(t[1]) if t[1] else (root_hex if t[0] != root_id else None)
                    out.append(SpanRecord(hx(t[0]), parent_hex, t[2], t[3], t[4], None, None, None, None, t[9], pid,
                                          rank, strict_json(t[10]) if t[10] else {}))
            mark_out: list[MarkRecord] = []
            ids = IDS.ids
            for n, ((span_id, name, value, kind, ts, attrs), tid) in enumerate(marks, 1):
                if n % _CHUNK == 0:
                    budget.tick()
                vt = _VALUE_TYPES.get(type(value), "str")
                if vt == "float" and (value != value or value == _INF or value == -_INF):
                    value = encode_float(value)
                mark_out.append(MarkRecord(hex_id(next(ids)), hx(span_id) if span_id else ROOT_SENTINEL,
                                           name, value, vt, kind, ts, tid, strict_json(attrs) if attrs else {}))
            snaps = []
            while self._snapshots:
                snaps.append(self._snapshots.popleft())
            batches = _split(session_id, resource, out, closed, mark_out, snaps)
            release(marks, budget)
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


def _split(session_id: str | None, resource: dict[str, Any], spans: list[SpanRecord], closed: int,
           marks: list[MarkRecord], snaps: list[dict[str, Any]]) -> list[Batch]:
    if not (spans or marks or snaps):
        return []
    if len(spans) <= MAX_SPANS_PER_BATCH and len(marks) <= MAX_MARKS_PER_BATCH:
        return [Batch(session_id, resource, spans, marks, snaps, closed)]
    batches = []
    si = mi = 0
    while True:
        chunk = spans[si : si + MAX_SPANS_PER_BATCH]
        n_closed = max(0, min(len(chunk), closed - si))
        batches.append(Batch(session_id, resource, chunk, marks[mi : mi + MAX_MARKS_PER_BATCH],
                             snaps if not batches else [], n_closed))
        si += MAX_SPANS_PER_BATCH
        mi += MAX_MARKS_PER_BATCH
        if si >= len(spans) and mi >= len(marks):
            return batches
