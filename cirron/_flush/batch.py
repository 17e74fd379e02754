"""Turning drained hot-path records into spool batches (spec section 3).

Runs in a worker thread, never in the user's thread. Long loops hand the GIL over every few
hundred records so a recording thread is never stalled behind a big batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cirron._ids import hex_id, random_hex
from cirron._schema import ROOT_SENTINEL, SCHEMA_VERSION, encode_float, strict_json
from cirron._version import __version__

#: Records encoded between two voluntary GIL hand-overs.
YIELD_EVERY = 512
#: Upper bound of span records in one batch file; a bigger flush writes several files.
MAX_SPANS_PER_BATCH = 50_000
MAX_MARKS_PER_BATCH = 100_000

_VALUE_TYPES = {float: "float", int: "int", str: "str", bool: "bool"}


def yield_gil() -> None:
    time.sleep(0)


@dataclass
class Batch:
    """One spool batch: the unit every sink receives."""

    session_id: str | None
    resource: dict[str, Any]
    spans: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    created_ns: int = field(default_factory=time.time_ns)
    batch_id: str = field(default_factory=random_hex)
    #: Span records among ``spans`` that are the final (closed) version: counted as written.
    closed_spans: int = 0

    def is_empty(self) -> bool:
        return not (self.spans or self.marks or self.snapshots)

    def header(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "sdk_version": __version__,
            "batch_id": self.batch_id,
            "created_ns": self.created_ns,
            "session_id": self.session_id,
            "resource": self.resource,
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.header()
        d.update(spans=self.spans, marks=self.marks, snapshots=self.snapshots)
        return d

    def to_json(self) -> bytes:
        """Strict JSON (the dicts are already sanitised), encoded in chunks so the GIL is shared."""
        head = orjson.dumps(self.header())[:-1]
        parts = [head]
        for key, records in (("spans", self.spans), ("marks", self.marks), ("snapshots", self.snapshots)):
            parts.append(b',"' + key.encode() + b'":[')
            first = True
            for i in range(0, len(records), YIELD_EVERY * 4):
                chunk = orjson.dumps(records[i : i + YIELD_EVERY * 4])
                if len(chunk) > 2:
                    if not first:
                        parts.append(b",")
                    parts.append(chunk[1:-1])
                    first = False
                yield_gil()
            parts.append(b"]")
        parts.append(b"}\n")
        return b"".join(parts)


def span_record(span: Any, pid: int, rank: int, root: Any, closed: bool = True) -> dict[str, Any]:
    """The spec's span record. Spans opened before the session began hang from its root."""
    parent = span.parent
    if parent is not None:
        parent_id = parent.id_hex
    elif root is not None and span is not root:
        parent_id = root.id_hex
    else:
        parent_id = None
    attrs = span.attrs
    return {
        "id": span.id_hex,
        "parent_id": parent_id,
        "name": span.name,
        "index": span.index,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns if closed else None,
        "cpu_ns": span.cpu_ns if closed else None,
        "gpu_ns": span.gpu_ns if closed else None,
        "memory_peak_bytes": span.memory_peak_bytes if closed else None,
        "thread_id": span.thread_id,
        "pid": pid,
        "rank": rank,
        "attrs": strict_json(attrs) if attrs else {},
    }


def mark_record(mark: tuple[Any, ...], thread_id: int) -> dict[str, Any]:
    mid, span, name, value, kind, ts_ns, attrs = mark
    vt = _VALUE_TYPES.get(type(value), "str")
    if vt == "float":
        value = encode_float(value)
    return {
        "id": hex_id(mid),
        "span_id": span.id_hex if span is not None else ROOT_SENTINEL,
        "name": name,
        "value": value,
        "value_type": vt,
        "kind": kind,
        "ts_ns": ts_ns,
        "thread_id": thread_id,
        "attrs": strict_json(attrs) if attrs else {},
    }


def split(records: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(records), size):
        yield records[i : i + size]
