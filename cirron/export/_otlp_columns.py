"""The OTLP/JSON spans of one session encoded from its Arrow columns (:mod:`cirron.spool.columnar`).

The bytes are exactly what :func:`cirron.export._otlp.iter_encoded_spans` gives for the rebuilt
session, but each piece of a span or event is built for a whole column at once (Arrow string
kernels), so no Python object is made per record: ids become JSON strings in one pass, integers
decimal text in one cast, floats go through one ``orjson.dumps`` of the column. What cannot be
built that way goes through the per-record encoder, one value or one row at a time:

* attrs: each distinct raw text is decoded and encoded once (most spans share a handful);
* span ids: BLAKE2b per id (the parent's is looked up by row when the parent is in the session);
* ``request`` spans (their GenAI attributes come from their marks) and non-float mark values.

Spans are encoded :data:`SLICE_SPANS` at a time, each with its events, so the text in memory is
bounded whatever the session's size.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cirron import _native
from cirron._schema import ROOT_SENTINEL, SESSION_SPAN_NAME, decode_mark_value
from cirron.export._common import WriteBehind, arrow_text
from cirron.export._json import _json_strings
from cirron.export._otlp import (
    _LLM_MARKS,
    REQUEST_SPAN_NAME,
    STATUS_CODE_ERROR,
    _encode_span,
    any_value,
    derive_span_id,
    derive_trace_id,
    encode_attributes,
)
from cirron.spool.columnar import SPAN_COLUMNS

__all__ = ["SLICE_SPANS", "CannotEncode", "Prepared", "prepare_spans", "write_prepared", "write_spans"]

#: The compiled encoder (``_cotlp.c``), when built and wanted; else the Arrow-kernel twin below.
_cotlp = _native.load("cirron.export._cotlp")

#: Spans encoded at a time (with their events).
SLICE_SPANS = 8192

_NONFINITE = {"nan": '"NaN"', "inf": '"Infinity"', "-inf": '"-Infinity"'}


class CannotEncode(Exception):
    """The columns hold something only the per-record encoder reads the same way (raised before
    anything is written)."""


def _decode(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CannotEncode(str(exc)) from None


def _distinct(col: pa.ChunkedArray | pa.Array) -> tuple[list[Any], np.ndarray]:
    """The decoded distinct attrs texts of a column and each row's position among them."""
    col = pc.fill_null(col, "{}")
    texts = pc.unique(col)
    which = pc.index_in(col, value_set=texts)
    if isinstance(which, pa.ChunkedArray):
        which = which.combine_chunks()
    return [_decode(t) for t in texts.to_pylist()], which.to_numpy(zero_copy_only=False)


def _table_text(values: list[str | None], which: np.ndarray) -> pa.Array:
    """``values[which[i]]`` for every row (``None`` values stay null)."""
    return pa.array(values, pa.string()).take(pa.array(which))


def _join(*parts: Any) -> pa.Array:
    """Row-wise concatenation; a null part is left out."""
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")


def _piece(*parts: Any) -> pa.Array:
    """Row-wise concatenation, null where any part is null (an optional piece)."""
    return pc.binary_join_element_wise(*parts, "")


def _ints(col: Any) -> pa.Array:
    return pc.cast(col, pa.string())


def _floats(values: np.ndarray) -> pa.Array:
    """Floats as ``orjson`` writes each one, non-finite ones as the strings OTLP/JSON uses."""
    n = len(values)
    if n == 0:
        return pa.array([], pa.string())
    data = np.frombuffer(orjson.dumps(values.tolist()), dtype=np.uint8)[1:-1]
    commas = np.flatnonzero(data == 0x2C)
    if len(commas) != n - 1:  # cannot happen: a float's text has no comma
        raise CannotEncode("float text")
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:-1] = commas - np.arange(n - 1)
    offsets[-1] = len(data) - (n - 1)
    kept = data[data != 0x2C]
    out = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(kept.tobytes())).cast(pa.string())
    bad = ~np.isfinite(values)
    if bad.any():
        text = [_NONFINITE["nan" if v != v else ("inf" if v > 0 else "-inf")] for v in values[bad].tolist()]
        out = pc.replace_with_mask(out, pa.array(bad), pa.array(text, pa.string()))
    return out


def _or_default(col: Any, default: str) -> Any:
    """``col`` where it is a non-empty string, else ``default``."""
    ok = pc.fill_null(pc.not_equal(col, ""), False)
    return pc.if_else(ok, col, default)


def _np(col: Any, fill: int) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return pc.fill_null(col, fill).to_numpy(zero_copy_only=False)


class _Columns:
    """A table's columns by name, each as one array (combined on first use, a slice or a take
    combined on its own: the whole table is never copied)."""

    def __init__(self, table: pa.Table) -> None:
        self._t = table
        self._whole: dict[str, pa.Array] = {}

    def __getitem__(self, name: str) -> pa.Array:
        got = self._whole.get(name)
        if got is None:
            got = self._whole[name] = self._t[name].combine_chunks()
        return got

    def drop(self, keep: tuple[str, ...] = ()) -> None:
        """Let the combined columns go, but ``keep``."""
        self._whole = {k: v for k, v in self._whole.items() if k in keep}

    def slice(self, a: int, n: int) -> _Columns:
        return _Columns(self._t.slice(a, n))

    def take(self, rows: np.ndarray) -> _Columns:
        return _Columns(self._t.take(pa.array(rows)))


def _span_hex(ids: pa.Array) -> pa.Array:
    """:func:`derive_span_id` of every id (the one per-record step: BLAKE2b has no array form)."""
    blake, person = hashlib.blake2b, b"cirron.span"
    raw = ids.cast(pa.binary())
    out = pa.concat_arrays([pa.array([blake(b, digest_size=8, person=person).hexdigest()
                                      for b in raw.slice(a, SLICE_SPANS).to_pylist()], pa.string())
                            for a in range(0, len(raw), SLICE_SPANS)] or [pa.array([], pa.string())])
    zero = pc.equal(out, "0000000000000000")
    return pc.if_else(zero, "0" * 15 + "1", out) if pc.any(zero).as_py() else out  # as derive_span_id


class _SessionText:
    """What every slice of one session shares: derived ids, attrs tables, each mark's span."""

    def __init__(self, cols: Any, open_end_ns: int | None, spans: _Columns | None = None) -> None:
        pa.default_memory_pool().release_unused()  # what reading the columns left in Arrow's pool
        spans = _Columns(cols.spans) if spans is None else spans
        self.m = _Columns(cols.marks)
        self.s = spans
        self.n_spans = cols.spans.num_rows
        self.cols = cols
        self.open_end_ns = open_end_ns
        self.trace_id = derive_trace_id(cols.session.id)
        ids = spans["id"]
        self.ids = ids
        parent_id = spans["parent_id"]
        self.parent_row = np.ascontiguousarray(cols.span_parent, dtype=np.int64)

        decoded, self.span_attr = _distinct(cols.spans["attrs"])
        items: list[str | None] = []
        status: list[str | None] = []
        for a in decoded:
            attrs = a if isinstance(a, Mapping) else None
            enc = orjson.dumps(encode_attributes(attrs))[1:-1].decode()
            items.append(enc + "," if enc else "")
            err = attrs.get("error") if attrs else None
            status.append(None if err is None else ',"status":' + orjson.dumps(
                {"code": STATUS_CODE_ERROR, "message": str(err)}).decode())
        self.span_items, self.span_status = items, status

        names = spans["name"]
        self.names = names
        self.request = pc.fill_null(pc.equal(names, REQUEST_SPAN_NAME), False).to_numpy(zero_copy_only=False)
        root = np.flatnonzero(pc.fill_null(pc.and_(pc.equal(names, SESSION_SPAN_NAME),
                                                   pc.is_null(parent_id)), False).to_numpy(zero_copy_only=False))
        root_row = int(root[0]) if len(root) else -1

        mark_span = cols.marks["span_id"]
        row = getattr(cols, "mark_span", None)  # the reader's lookup, when it kept it
        if row is None or len(row) != cols.marks.num_rows:
            row = pc.fill_null(pc.index_in(mark_span, value_set=ids), -1).to_numpy(zero_copy_only=False)
            pa.default_memory_pool().release_unused()  # the hash table of index_in
        row = np.array(row, dtype=np.int64)
        row[pc.fill_null(pc.equal(mark_span, ROOT_SENTINEL), False).to_numpy(zero_copy_only=False)] = -1
        self.mark_target = np.where(row >= 0, row, root_row)
        del row
        target = self.mark_target
        if len(target) < 2 or bool((target[1:] >= target[:-1]).all()):  # marks already in span order
            self.mark_order = np.arange(len(target), dtype=np.int64)
            self.sorted_target = target
        else:
            self.mark_order = np.argsort(target, kind="stable")
            self.sorted_target = target[self.mark_order]
        decoded_m, self.mark_attr = _distinct(cols.marks["attrs"])
        extra: list[str | None] = []
        for a in decoded_m:
            kept = [e for e in encode_attributes(a) if e["key"] not in ("value", "kind")] if a else []
            extra.append("".join("," + orjson.dumps(e).decode() for e in kept))
        self.mark_extra = extra
        self.mark_values = cols.mark_values
        self.requests = np.flatnonzero(self.request)

    @functools.cached_property
    def hex(self) -> pa.Array:
        """:func:`derive_span_id` of every span (the twin's; the C encoder hashes on its own)."""
        return _span_hex(self.ids)

    @functools.cached_property
    def parent_hex(self) -> pa.Array:
        """:func:`derive_span_id` of every span's parent (null: none)."""
        ids, parent_row, parent_id = self.ids, self.parent_row, self.s["parent_id"]
        has_parent = pc.fill_null(pc.not_equal(parent_id, ""), False).to_numpy(zero_copy_only=False)
        parent_hex = self.hex.take(pa.array(np.maximum(parent_row, 0))) if len(ids) else self.hex
        away = np.flatnonzero(has_parent & (parent_row < 0))  # parent not among the session's spans
        if len(away):
            hexes = [derive_span_id(p) for p in parent_id.take(pa.array(away)).to_pylist()]
            mask = np.zeros(len(ids), dtype=bool)
            mask[away] = True
            parent_hex = pc.replace_with_mask(parent_hex, pa.array(mask), pa.array(hexes, pa.string()))
        return pc.if_else(pa.array(has_parent), parent_hex, pa.scalar(None, pa.string()))

    # ------------------------------------------------------------------ events
    def events(self, rows: np.ndarray, before: Any = "", after: Any = "") -> pa.Array:
        """The OTLP/JSON events of marks ``rows`` (in that order), each between ``before`` and
        ``after`` (a string or a column of them)."""
        marks = self.m
        take = pa.array(rows)
        ts = np.maximum(_np(marks["ts_ns"].take(take), 0), 0)
        names = _json_strings(_or_default(marks["name"].take(take), "mark"))
        kinds = _json_strings(pc.fill_null(marks["kind"].take(take), "point"))
        values = self._values(rows)
        extra = _table_text(self.mark_extra, self.mark_attr[rows])
        return _join(before, '{"timeUnixNano":"', _ints(pa.array(ts)), '","name":', names,
                     ',"attributes":[{"key":"value","value":', values,
                     '},{"key":"kind","value":{"stringValue":', kinds, "}}", extra, "]}", after)

    def _values(self, rows: np.ndarray) -> pa.Array:
        marks = self.m
        floats = _np(marks["value"].take(pa.array(rows)), 0).astype(np.float64)
        text = _piece('{"doubleValue":', _floats(floats), "}")
        if self.mark_values is None:
            return text
        given = [self.mark_values[i] for i in rows.tolist()]
        odd = np.fromiter((type(v) is not float for v in given), dtype=bool, count=len(given))
        if not odd.any():
            return text
        types = marks["value_type"].take(pa.array(rows[odd])).to_pylist()
        exact = [orjson.dumps(any_value(decode_mark_value(v, t))).decode()
                 for v, t in zip((v for v, o in zip(given, odd.tolist()) if o), types)]
        return pc.replace_with_mask(text, pa.array(odd), pa.array(exact, pa.string()))

    def grouped_events(self, a: int, b: int) -> pa.Array:
        """Per span ``a:b``: ``,"events":[...]`` (null for a span without marks).

        Each event is built with what comes before it (``,"events":[`` for a span's first, else
        ``,``) and after it (``]`` after a span's last), so a span's text is a run of the events'
        text: the result shares their buffer and only has offsets of its own."""
        lo, hi = np.searchsorted(self.sorted_target, [a, b]).tolist()
        if hi == lo:
            return pa.nulls(b - a, pa.string())
        target = self.sorted_target[lo:hi] - a
        new = np.ones(hi - lo + 1, dtype=bool)  # where a span's run of events starts (or ends)
        new[1:-1] = target[1:] != target[:-1]
        text = self.events(self.mark_order[lo:hi], pc.if_else(pa.array(new[:-1]), ',"events":[', ","),
                           pc.if_else(pa.array(new[1:]), "]", pa.scalar(None, pa.string())))
        if text.type != pa.string() or text.offset:
            text = text.cast(pa.string()).take(pa.array(np.arange(len(text))))
        runs = np.zeros(b - a + 1, dtype=np.int64)
        np.cumsum(np.bincount(target, minlength=b - a), out=runs[1:])
        event_at = np.frombuffer(text.buffers()[1], dtype=np.int32)[:len(text) + 1]
        return pa.StringArray.from_buffers(b - a, pa.py_buffer(event_at[runs]), text.buffers()[2])

    # ------------------------------------------------------------------- spans
    def spans(self, a: int, b: int) -> pa.Array:
        """The OTLP/JSON text of spans ``a:b``, each followed by a comma."""
        s = self.s.slice(a, b - a)
        events = self.grouped_events(a, b)
        start = _np(s["start_ns"], 0)
        end_given = pc.is_valid(s["end_ns"]).to_numpy(zero_copy_only=False)
        end = _np(s["end_ns"], 0)
        if not end_given.all():
            oe = self.open_end_ns
            end = np.where(end_given, end, np.maximum(start, oe) if oe else start)
        attr = self.span_attr[a:b]

        def field(key: str, col: Any) -> pa.Array:
            return _piece(',{"key":"' + key + '","value":{"intValue":"', _ints(col), '"}}')

        text = _join(
            '{"traceId":"', self.trace_id, '","spanId":"', self.hex.slice(a, b - a),
            '","name":', _json_strings(_or_default(self.names.slice(a, b - a), "span")),
            ',"kind":1,"startTimeUnixNano":"', _ints(pa.array(np.maximum(start, 0))),
            '","endTimeUnixNano":"', _ints(pa.array(np.maximum(end, 0))), '","attributes":[',
            _table_text(self.span_items, attr),
            '{"key":"cirron.span.id","value":{"stringValue":', _json_strings(self.ids.slice(a, b - a)), "}}",
            field("cirron.index", s["index"]), field("cirron.cpu_ns", s["cpu_ns"]),
            field("cirron.gpu_ns", s["gpu_ns"]), field("cirron.memory_peak_bytes", s["memory_peak_bytes"]),
            field("thread.id", s["thread_id"]),
            pc.if_else(pa.array(end_given), pa.scalar(None, pa.string()),
                       ',{"key":"cirron.open","value":{"boolValue":true}}'),
            "]", _piece(',"parentSpanId":"', self.parent_hex.slice(a, b - a), '"'),
            events, _table_text(self.span_status, attr), "},")
        lo, hi = np.searchsorted(self.requests, [a, b]).tolist()
        if hi > lo:  # request spans: GenAI attributes from their marks, the per-record way
            rows = self.requests[lo:hi]
            exact = []
            for i, own in zip(rows.tolist(), events.take(pa.array(rows - a)).to_pylist()):
                head, status = self._request_pieces(i)
                exact.append(head + (own or "") + (status or "") + "},")
            mask = np.zeros(b - a, dtype=bool)
            mask[rows - a] = True
            text = pc.replace_with_mask(text, pa.array(mask), pa.array(exact, pa.string()))
        return text

    def _record(self, i: int) -> dict[str, Any]:
        s = self.s
        rec = {c: s[c][i].as_py() for c in SPAN_COLUMNS}
        rec["attrs"] = _decode(s["attrs"][i].as_py() or "{}")
        return rec

    def _request_pieces(self, i: int) -> tuple[str, str | None]:
        lo, hi = np.searchsorted(self.sorted_target, [i, i + 1]).tolist()
        marks = self.m
        raw = []
        for k in self.mark_order[lo:hi].tolist():
            name = marks["name"][k].as_py()
            if name in _LLM_MARKS:
                value = self.mark_values[k] if self.mark_values is not None else marks["value"][k].as_py()
                raw.append({"name": name, "value": value})
        span = _encode_span(self._record(i), self.trace_id, None, self.open_end_ns, raw)
        status = span.pop("status", None)
        head = orjson.dumps(span)[:-1].decode()
        return head, None if status is None else ',"status":' + orjson.dumps(status).decode()

    # ------------------------------------------------------------ placeholders
    def placeholders(self) -> list[bytes]:
        """Spans for marks whose span the session does not hold (a session without root)."""
        rows = np.flatnonzero(self.mark_target < 0)
        if not len(rows):
            return []
        groups: dict[str, list[int]] = {}
        for k, own in zip(rows.tolist(), self.m["span_id"].take(pa.array(rows)).to_pylist()):
            groups.setdefault(own if type(own) is str and own else ROOT_SENTINEL, []).append(k)
        out = []
        ts = np.maximum(_np(self.m["ts_ns"], 0), 0)
        for sid, ks in groups.items():
            t = int(ts[ks].min())
            placeholder = {"id": sid, "name": "(span not written)", "start_ns": t, "end_ns": t,
                           "attrs": {"cirron.placeholder": True}}
            span = _encode_span(placeholder, self.trace_id, None, self.open_end_ns)
            events = bytes(arrow_text(pc.binary_join_element_wise(self.events(np.array(ks, dtype=np.int64)), "", ",")))
            out.append(orjson.dumps(span)[:-1] + b',"events":[' + events[:-1] + b"]}")
        return out


def _arrow(col: pa.Array) -> tuple[Any, ...]:
    """An array's buffers as the C encoder takes them: ``(validity or None, offset, *rest)``."""
    bufs = col.buffers()
    return (bufs[0], col.offset, *bufs[1:])


def _check_compiled(s: _Columns, m: _Columns) -> None:
    """Raise :class:`CannotEncode` unless ``_cotlp.encode`` can read these span and mark columns."""
    for name, typ in (("id", pa.string()), ("name", pa.string()), ("parent_id", pa.string())):
        if s[name].type != typ:
            raise CannotEncode(f"span {name}: {s[name].type}")
    for name in ("name", "kind"):
        if m[name].type != pa.string():
            raise CannotEncode(f"mark {name}: {m[name].type}")
    if s["id"].null_count:
        raise CannotEncode("span without id")


class _CompiledSpans:
    """The span text made by ``_cotlp.encode`` from the session's column buffers; what it takes
    as text (attrs, float texts, request spans, values that are not floats) comes from the
    :class:`_SessionText` it is built on. ``digests``: ``_cotlp.digests`` of the span ids, when
    already computed."""

    def __init__(self, text: _SessionText, digests: bytes | None = None) -> None:
        assert _cotlp is not None
        s, m = text.s, text.m
        _check_compiled(s, m)
        self.text = text
        ids = _arrow(s["id"])
        self.spec = (
            text.trace_id.encode(), _cotlp.digests(ids, text.n_spans) if digests is None else digests, ids,
            _arrow(s["name"]),
            _arrow(s["parent_id"]), text.parent_row, _arrow(s["start_ns"]), _arrow(s["end_ns"]),
            *(_arrow(s[c]) for c in ("index", "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id")),
            np.ascontiguousarray(text.span_attr, dtype=np.int64),
            [(t or "").encode() for t in text.span_items],
            [None if t is None else t.encode() for t in text.span_status],
            text.open_end_ns or None,
            np.ascontiguousarray(text.mark_order, dtype=np.int64), np.ascontiguousarray(text.sorted_target),
            _arrow(m["ts_ns"]), _arrow(m["name"]), _arrow(m["kind"]),
            np.ascontiguousarray(text.mark_attr, dtype=np.int64), [(t or "").encode() for t in text.mark_extra])
        self.values = _np(m["value"], 0).astype(np.float64)
        self.scratch = _cotlp.scratch()

    def write(self, a: int, b: int, write: Any) -> int:
        """Write the OTLP/JSON text of spans ``a:b``, comma-separated, through ``write`` (it gets
        read-only buffers of a few MB, never changed while it holds one); returns how many bytes."""
        text = self.text
        lo, hi = np.searchsorted(text.sorted_target, [a, b]).tolist()
        rows = text.mark_order[lo:hi]
        vals = np.ascontiguousarray(self.values[rows])
        ftext = orjson.dumps(vals, option=orjson.OPT_SERIALIZE_NUMPY)
        value_over = None
        if text.mark_values is not None:
            given = [text.mark_values[i] for i in rows.tolist()]
            odd = [j for j, v in enumerate(given) if type(v) is not float]
            if odd:
                odd_rows = rows[odd]
                types = text.m["value_type"].take(pa.array(odd_rows)).to_pylist()
                value_over = {k: orjson.dumps(any_value(decode_mark_value(given[j], t)))
                              for k, j, t in zip(odd_rows.tolist(), odd, types)}
        request_over = None
        r_lo, r_hi = np.searchsorted(text.requests, [a, b]).tolist()
        if r_hi > r_lo:
            request_over = {}
            for i in text.requests[r_lo:r_hi].tolist():
                head, status = text._request_pieces(i)
                request_over[i] = (head.encode(), None if status is None else status.encode())
        assert _cotlp is not None
        return _cotlp.encode(self.spec, a, b, lo, hi, vals, ftext, value_over, request_over, self.scratch, write)


def write_spans(fh: Any, cols: Any, open_end_ns: int | None) -> int:
    """Write the comma-separated OTLP/JSON spans of one session's columns (what goes between
    ``"spans":[`` and ``]``); returns how many. Raises :class:`CannotEncode` before writing
    anything when the columns need the per-record encoder.

    ``cols`` (a :class:`cirron.spool.columnar.SessionColumns`) may hold any subset of a session's
    spans with the marks that target them (one piece of a big session): ``span_parent`` then
    names rows of that subset, -1 for a parent outside it.

    Two cores at work: the span ids are hashed on a thread (``_cotlp.digests`` runs without the
    GIL) while the session's shared text is prepared, and a write-behind thread hands each block of
    text to ``fh`` while the next one is encoded."""
    return write_prepared(fh, prepare_spans(cols, open_end_ns))


class Prepared:
    """What :func:`write_prepared` writes the spans from: the session's shared text and, where
    the compiled encoder runs, its column buffers."""

    def __init__(self, text: _SessionText, compiled: _CompiledSpans | None) -> None:
        self.text, self.compiled = text, compiled


def prepare_spans(cols: Any, open_end_ns: int | None) -> Prepared:
    """The first half of :func:`write_spans`, which writes nothing (and raises
    :class:`CannotEncode` where it cannot encode): a caller may prepare one piece of a session
    while the one before is written."""
    from concurrent.futures import ThreadPoolExecutor

    spans = _Columns(cols.spans)
    with ThreadPoolExecutor(1, thread_name_prefix="cirron-digests") as pool:
        digests = None
        if _cotlp is not None:
            _check_compiled(spans, _Columns(cols.marks))
            digests = pool.submit(_cotlp.digests, _arrow(spans["id"]), cols.spans.num_rows)
        text = _SessionText(cols, open_end_ns, spans)
        compiled = _CompiledSpans(text, digests.result()) if digests is not None else None
    return Prepared(text, compiled)


def write_prepared(fh: Any, prepared: Prepared) -> int:
    """The second half of :func:`write_spans`: write the spans; returns how many."""
    text, compiled = prepared.text, prepared.compiled
    n = text.n_spans
    written = 0
    # at most one block queued and one being written: with the one being encoded, the scratch's
    # blocks are reused (none mapped afresh)
    with WriteBehind(depth=1) as behind:
        out = behind.file(fh)
        for a in range(0, n, SLICE_SPANS):
            b = min(n, a + SLICE_SPANS)
            if written:
                out.write(b",")
            if compiled is not None:
                compiled.write(a, b, out.write)
            else:
                chunk = text.spans(a, b)
                data = arrow_text(chunk)
                out.write(data[:-1])
                del chunk, data
            written += b - a
            if a % (8 * SLICE_SPANS) == 0:
                pa.default_memory_pool().release_unused()
        for placeholder in text.placeholders():
            out.write(b"," + placeholder if written else placeholder)
            written += 1
    return written
