"""Spool batches (spec section 3) and their JSON encoding.

A batch keeps the hot path's tuples and encodes them in chunks, handing the GIL over between
chunks, so a recording thread is never stalled behind a big batch: with the compiled encoder
(``_cencode.c``) straight from the tuples, else through msgspec structs (:mod:`cirron._flush.records`).
Sinks that want plain dicts read ``batch.spans`` / ``batch.marks``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from cirron import _native as native
from cirron._ids import random_hex
from cirron._schema import ROOT_SENTINEL, SCHEMA_VERSION
from cirron._version import __version__

if TYPE_CHECKING:
    from cirron._flush.records import MarkOut, SpanOut

#: Longest stretch of GIL-holding work between two voluntary hand-overs. A recording thread
#: waits at most about this long for the flush service; a longer slice lets the service keep
#: up with the recorder (after a hand-over the other thread keeps the GIL for up to
#: ``sys.getswitchinterval()``, 5 ms by default).
YIELD_AFTER_NS = 1_000_000
#: How long a hand-over lasts. ``sleep(0)`` releases the GIL but this thread usually takes it
#: straight back before a waiting thread wakes up; a short real sleep lets the waiter run.
YIELD_FOR_S = 0.00005
#: Upper bound of span records in one batch file; a bigger flush writes several files.
MAX_SPANS_PER_BATCH = 50_000
MAX_MARKS_PER_BATCH = 100_000
#: Records freed per slice when a big list of them is let go (see :func:`release`).
RELEASE_STEP = 4096
#: Records encoded per call between two looks at the GIL budget (about half a millisecond).
ENCODE_STEP = 2048


#: The compiled encoder of span and mark rows, when built (see :mod:`cirron._native`).
_cencode = native.load("cirron._flush._cencode")


class GilBudget:
    """Hand the GIL over once ``YIELD_AFTER_NS`` of this thread's CPU time has gone into work
    since the last time. CPU time, not wall time: a stretch spent waiting for the GIL is not
    work, and counting it would make the service yield again the moment it got the GIL back."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.thread_time_ns()

    def tick(self) -> None:
        now = time.thread_time_ns()
        if now - self._since >= YIELD_AFTER_NS:
            time.sleep(YIELD_FOR_S)
            self._since = time.thread_time_ns()


def release(records: list[Any], budget: GilBudget) -> None:
    """Empty ``records`` a slice at a time, handing the GIL over in between. Letting a list of
    50,000 records go in one piece frees them all inside one C call, which holds the GIL (and so
    stalls every recording thread) for 5-10 ms."""
    while records:
        del records[-RELEASE_STEP:]
        budget.tick()


def release_unshared(lists: list[list[Any]], budget: GilBudget) -> None:
    """Empty ``lists``, :func:`release`-ing each list in it that nothing else refers to. A shared
    one is only let go of (a batch and ``ci.trace()``'s store hold the same drained lists); the
    last of its holders frees it."""
    while lists:
        records = lists.pop()
        if sys.getrefcount(records) <= 2:  # ``records`` and getrefcount's own argument
            release(records, budget)


def _join_pieces(pieces: Iterable[bytes], out: list[bytes]) -> None:
    """Append the JSON array of comma-joined object runs to ``out``, handing the GIL over in
    between (no big join holding it)."""
    budget = GilBudget()
    out.append(b"[")
    first = True
    for piece in pieces:
        if piece:
            if not first:
                out.append(b",")
            out.append(piece)
            first = False
        budget.tick()
    out.append(b"]")


class Batch:
    """One spool batch: the unit every sink receives.

    It holds the records as the hot path made them (span tuples in the lists the drain handed
    out, mark tuples with their thread ids) and turns them into spool JSON, or into dicts for
    the sinks that read ``batch.spans`` / ``batch.marks``, only when asked.
    """

    def __init__(self, session_id: str | None, resource: dict[str, Any], span_lists: list[list[tuple[Any, ...]]],
                 mark_rows: list[tuple[Any, ...]], mark_ids: list[int], snapshots: list[dict[str, Any]],
                 closed_spans: int, root: tuple[int, str | None] = (0, None)) -> None:
        self.session_id = session_id
        self.resource = resource
        #: Span tuples in ``cirron._record.span.CLOSED_FIELDS`` layout, closed ones first.
        self.span_lists: list[list[tuple[Any, ...]]] = span_lists
        self.mark_rows: list[tuple[Any, ...]] = mark_rows
        self.mark_ids: list[int] = mark_ids
        self.snapshots = snapshots
        #: Span records among ``spans`` that are the final (closed) version: counted as written.
        self.closed_spans = closed_spans
        #: The session root's id and hex: a span without a parent hangs under it.
        self.root = root
        self.span_count: int = sum(map(len, span_lists))
        self.mark_count: int = len(mark_rows)
        self.created_ns: int = time.time_ns()
        self.batch_id: str = random_hex()
        self._spans: list[dict[str, Any]] | None = None
        self._marks: list[dict[str, Any]] | None = None
        #: Set by a sink that holds on to the batch after ``write_sync`` (to retry it later).
        self.kept = False

    def span_records(self) -> Iterator[SpanOut]:
        from cirron._flush.records import span_record

        pid, rank = self.resource["pid"], self.resource["rank"]
        root_id, root_hex = self.root
        for rows in self.span_lists:
            for row in rows:
                yield span_record(row, pid, rank, root_id, root_hex)

    def mark_records(self) -> Iterator[MarkOut]:
        from cirron._flush.records import mark_record

        return map(mark_record, self.mark_rows, self.mark_ids)

    @property
    def spans(self) -> list[dict[str, Any]]:
        if self._spans is None:
            import msgspec

            self._spans = msgspec.to_builtins(list(self.span_records()))
        return self._spans

    @property
    def marks(self) -> list[dict[str, Any]]:
        if self._marks is None:
            import msgspec

            self._marks = msgspec.to_builtins(list(self.mark_records()))
        return self._marks

    def header(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "sdk_version": __version__,
            "batch_id": self.batch_id,
            "created_ns": self.created_ns,
            "session_id": self.session_id,
            "resource": self.resource,
        }

    def json_chunks(self) -> list[bytes]:
        """The batch as strict JSON (records are already sanitised: no bare NaN/Infinity), in
        pieces that a writer can hand to ``writelines`` without joining them first."""
        from cirron._flush.records import ENCODER

        out = [ENCODER.encode(self.header())[:-1], b',"spans":']
        _join_pieces(self._span_pieces(), out)
        out.append(b',"marks":')
        _join_pieces(self._mark_pieces(), out)
        out += [b',"snapshots":', ENCODER.encode(self.snapshots), b"}\n"]
        return out

    def _span_pieces(self) -> Iterator[bytes]:
        from cirron._flush.records import encode_records, span_record

        pid, rank = self.resource["pid"], self.resource["rank"]
        root_id, root_hex = self.root

        def in_python(rows: list[tuple[Any, ...]]) -> bytes:
            return encode_records([span_record(row, pid, rank, root_id, root_hex) for row in rows])

        step = ENCODE_STEP if _cencode is not None else ENCODE_STEP // 4
        for rows in self.span_lists:
            for i in range(0, len(rows), step):
                chunk = rows[i : i + step] if len(rows) > step else rows
                if _cencode is None:
                    yield in_python(chunk)
                else:  # the records it cannot write come back through in_python, one at a time
                    yield _cencode.encode_spans(chunk, pid, rank, root_id, root_hex, lambda row: in_python([row]))

    def _mark_pieces(self) -> Iterator[bytes]:
        from cirron._flush.records import encode_records, mark_record

        rows, ids = self.mark_rows, self.mark_ids

        def in_python(rows: list[tuple[Any, ...]], ids: list[int]) -> bytes:
            return encode_records(list(map(mark_record, rows, ids)))

        step = ENCODE_STEP if _cencode is not None else ENCODE_STEP // 4
        for i in range(0, len(rows), step):
            chunk, chunk_ids = rows[i : i + step], ids[i : i + step]
            if _cencode is None:
                yield in_python(chunk, chunk_ids)
            else:
                yield _cencode.encode_marks(chunk, chunk_ids, ROOT_SENTINEL,
                                            lambda row, mark_id: in_python([row], [mark_id]))

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    def release(self, budget: GilBudget) -> None:
        """Let go of the records once every sink is done with them, in slices (see :func:`release`);
        lists that ``ci.trace()`` still shows are only dropped from the batch."""
        span_lists, others = self.span_lists, [self.mark_rows, self.mark_ids, self._spans or [], self._marks or []]
        self.span_lists, self.mark_rows, self.mark_ids, self._spans, self._marks = [], [], [], None, None
        release_unshared(span_lists, budget)
        release_unshared(others, budget)
