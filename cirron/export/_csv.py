"""Flat spans-only CSV, written as the records come (memory holds one session or one chunk)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any

from cirron import _native as native
from cirron._schema import SPAN_INT_FIELDS
from cirron.export._common import arrow_column, arrow_text, atomic_file, attrs_text, is_columns, join_lines, open_output
from cirron.spool.sessions import Session

__all__ = ["CSV_COLUMNS", "write_csv"]

#: The seed's fifteen columns, then which writer (``cirron`` or ``other``) and version wrote the session.
CSV_COLUMNS = (
    "session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns", "gpu_ns",
    "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json", "writer", "sdk_version",
)


def _cell(v: object) -> object:
    return "" if v is None else v


def write_csv(items: Iterable[Any], path: str | os.PathLike[str]) -> int:
    """Write the spans of ``items`` (sessions, or chunks of :mod:`cirron.spool.stream`) to ``path``
    atomically, as they come; returns rows written."""
    rows = 0
    with atomic_file(path) as tmp, open_output(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for sess in items:
            if is_columns(sess):
                rows += _write_columns(fh, sess)
                del sess  # before the next one is read
                continue
            info = sess if isinstance(sess, Session) else sess.session
            sid, writer, version = info.id, _cell(info.writer), _cell(info.sdk_version)
            out = []
            for s in sess.spans:
                st, en = s.get("start_ns"), s.get("end_ns")
                out.append((
                    sid, s["id"], _cell(s.get("parent_id")), _cell(s.get("name")), _cell(s.get("index")),
                    _cell(st), _cell(en), en - st if (type(st) is int and type(en) is int) else "",
                    _cell(s.get("cpu_ns")), _cell(s.get("gpu_ns")), _cell(s.get("memory_peak_bytes")),
                    _cell(s.get("thread_id")), _cell(s.get("pid")), _cell(s.get("rank")),
                    attrs_text(s.get("attrs")), writer, version,
                ))
            w.writerows(out)
            rows += len(out)
    return rows


#: The compiled row encoder (see :mod:`cirron._native`), when built.
_cjson = native.load("cirron.export._cjson")

#: Rows turned into text at a time from Arrow columns (bounds the text held in memory).
_SLICE_ROWS = 65_536


def _field(col: Any) -> Any:
    """A string column as ``csv.writer`` (QUOTE_MINIMAL) writes it: quoted, with doubled quotes,
    when it holds a comma, a quote or a line break; null as an empty field."""
    import pyarrow.compute as pc

    col = pc.fill_null(col, "")
    need = pc.match_substring_regex(col, '[,"\r\n]')
    if not pc.any(need).as_py():
        return col
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
    return pc.if_else(need, quoted, col)


def _int_field(col: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(col, pa.string()), "")


def _write_columns(fh: Any, cols: Any) -> int:
    """Write the spans of a :class:`cirron.spool.columnar.SessionColumns` as the rows above."""
    import pyarrow as pa

    info = cols.session
    consts = [_field(pa.array([v], pa.string()))[0].as_py() for v in (info.id, info.writer, info.sdk_version)]
    sid, writer, version = consts
    t = cols.spans
    for start in range(0, t.num_rows, _SLICE_ROWS):
        s = t.slice(start, _SLICE_ROWS)
        duration = _durations(s)
        fh.flush()  # the header's text first: the rows go to the bytes underneath
        if _cjson is not None:
            values = {c: duration if c == "duration_ns" else s[c] for c in _COLUMNS}
            spec = [arrow_column(f"{sid},".encode() if c == "id" else b",", v,
                                 "i" if pa.types.is_integer(v.type) else "c") for c, v in values.items()]
            fh.buffer.write(_cjson.encode_rows(spec, s.num_rows, row_end=f",{writer},{version}\r\n".encode(),
                                               row_sep=b"", null=b""))
            continue
        ints = {c: _int_field(s[c]) for c in SPAN_INT_FIELDS}
        fields = [sid, _field(s["id"]), _field(s["parent_id"]), _field(s["name"]), ints["index"], ints["start_ns"],
                  ints["end_ns"], _int_field(duration), ints["cpu_ns"], ints["gpu_ns"],
                  ints["memory_peak_bytes"], ints["thread_id"], ints["pid"], ints["rank"], _field(s["attrs"]),
                  writer, version]
        fh.buffer.write(arrow_text(join_lines(fields, ",", "\r\n")))
    return t.num_rows


def _durations(s: Any) -> Any:
    """``end_ns - start_ns`` of a slice of spans: int64, or exact decimal texts where one overflows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.subtract_checked(s["end_ns"], s["start_ns"])
    except pa.ArrowInvalid:  # past int64: Python's ints, as the per-record writer computes them
        return pa.array([None if a is None or b is None else str(b - a)
                         for a, b in zip(s["start_ns"].to_pylist(), s["end_ns"].to_pylist())], pa.string())


#: The span columns of a row from Arrow columns, between its session id and its writer.
_COLUMNS = ("id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns", "gpu_ns",
            "memory_peak_bytes", "thread_id", "pid", "rank", "attrs")
