"""Spool records as msgspec structs, and their JSON: how a batch is written where the compiled
encoder (``_cencode.c``) is not built or declines a record, and how sinks get plain dicts.

Imported on a batch's first encoding, not by ``import cirron``: msgspec's import is a third of it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cirron._ids import hex_id
from cirron._schema import ROOT_SENTINEL, encode_float, encode_int, scrub_text, strict_json


class SpanOut(msgspec.Struct, gc=False):
    """A span as the flush service writes it (the reader's twin is ``cirron.spool.reader.SpanRecord``)."""

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
    attrs: dict[str, Any]


class MarkOut(msgspec.Struct, gc=False):
    """A mark as the flush service writes it."""

    id: str
    span_id: str
    name: str
    value: Any
    value_type: str
    kind: str
    ts_ns: int
    thread_id: int
    attrs: dict[str, Any]


ENCODER = msgspec.json.Encoder()
_VALUE_TYPES = {float: "float", int: "int", str: "str", bool: "bool"}
_INF = float("inf")


def span_record(row: tuple[Any, ...], pid: int, rank: int, root_id: int, root_hex: str | None) -> SpanOut:
    """The spool record of a closed-layout span tuple (``cirron._record.span.CLOSED_FIELDS``)."""
    sid, parent, name, index, start, end, cpu, gpu, mem, tid, attrs = row
    return SpanOut(hex_id(sid), hex_id(parent) if parent else (root_hex if sid != root_id else None), name,
                      index, start, end, cpu, gpu, mem, tid, pid, rank, strict_json(attrs) if attrs else {})


def mark_record(row: tuple[Any, ...], mark_id: int) -> MarkOut:
    """The spool record of a mark ``(span_id, name, value, kind, ts_ns, attrs, thread_id)``
    (``cirron._record.span.MARK_TUPLE_FIELDS``)."""
    span_id, name, value, kind, ts, attrs, tid = row
    vt = _VALUE_TYPES.get(type(value), "str")
    if vt == "float" and (value != value or value == _INF or value == -_INF):
        value = encode_float(value)
    elif vt == "int":
        value = encode_int(value)
    return MarkOut(hex_id(mark_id), hex_id(span_id) if span_id else ROOT_SENTINEL, name, value, vt, kind, ts,
                      tid, strict_json(attrs) if attrs else {})


def encode_records(records: list[Any]) -> bytes:
    """The JSON objects of ``records`` joined by commas. A string that is not valid UTF-8 (a
    span named from an undecodable file name) is written escaped rather than failing the batch."""
    try:
        encoded = ENCODER.encode(records)
    except UnicodeEncodeError:
        encoded = ENCODER.encode(scrub_text(msgspec.to_builtins(records)))
    return encoded[1:-1]
