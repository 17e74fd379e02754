"""Drain the hot-path buffers into batches, keep ``ci.trace()``'s view, and keep the books.

The collector is the single consumer of a recorder's buffers. It runs under the flush
service's I/O lock (in a worker thread), or directly from ``ci.trace()`` when no profiler runs.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from cirron._flush.batch import (
    MAX_MARKS_PER_BATCH,
    MAX_SPANS_PER_BATCH,
    YIELD_EVERY,
    Batch,
    mark_record,
    span_record,
    yield_gil,
)
from cirron._record.span import Recorder, Span

#: ``kind="point"`` marks kept per span for ``ci.trace()`` (summary marks are all kept).
TRACE_POINT_MARKS_PER_SPAN = 1024


class TraceStore:
    """The bounded in-memory view ``ci.trace()`` reads: recent spans and their marks."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self.spans: deque[Span] = deque()
        self.open: dict[int, Span] = {}
        self.marks: dict[int | None, tuple[list, deque]] = {}
        self._lock = threading.Lock()

    def add_span(self, span: Span) -> None:
        with self._lock:
            self.open.pop(span.id, None)
            if span.end_ns is None:
                self.open[span.id] = span
                return
            if len(self.spans) >= self.max_spans:
                old = self.spans.popleft()
                self.marks.pop(old.id, None)
            self.spans.append(span)

    def add_mark(self, span: Span | None, mark: tuple[Any, ...]) -> None:
        key = span.id if span is not None else None
        with self._lock:
            entry = self.marks.get(key)
            if entry is None:
                entry = self.marks[key] = ([], deque(maxlen=TRACE_POINT_MARKS_PER_SPAN))
            (entry[0] if mark[4] == "summary" else entry[1]).append(mark)

    def snapshot(self) -> tuple[list[Span], dict[int | None, list]]:
        with self._lock:
            spans = list(self.spans) + list(self.open.values())
            marks = {k: sorted(v[0] + list(v[1]), key=lambda m: m[5]) for k, v in self.marks.items()}
        return spans, marks


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
        self._watch: list[Span] = []
        self._snapshots: deque[dict[str, Any]] = deque()
        self._jobs: deque[Callable[[], None]] = deque()
        # Records drained while nothing was there to write them (before ci.profile()).
        self._backlog_spans: deque[Span] = deque()
        self._backlog_marks: deque[tuple[tuple, int]] = deque()
        self.backlog_max_spans = backlog_max_spans
        self.backlog_max_marks = backlog_max_marks
        self.spans_handed = 0
        self.marks_handed = 0
        self.snapshots_handed = 0
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

    def drain_to_trace(self) -> None:
        """Without a profiler: feed ``ci.trace()`` and keep the records for a later session."""
        with self.lock:
            spans, marks = self.rec.buffers.drain()
            for sp in spans:
                self.trace.add_span(sp)
                if sp.end_ns is None:
                    self._watch.append(sp)
                else:
                    self._keep_backlog_span(sp)
            for sp in self._watch:
                if sp.end_ns is not None:
                    self.trace.add_span(sp)
                    self._keep_backlog_span(sp)
            self._watch = [sp for sp in self._watch if sp.end_ns is None]
            for mark, tb in marks:
                self.trace.add_mark(mark[1], mark)
                if len(self._backlog_marks) >= self.backlog_max_marks:
                    self._backlog_marks.popleft()
                    self.count_drop("buffer_full", marks=1)
                self._backlog_marks.append((mark, tb.thread_id))

    def _keep_backlog_span(self, sp: Span) -> None:
        if len(self._backlog_spans) >= self.backlog_max_spans:
            self._backlog_spans.popleft()
            self.count_drop("buffer_full", spans=1)
        self._backlog_spans.append(sp)

    def collect(self, session_id: str | None, resource: dict[str, Any], final: bool = False) -> list[Batch]:
        """Everything recorded since the last call, as batches ready for the sinks."""
        with self.lock:
            self.run_jobs()
            spans, marks = self.rec.buffers.drain()
            pid, rank, root = resource["pid"], resource["rank"], self.rec.root
            span_out: list[dict[str, Any]] = []
            closed = 0
            n = 0
            candidates = list(self._backlog_spans) + self._watch + spans
            self._backlog_spans.clear()
            watch: list[Span] = []
            for sp in candidates:
                n += 1
                if n % YIELD_EVERY == 0:
                    yield_gil()
                self.trace.add_span(sp)
                if sp.end_ns is not None:
                    span_out.append(span_record(sp, pid, rank, root))
                    closed += 1
                else:
                    if not sp.written_open:
                        span_out.append(span_record(sp, pid, rank, root, closed=False))
                        sp.written_open = True
                    watch.append(sp)
            self._watch = watch
            mark_out = []
            for mark, tid in self._backlog_marks:
                mark_out.append(mark_record(mark, tid))
            self._backlog_marks.clear()
            for mark, tb in marks:
                n += 1
                if n % YIELD_EVERY == 0:
                    yield_gil()
                self.trace.add_mark(mark[1], mark)
                mark_out.append(mark_record(mark, tb.thread_id))
            snaps = []
            while self._snapshots:
                snaps.append(self._snapshots.popleft())
            self.spans_handed += closed
            self.marks_handed += len(mark_out)
            self.snapshots_handed += len(snaps)
            return _split(session_id, resource, span_out, mark_out, snaps)

    def pending(self) -> tuple[int, int]:
        return len(self._backlog_spans) + len(self._watch), len(self._backlog_marks)

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self._watch = []
        self._snapshots.clear()
        self._jobs.clear()
        self._backlog_spans.clear()
        self._backlog_marks.clear()


def _split(session_id: str | None, resource: dict[str, Any], spans: list, marks: list, snaps: list) -> list[Batch]:
    if not (spans or marks or snaps):
        return []
    batches = []
    si = mi = 0
    while True:
        b = Batch(session_id, resource, spans[si : si + MAX_SPANS_PER_BATCH], marks[mi : mi + MAX_MARKS_PER_BATCH],
                  snaps if not batches else [])
        b.closed_spans = sum(1 for s in b.spans if s["end_ns"] is not None)
        batches.append(b)
        si += MAX_SPANS_PER_BATCH
        mi += MAX_MARKS_PER_BATCH
        if si >= len(spans) and mi >= len(marks):
            return batches
