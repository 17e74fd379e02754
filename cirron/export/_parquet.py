"""Three Parquet files (spans, marks, snapshots) with INT64 ``*_ns`` columns; pyarrow imported lazily."""

from __future__ import annotations

import os
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from cirron._errors import require
from cirron.export._common import atomic_dir, attrs_text
from cirron.spool.reader import safe_dumps
from cirron.spool.sessions import Session

__all__ = ["PARQUET_FILES", "write_parquet"]

PARQUET_FILES = ("spans.parquet", "marks.parquet", "snapshots.parquet")

_SPAN_INTS = ("index", "start_ns", "end_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank")

SPAN_COLUMNS = (
    "session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns",
    "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json",
)


def _int(v: object) -> int | None:
    return v if type(v) is int else None


def _str(v: object) -> str | None:
    return v if type(v) is str else (None if v is None else str(v))


def _float(v: object) -> float | None:
    t = type(v)
    if t is float:
        return v  # type: ignore[return-value]
    if t is bool:
        return float(v)  # type: ignore[arg-type]
    if t is int:
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def _span_table(pa: Any, pc: Any, sess: Session) -> Any:
    i64, s = pa.int64(), pa.string()
    spans = sess.spans
    data: dict[str, Any] = {
        "session_id": pa.array([sess.id] * len(spans), s),
        "span_id": pa.array([x.id for x in spans], s),
        "parent_id": pa.array([x.parent_id for x in spans], s),
        "name": pa.array([_str(x.name) for x in spans], s),
    }
    for c in _SPAN_INTS:
        data[c] = pa.array(list(map(attrgetter(c), spans)), i64)
    data["duration_ns"] = pc.subtract(data["end_ns"], data["start_ns"])
    data["attrs_json"] = pa.array([attrs_text(x.attrs) for x in spans], s)
    return pa.table({c: data[c] for c in SPAN_COLUMNS})


def _mark_table(pa: Any, sess: Session) -> Any:
    i64, f64, s = pa.int64(), pa.float64(), pa.string()
    marks = sess.marks
    values = [x.value for x in marks]
    return pa.table({
        "session_id": pa.array([sess.id] * len(marks), s),
        "mark_id": pa.array([x.id for x in marks], s),
        "span_id": pa.array([x.span_id for x in marks], s),
        "name": pa.array([_str(x.name) for x in marks], s),
        "value": pa.array([_float(v) for v in values], f64),
        "value_text": pa.array([v if type(v) is str else None for v in values], s),
        "value_type": pa.array([_str(x.value_type) for x in marks], s),
        "kind": pa.array([_str(x.kind) for x in marks], s),
        "ts_ns": pa.array([x.ts_ns for x in marks], i64),
        "thread_id": pa.array([x.thread_id for x in marks], i64),
        "attrs_json": pa.array([attrs_text(x.attrs) for x in marks], s),
    })


_STAT_KEYS = ("mean", "std", "min", "max", "norm")
_SNAP_COLUMNS = ("session_id", "snapshot_id", "span_id", "tensor", "role", "dtype", "shape", "mode", "ts_ns",
                 *_STAT_KEYS, "numel", "nan_count", "inf_count", "stats_json", "blob_uri")


def _snapshot_table(pa: Any, sess: Session) -> Any:
    i64, f64, s = pa.int64(), pa.float64(), pa.string()
    n: dict[str, list] = {c: [] for c in _SNAP_COLUMNS}
    for x in sess.snapshots:
        st = x.get("stats") if isinstance(x.get("stats"), dict) else {}
        shape = x.get("shape")
        n["session_id"].append(sess.id)
        n["snapshot_id"].append(x["id"])
        n["span_id"].append(_str(x.get("span_id")))
        for c in ("tensor", "role", "dtype", "mode", "blob_uri"):
            n[c].append(_str(x.get(c)))
        n["shape"].append([d for d in shape if type(d) is int] if isinstance(shape, list) else None)
        n["ts_ns"].append(_int(x.get("ts_ns")))
        for k in _STAT_KEYS:
            n[k].append(_float(_decode(st.get(k))))
        for k in ("numel", "nan_count", "inf_count"):
            n[k].append(_int(st.get(k)))
        n["stats_json"].append(safe_dumps(st).decode())
    ntypes = {"ts_ns": i64, "numel": i64, "nan_count": i64, "inf_count": i64, "shape": pa.list_(i64),
              **dict.fromkeys(_STAT_KEYS, f64)}
    return pa.table({c: pa.array(v, ntypes.get(c, s)) for c, v in n.items()})


def write_parquet(sessions: Iterable[Session], out_dir: str | os.PathLike[str]) -> int:
    """Write spans/marks/snapshots Parquet files into ``out_dir``; returns the number of spans.

    Sessions are converted and written one at a time (a row group or more each), so memory holds
    one session's records and Arrow columns whatever the total."""
    pa = require("pyarrow", "Parquet export")
    pc = require("pyarrow.compute", "Parquet export")
    pq = require("pyarrow.parquet", "Parquet export")
    n_spans = 0
    with atomic_dir(out_dir, PARQUET_FILES) as tmp:
        writers: dict[str, Any] = {}
        try:
            for sess in sessions:
                for name, table in (("spans.parquet", _span_table(pa, pc, sess)),
                                    ("marks.parquet", _mark_table(pa, sess)),
                                    ("snapshots.parquet", _snapshot_table(pa, sess))):
                    w = writers.get(name)
                    if w is None:
                        w = writers[name] = pq.ParquetWriter(tmp / name, table.schema)
                    if table.num_rows:
                        w.write_table(table)
                n_spans += len(sess.spans)
                del sess
            if not writers:  # no session at all: empty files with the right columns
                empty = Session(id="", root=None)
                for name, table in (("spans.parquet", _span_table(pa, pc, empty)),
                                    ("marks.parquet", _mark_table(pa, empty)),
                                    ("snapshots.parquet", _snapshot_table(pa, empty))):
                    pq.write_table(table, tmp / name)
        finally:
            for w in writers.values():
                w.close()
    return n_spans


def _decode(v: object) -> object:
    from cirron._schema import decode_float

    return decode_float(v)
