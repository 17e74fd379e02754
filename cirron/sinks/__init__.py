"""Sinks: where batches go. A sink knows how to write a batch, nothing about timing or batching.

Two flavours, both driven by the flush service:

* a *sync* sink (``is_async = False``: spool, log, stdout, none) is written from the service's
  worker thread right after the buffers are drained, so a written batch is on disk before
  ``flush()`` returns;
* an *async* sink (``is_async = True``: otlp, platform) runs as a task of the service's task
  group and is fed through a bounded stream; when the stream is full the batch is dropped for
  that sink and counted.
"""

from __future__ import annotations

from typing import Any

from cirron._flush.batch import Batch


class Sink:
    """Where the flush service sends each batch; subclasses write it somewhere."""

    name = "sink"
    is_async = False

    def __init__(self) -> None:
        self.batches_written: int = 0
        self.spans_written: int = 0
        self.marks_written: int = 0
        self.snapshots_written: int = 0
        self.errors: int = 0
        self.last_error: str | None = None
        self.dropped: dict[str, int] = {}

    # sync sinks
    def open(self) -> None:
        """Prepare (create directories, take locks). May raise; the service records it."""

    def write_sync(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``open`` took."""

    # async sinks
    async def start(self) -> None:
        """Async counterpart of :meth:`open`, run inside the service's task group."""

    async def write(self, batch: Batch) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Async counterpart of :meth:`close`; must finish within the service's deadline."""

    async def run_background(self) -> None:
        """Work of its own (e.g. retries while a receiver is down), run beside :meth:`write` until
        the sink is closed. Nothing by default."""

    async def settle(self) -> None:
        """Return once what :meth:`write` was given is sent, kept for a retry or counted; a sink
        known to be down returns at once. Awaited by ``flush()``."""

    # both
    def pending(self) -> tuple[int, int]:
        """(spans, marks) held by the sink and not yet written (e.g. kept for a retry)."""
        return 0, 0

    def backlog(self) -> tuple[int, int]:
        """(spans, marks) given to the sink and not taken yet because of a failure (kept for a
        retry); records it holds back by design (marks waiting for their span) are not counted."""
        return self.pending()

    def losses(self) -> int:
        """Records dropped so far, every reason together."""
        return sum(self.dropped.values())

    def flush_problem(self, losses_before: int) -> str | None:
        """Why the flush that started at ``losses_before`` did not get everything into this sink,
        or None when it did."""
        lost = self.losses() - losses_before
        spans, marks = self.backlog()
        why = f" ({self.last_error})" if self.last_error else ""
        if lost:
            return f"{self.name}: {lost} records dropped{why}"
        if spans or marks:
            return f"{self.name}: {spans} spans and {marks} marks not written yet{why}"
        return None

    def count_written(self, batch: Batch) -> None:
        self.batches_written += 1
        self.spans_written += batch.closed_spans
        self.marks_written += batch.mark_count
        self.snapshots_written += len(batch.snapshots)

    def count_dropped(self, reason: str, batch: Batch) -> None:
        self.dropped[f"spans_{reason}"] = self.dropped.get(f"spans_{reason}", 0) + batch.closed_spans
        self.dropped[f"marks_{reason}"] = self.dropped.get(f"marks_{reason}", 0) + batch.mark_count

    def note_error(self, exc: BaseException) -> None:
        self.errors += 1
        msg = str(exc)
        self.last_error = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__

    def state(self) -> dict[str, Any]:
        spans_pending, marks_pending = self.pending()
        return {
            "name": self.name,
            "batches_written": self.batches_written,
            "spans_written": self.spans_written,
            "marks_written": self.marks_written,
            "snapshots_written": self.snapshots_written,
            "spans_pending": spans_pending,
            "marks_pending": marks_pending,
            "dropped": dict(self.dropped),
            "errors": self.errors,
            "last_error": self.last_error,
        }


class NoneSink(Sink):
    """``output="none"``: records stay in memory for ``ci.trace()`` only."""

    name = "none"

    def write_sync(self, batch: Batch) -> None:
        self.count_written(batch)


def make_sink(name: str, owner: Any) -> Sink:
    """Build the sink registered under ``name`` for a :class:`cirron.Cirron` instance."""
    if name == "spool":
        from cirron.sinks.spool import SpoolSink

        return SpoolSink(owner)
    if name in ("log", "stdout"):
        from cirron.sinks.console import ConsoleSink

        return ConsoleSink(name)
    if name == "none":
        return NoneSink()
    if name == "otlp":
        from cirron.sinks.otlp import OtlpSink

        return OtlpSink(owner)
    if name == "platform":
        from cirron.sinks.upload import PlatformSink

        return PlatformSink(owner)
    raise ValueError(f"unknown sink {name!r}")


__all__ = ["Batch", "NoneSink", "Sink", "make_sink"]
