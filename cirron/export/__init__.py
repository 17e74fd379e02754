"""Exporters: spool sessions → open formats. Heavy dependencies (pyarrow, httpx, protobuf) are
imported inside the functions that need them.

=========  ===================================  ==============================
format     writer                               default output
=========  ===================================  ==============================
parquet    :func:`write_parquet` (3 files)      ``./cirron-traces/``
otel/otlp  :func:`write_otlp_json`              ``./cirron-traces.otlp.json``
csv        :func:`write_csv` (streamed)         ``./cirron-traces.csv``
json       :func:`write_json`                   ``./cirron-traces.json``
perfetto   :func:`write_perfetto`               ``./cirron-traces.perfetto.json``
=========  ===================================  ==============================
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from cirron.export._common import (
    STDOUT,
    NoSessionFound,
    NoTracesFound,
    OutputRefused,
    atomic_dir,
    atomic_file,
    check_output,
    open_output,
    write_members,
)
from cirron.export._csv import CSV_COLUMNS, write_csv
from cirron.export._json import write_json
from cirron.export._otlp import (
    build_request,
    encode_resource_spans,
    encode_session,
    iter_encoded_spans,
    resource_spans_shell,
)
from cirron.export._parquet import PARQUET_FILES, write_parquet
from cirron.export._perfetto import to_trace_events, write_perfetto
from cirron.spool.catalog import Catalog, SessionInfo
from cirron.spool.sessions import Session

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_OUTPUTS",
    "FORMATS",
    "PARQUET_FILES",
    "STDOUT",
    "NoSessionFound",
    "NoTracesFound",
    "OutputRefused",
    "atomic_dir",
    "atomic_file",
    "build_request",
    "check_output",
    "encode_resource_spans",
    "encode_session",
    "iter_otlp_requests",
    "otlp_request",
    "to_trace_events",
    "write_csv",
    "write_json",
    "write_otlp_json",
    "write_parquet",
    "write_perfetto",
]

FORMATS = ("parquet", "otel", "otlp", "csv", "json", "perfetto")

DEFAULT_OUTPUTS = {
    "parquet": "cirron-traces",
    "otel": "cirron-traces.otlp.json",
    "otlp": "cirron-traces.otlp.json",
    "csv": "cirron-traces.csv",
    "json": "cirron-traces.json",
    "perfetto": "cirron-traces.perfetto.json",
}


def otlp_request(sessions: Sequence[Session]) -> dict[str, Any]:
    """One OTLP/JSON ``ExportTraceServiceRequest`` with a ``ResourceSpans`` per session."""
    return build_request([encode_session(s) for s in sessions])


#: What one request of :func:`iter_otlp_requests` holds at most by default: the OTel SDK's batch
#: processor sends 512 spans a request, the OTel Collector's OTLP/HTTP receiver refuses bodies past
#: 20 MiB; 2,048 spans or about 4 MiB of OTLP/JSON stays well inside both.
OTLP_REQUEST_SPANS = 2048
OTLP_REQUEST_BYTES = 4 << 20


def iter_otlp_requests(sessions: Iterable[Session | SessionInfo], max_spans: int | None = None,
                       max_bytes: int | None = None) -> Iterator[tuple[bytes, int]]:
    """The OTLP/JSON ``ExportTraceServiceRequest`` bodies of ``sessions``, streamed; yields
    ``(body, spans)``. Each holds one ``ResourceSpans`` (the session's resource) with at most
    ``max_spans`` spans and about ``max_bytes`` bytes of them (defaults :data:`OTLP_REQUEST_SPANS`,
    :data:`OTLP_REQUEST_BYTES`); a single span bigger than that goes alone.

    Items as for :func:`write_otlp_json`; a :class:`SessionInfo` is read span by span
    (:func:`cirron.spool.outline.iter_span_marks`), so memory holds one request, not one session.
    Each span's bytes are those the single-file export writes for it."""
    max_spans = max(1, OTLP_REQUEST_SPANS if max_spans is None else max_spans)
    max_bytes = OTLP_REQUEST_BYTES if max_bytes is None else max_bytes
    for sess in sessions:
        shell = orjson.dumps({"resourceSpans": [resource_spans_shell(sess.id, sess.resource, sess.sdk_version,
                                                                    sess.writer)]})
        head, tail = shell[:-6], shell[-6:]  # ...,"spans":[   |   ]}]}]}
        buf: list[bytes] = []
        size = 0
        for span in _otlp_span_bytes(sess):
            if buf and (len(buf) >= max_spans or size + len(span) > max_bytes):
                yield head + b",".join(buf) + tail, len(buf)
                buf, size = [], 0
            buf.append(span)
            size += len(span) + 1
        if buf:
            yield head + b",".join(buf) + tail, len(buf)


def _otlp_span_bytes(sess: Session | SessionInfo) -> Iterator[bytes]:
    """One session's spans as OTLP/JSON bytes, one at a time."""
    streamed = None if isinstance(sess, Session) else _streamed_spans(sess)
    if streamed is not None:
        from cirron.export._otlp import derive_trace_id, span_json_pieces

        trace_id = derive_trace_id(sess.id)
        for item in streamed:
            yield b"".join(span_json_pieces(item, trace_id, sess.last_ns))
        return
    if not isinstance(sess, Session):  # ids the outline cannot sort: rebuilt whole
        sess = Catalog([sess.spool], lambda _m: None).load(sess)
    for sp in iter_encoded_spans(sess.id, sess.spans, sess.marks, open_end_ns=sess.last_ns):
        yield orjson.dumps(sp)


def write_otlp_json(sessions: Iterable[Session | SessionInfo], path: str | os.PathLike[str]) -> int:
    """Write the OTLP/JSON request to ``path`` atomically, streamed span by span; returns the
    number of spans.

    Each item is a rebuilt :class:`Session`, or the :class:`~cirron.spool.catalog.SessionInfo` of
    a streamable session, which is read into Arrow columns, whole or piece by piece when it is big
    (:mod:`cirron.export._otlp_pieces`), or else from its batch files span by span
    (:func:`cirron.spool.outline.iter_span_marks`): memory then stays bounded however big it is."""
    n = 0
    with atomic_file(path) as tmp, open_output(tmp) as fh:
        fh.write(b'{"resourceSpans":[')
        for i, sess in enumerate(sessions):
            if i:
                fh.write(b",")
            shell = orjson.dumps(resource_spans_shell(sess.id, sess.resource, sess.sdk_version, sess.writer))
            head, tail = shell[:-4], shell[-4:]  # ...,"spans":[   |   ]}]}
            fh.write(head)
            fast = None if isinstance(sess, Session) else _columns_spans(fh, sess)
            if fast is None and not isinstance(sess, Session):
                fast = _piece_spans(fh, sess)
            streamed = None if isinstance(sess, Session) or fast is not None else _streamed_spans(sess)
            if fast is not None:
                n += fast
            elif streamed is not None:
                n += _write_streamed_spans(fh, sess.id, sess.last_ns, streamed)
            else:
                if not isinstance(sess, Session):  # ids the outline cannot sort: rebuilt whole
                    sess = Catalog([sess.spool], lambda _m: None).load(sess)
                spans = iter_encoded_spans(sess.id, sess.spans, sess.marks, open_end_ns=sess.last_ns)
                n += write_members(fh, (orjson.dumps(sp) for sp in spans))
            fh.write(tail)
        fh.write(b"]}")
    return n


def _columns_spans(fh: Any, info: SessionInfo) -> int | None:
    """Write the spans of a session :func:`cirron.spool.columnar.read_columns` can hold, encoded
    from its columns; ``None`` (nothing written) when it cannot."""
    from cirron.spool.columnar import can_read, read_columns

    cols = read_columns(info) if can_read(info) else None
    if cols is None:
        return None
    from cirron.export._otlp_columns import CannotEncode, write_spans

    try:
        return write_spans(fh, cols, info.last_ns)
    except CannotEncode:
        return None


def _piece_spans(fh: Any, info: SessionInfo) -> int | None:
    """Write the spans of a streamable session too big for :func:`_columns_spans`, encoded from
    its columns piece by piece (:mod:`cirron.export._otlp_pieces`); ``None`` (nothing written)
    when it cannot."""
    from cirron.spool.columnar import can_read

    if not info.streamable or can_read(info):
        return None
    from cirron.export._otlp_pieces import write_spans_in_pieces

    return write_spans_in_pieces(fh, info, info.last_ns)


def _streamed_spans(info: SessionInfo) -> Iterator[Any] | None:
    from cirron.export._otlp import event_bytes, is_genai_mark
    from cirron.spool.outline import iter_span_marks

    return iter_span_marks(info, event_bytes, is_genai_mark)


def _write_streamed_spans(fh: Any, session_id: str, open_end_ns: int | None, items: Iterator[Any]) -> int:
    from cirron.export._otlp import derive_trace_id, span_json_pieces

    trace_id = derive_trace_id(session_id)
    n = 0
    for item in items:
        if n:
            fh.write(b",")
        for piece in span_json_pieces(item, trace_id, open_end_ns):
            fh.write(piece)
        n += 1
    return n
