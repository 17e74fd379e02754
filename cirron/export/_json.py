"""Merged, deduped JSON in the shape of one spool batch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import orjson

from cirron import _native as native
from cirron._schema import MARK_FIELDS, SCHEMA_VERSION, SNAPSHOT_FIELDS, SPAN_FIELDS
from cirron._version import __version__
from cirron.export._common import (
    WriteBehind,
    append_file,
    arrow_column,
    arrow_text,
    atomic_file,
    is_columns,
    json_scalar,
    open_output,
    write_members,
)
from cirron.spool.reader import _limit_depth

__all__ = ["write_json"]

#: The compiled encoder of rows from Arrow columns (see :mod:`cirron._native`), when built.
_cjson = native.load("cirron.export._cjson")


def _clean(rec: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: rec.get(f) for f in fields}


def _dumps(rec: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(rec)
    except (TypeError, orjson.JSONEncodeError):  # nested too deep for the encoder
        for k in ("attrs", "stats"):
            if isinstance(rec.get(k), (dict, list)):
                rec[k] = _limit_depth(rec[k], 128)
        return orjson.dumps(rec, default=str)


def write_json(items: Iterable[Any], path: str | os.PathLike[str]) -> int:
    """Write the merged batch to ``path`` atomically as the records come; returns the number of spans.

    ``items`` are sessions or chunks (:mod:`cirron.spool.stream`); spans are in start order within
    each. Spans go straight to the file; marks and snapshots wait in two unlinked temporary files
    beside it until everything is read, so memory holds one session or chunk whatever the total."""

    head = orjson.dumps({"schema_version": SCHEMA_VERSION, "sdk_version": __version__})[:-1]
    n = m = k = 0
    parent = os.path.dirname(os.path.abspath(path))
    with atomic_file(path) as tmp, open_output(tmp) as out, \
            tempfile.TemporaryFile(dir=parent) as marks_out, tempfile.TemporaryFile(dir=parent) as snaps_out:
        out.write(head + b',"spans":[')
        # which writer and version wrote each session: "sessions", after the records
        writers: dict[str, dict[str, Any]] = {}
        with WriteBehind() as behind:
            fh, marks_fh, snaps_fh = behind.file(out), behind.file(marks_out), behind.file(snaps_out)
            for s in items:
                info = getattr(s, "session", s)  # a chunk's session summary, or the session itself
                writers.setdefault(info.id, {"session_id": info.id, "writer": info.writer,
                                             "sdk_version": info.sdk_version})
                if is_columns(s):
                    n += _write_texts(fh, n, _span_texts(s))
                    m += _write_texts(marks_fh, m, _mark_texts(s))
                    k += write_members(snaps_fh, (_dumps(_clean(x, SNAPSHOT_FIELDS)) for x in s.snapshots), k)
                    del s  # before the next one is read
                    continue
                spans = sorted(s.spans, key=lambda r: (r.get("start_ns") or 0))
                n += write_members(fh, (_dumps(_clean(x, SPAN_FIELDS)) for x in spans), n)
                m += write_members(marks_fh, (_dumps(_mark(x)) for x in s.marks), m)
                k += write_members(snaps_fh, (_dumps(_clean(x, SNAPSHOT_FIELDS)) for x in s.snapshots), k)
        for label, side in ((b'],"marks":[', marks_out), (b'],"snapshots":[', snaps_out)):
            out.write(label)
            append_file(out, side)
        out.write(b'],"sessions":' + orjson.dumps(list(writers.values())) + b"}")
    return n


def _mark(m: Any) -> dict[str, Any]:
    c = _clean(m, MARK_FIELDS)
    c["value"] = json_scalar(c["value"])
    return c


# ---------------------------------------------------------------------------- from Arrow columns
# The records of a cirron.spool.columnar.SessionColumns, encoded into exactly the bytes the
# per-record encoder above writes: row by row from the Arrow buffers by the compiled encoder
# (_cjson.c; what is not per-row work, float texts and re-encoded attrs, is done here first), or
# column by column by pyarrow's string kernels, its pure-Python twin.

#: Rows encoded at a time (bounds the text held in memory).
_SLICE_ROWS = 16_384
#: Raw JSON text of attrs that re-encoding could change (whitespace, escapes, floats, "-0", long
#: integers); those rows go through the per-record encoder, the others are copied as they are.
_NOT_CANONICAL = r'[\s\\]|[0-9][.eE]|-0|[0-9]{16}'
#: Characters a JSON string encoder escapes.
_ESCAPED = '["\\\\\x00-\x1f]'


def _write_texts(fh: Any, already: int, texts: Any) -> int:
    """Continue a JSON array that already has ``already`` members with ``texts`` (pairs of a
    member count and the members' bytes, comma-separated)."""
    n = 0
    for count, text in texts:
        if not count:
            continue
        if already or n:
            fh.write(b",")
        fh.write(text)
        n += count
    return n


def _column_bytes(col: Any) -> Any:
    import numpy as np

    return np.frombuffer(arrow_text(col), dtype=np.uint8)


def _may_need_escapes(col: Any) -> bool:
    """Whether any value of a string column holds a quote, a backslash or a control character (one
    scan of its bytes; the rows are then found one by one)."""
    b = _column_bytes(col)
    return bool(((b < 0x20) | (b == 0x22) | (b == 0x5C)).any())


def _may_change(col: Any) -> bool:
    """Whether any raw attrs text of the column could read differently re-encoded (see
    :data:`_NOT_CANONICAL`; one scan of its bytes, the rows are then found one by one)."""
    import numpy as np

    b = _column_bytes(col)
    if not b.size:
        return False
    if ((b == 0x20) | (b == 0x09) | (b == 0x0A) | (b == 0x0D) | (b == 0x5C)).any():
        return True
    digit = (b >= 0x30) & (b <= 0x39)
    after = b[1:]
    if (digit[:-1] & ((after == 0x2E) | (after == 0x65) | (after == 0x45))).any():
        return True
    if ((b[:-1] == 0x2D) & (after == 0x30)).any():
        return True
    runs = np.concatenate([[0], np.cumsum(digit)])
    return bool(b.size >= 16 and ((runs[16:] - runs[:-16]) == 16).any())


def _json_strings(col: Any) -> Any:
    """A string column as JSON texts (``null`` for null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = pc.binary_join_element_wise('"', col, '"', "")
    if _may_need_escapes(col) and pc.any(need := pc.fill_null(pc.match_substring_regex(col, _ESCAPED), False)).as_py():
        exact = [orjson.dumps(v).decode() for v in col.to_pylist()]
        out = pc.if_else(need, pa.array(exact, pa.string()), out)
    return pc.fill_null(out, "null")


def _json_ints(col: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(col, pa.string()), "null")


def _json_attrs(col: Any) -> Any:
    """Raw attrs texts as the per-record encoder writes the decoded value."""
    import msgspec
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not _may_change(col):
        return col
    need = pc.fill_null(pc.match_substring_regex(col, _NOT_CANONICAL), False)
    rows = np.flatnonzero(need.to_numpy(zero_copy_only=False))
    if not rows.size:
        return col
    texts = col.to_pylist()
    for i in rows.tolist():
        texts[i] = _dumps({"attrs": msgspec.json.decode(texts[i])})[9:-1].decode()
    return pa.array(texts, pa.string())


def _record_texts(fields: list[tuple[str, Any]]) -> tuple[int, memoryview]:
    """The pure-Python twin of :func:`_encoded_rows`: the rows of columns of JSON texts."""
    from cirron.export._common import join_lines

    parts: list[Any] = []
    for i, (name, text) in enumerate(fields):
        parts.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        parts.append(text)
    parts.append("}")
    lines = join_lines(parts, "", ",")
    return len(lines), arrow_text(lines)[:-1]


def _prefixes(fields: tuple[str, ...]) -> list[bytes]:
    return [(b"{" if i == 0 else b",") + orjson.dumps(f) + b":" for i, f in enumerate(fields)]


_SPAN_PREFIXES = _prefixes(SPAN_FIELDS)
_MARK_PREFIXES = _prefixes(MARK_FIELDS)
_STRING_FIELDS = frozenset(("id", "parent_id", "span_id", "name", "value_type", "kind"))


def _encoded_rows(prefixes: list[bytes], fields: tuple[str, ...], s: Any, values: Any = None,
                  order: Any = None) -> tuple[int, bytes]:
    """Rows of the table slice ``s`` (in ``order``, int64 row numbers, if given) as the per-record
    encoder writes them, by the compiled encoder; ``values`` stands for the ``value`` field."""
    spec = []
    for prefix, f in zip(prefixes, fields):
        if f == "value":
            spec.append((prefix, *values))
        elif f == "attrs":
            spec.append(arrow_column(prefix, _json_attrs(s[f].combine_chunks()), "r"))
        else:
            spec.append(arrow_column(prefix, s[f], "s" if f in _STRING_FIELDS else "i"))
    n = s.num_rows if order is None else len(order)
    assert _cjson is not None
    return n, _cjson.encode_rows(spec, n, order)


def _span_texts(cols: Any) -> Any:
    """Spans sorted by start within each batch file, as the chunks of the reference path are."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    t = cols.spans
    start = pc.fill_null(t["start_ns"], 0).to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(t.num_rows), start, t["file"].to_numpy(zero_copy_only=False)))
    for a in range(0, t.num_rows, _SLICE_ROWS):
        # the rows of a slice lie in a few neighbouring files (chunks): take from those alone, not
        # from the whole table (whose chunks a take would concatenate each time)
        rows = order[a: a + _SLICE_ROWS]
        first = int(rows.min())
        s = t.slice(first, int(rows.max()) + 1 - first)
        in_order = len(s) == len(rows) and bool((np.diff(rows) == 1).all())
        if _cjson is not None:
            yield _encoded_rows(_SPAN_PREFIXES, SPAN_FIELDS, s, order=None if in_order else rows - first)
            continue
        if not in_order:
            s = s.take(pa.array(rows - first))
        yield _record_texts([(f, _json_strings(s[f]) if f in ("id", "parent_id", "name") else
                              _json_attrs(s[f]) if f == "attrs" else _json_ints(s[f])) for f in SPAN_FIELDS])


def _mark_values(values: list[Any]) -> Any:
    import numpy as np
    import pyarrow as pa

    if set(map(type, values)) <= {float} and np.isfinite(np.array(values, dtype=np.float64)).all():
        texts = orjson.dumps(values)[1:-1].split(b",") if values else []
        return pa.array(texts, pa.binary()).cast(pa.string())
    return pa.array([_dumps({"value": json_scalar(v)})[9:-1].decode() for v in values], pa.string())


def _compiled_mark_values(cols: Any, a: int, b: int) -> tuple[Any, ...]:
    """The ``value`` texts of marks ``a:b`` for the compiled encoder: finite floats by one orjson
    call over the column (their texts joined by commas), anything else value by value."""
    import numpy as np

    if cols.mark_values is None:
        floats = cols.marks["value"].slice(a, b - a).combine_chunks()
        if not floats.null_count:
            x = floats.to_numpy()
            if np.isfinite(x).all():
                return "j", None, None, orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1], 0
    return "l", None, None, [_dumps({"value": json_scalar(v)})[9:-1] for v in cols.values(a, b)], 0


def _mark_texts(cols: Any) -> Any:
    t = cols.marks
    for a in range(0, t.num_rows, _SLICE_ROWS):
        s = t.slice(a, _SLICE_ROWS)
        if _cjson is not None:
            yield _encoded_rows(_MARK_PREFIXES, MARK_FIELDS, s, _compiled_mark_values(cols, a, a + s.num_rows))
            continue
        values = _mark_values(cols.values(a, a + _SLICE_ROWS))
        yield _record_texts([(f, values if f == "value" else _json_strings(s[f]) if f in (
            "id", "span_id", "name", "value_type", "kind") else _json_attrs(s[f]) if f == "attrs" else _json_ints(s[f]))
            for f in MARK_FIELDS])
