"""Spool batches (spec section 3) and their JSON encoding.

Records are msgspec structs (``gc=False``: a flush of 200,000 spans adds nothing for the cyclic
garbage collector to walk) encoded in chunks, handing the GIL over between chunks, so a
recording thread is never stalled behind a big batch. Sinks that want plain dicts read
``batch.spans`` / ``batch.marks``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from cirron._ids import random_hex
from cirron._schema import SCHEMA_VERSION
from cirron._version import __version__

#: Longest stretch of GIL-holding work between two voluntary hand-overs. A recording thread
#: waits at most about this long for the flush service; a longer slice lets the service keep
#: up with the recorder (after a hand-over the other thread keeps the GIL for up to
#: ``sys.getswitchinterval()``, 5 ms by default).
YIELD_AFTER_NS = 2_500_000
#: Upper bound of span records in one batch file; a bigger flush writes several files.
MAX_SPANS_PER_BATCH = 50_000
MAX_MARKS_PER_BATCH = 100_000
#: Records freed per slice when a big list of them is let go (see :func:`release`).
RELEASE_STEP = 4096


class SpanRecord(msgspec.Struct, gc=False):
    id: str
    parent_id: str | None
    name: str
    index: int | None
    start_ns: int
    end_ns: int | None
    cpu_ns: int | None
    gpu_ns: int | None
    memory_peak_bytes: int | None
    thread_id: int
    pid: int
    rank: int
    attrs: dict


class MarkRecord(msgspec.Struct, gc=False):
    id: str
    span_id: str
    name: str
    value: Any
    value_type: str
    kind: str
    ts_ns: int
    thread_id: int
    attrs: dict


_ENCODER = msgspec.json.Encoder()


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
            time.sleep(0)
            self._since = time.thread_time_ns()


def release(records: list[Any], budget: GilBudget) -> None:
    """Empty ``records`` a slice at a time, handing the GIL over in between. Letting a list of
    50,000 records go in one piece frees them all inside one C call, which holds the GIL (and so
    stalls every recording thread) for 5-10 ms."""
    while records:
        del records[-RELEASE_STEP:]
        budget.tick()


def _encode_list(records: list[Any], out: list[bytes]) -> None:
    """Append the JSON array of ``records`` to ``out`` as pieces (no big join holding the GIL)."""
    step = 2048
    budget = GilBudget()
    out.append(b"[")
    first = True
    for i in range(0, len(records), step):
        chunk = _ENCODER.encode(records[i : i + step])
        if len(chunk) > 2:
            if not first:
                out.append(b",")
            out.append(chunk[1:-1])
            first = False
        budget.tick()
    out.append(b"]")


class Batch:
    """One spool batch: the unit every sink receives."""

    def __init__(self, session_id: str | None, resource: dict[str, Any], spans: list[SpanRecord],
                 marks: list[MarkRecord], snapshots: list[dict[str, Any]], closed_spans: int) -> None:
        self.session_id = session_id
        self.resource = resource
        self.span_records = spans
        self.mark_records = marks
        self.snapshots = snapshots
        #: Span records among ``spans`` that are the final (closed) version: counted as written.
        self.closed_spans = closed_spans
        self.created_ns = time.time_ns()
        self.batch_id = random_hex()
        self._spans: list[dict[str, Any]] | None = None
        self._marks: list[dict[str, Any]] | None = None
        #: Set by a sink that holds on to the batch after ``write_sync`` (to retry it later).
        self.kept = False

    @property
    def spans(self) -> list[dict[str, Any]]:
        if self._spans is None:
            self._spans = msgspec.to_builtins(self.span_records)
        return self._spans

    @property
    def marks(self) -> list[dict[str, Any]]:
        if self._marks is None:
            self._marks = msgspec.to_builtins(self.mark_records)
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
        out = [_ENCODER.encode(self.header())[:-1], b',"spans":']
        _encode_list(self.span_records, out)
        out.append(b',"marks":')
        _encode_list(self.mark_records, out)
        out += [b',"snapshots":', _ENCODER.encode(self.snapshots), b"}\n"]
        return out

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    def release(self, budget: GilBudget) -> None:
        """Free the records once every sink is done with them, in slices (see :func:`release`)."""
        for records in (self.span_records, self.mark_records, self._spans, self._marks):
            if records:
                release(records, budget)
