"""Three Parquet files (spans, marks, snapshots) with INT64 ``*_ns`` columns; pyarrow imported lazily."""

from __future__ import annotations

import os
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from cirron._errors import require
from cirron.export._common import atomic_dir, attrs_text
from cirron.spool.reader import safe_dumps
from cirron.spool.sessions import Session

__all__ = ["PARQUET_FILES", "write_parquet"]

PARQUET_FILES = ("spans.parquet", "marks.parquet", "snapshots.parquet")

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


def write_parquet(sessions: Sequence[Session], out_dir: str | os.PathLike[str]) -> int:
    """Write spans/marks/snapshots Parquet files into ``out_dir``; returns the number of spans."""
    pa = require("pyarrow", "Parquet export")
    pc = require("pyarrow.compute", "Parquet export")
    pq = require("pyarrow.parquet", "Parquet export")
    i64, f64, s = pa.int64(), pa.float64(), pa.string()

    spans = [x for sess in sessions for x in sess.spans]
    sess_col: list = []
    for sess in sessions:
        sess_col.extend([sess.id] * len(sess.spans))
    ints = ("index", "start_ns", "end_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank")
    data: dict[str, Any] = {
        "session_id": pa.array(sess_col, s),
        "span_id": pa.array([x.id for x in spans], s),
        "parent_id": pa.array([x.parent_id for x in spans], s),
        "name": pa.array([_str(x.name) for x in spans], s),
    }
    for c in ints:
        data[c] = pa.array(list(map(attrgetter(c), spans)), i64)
    data["duration_ns"] = pc.subtract(data["end_ns"], data["start_ns"])
    data["attrs_json"] = pa.array([attrs_text(x.attrs) for x in spans], s)
    spans_tbl = pa.table({c: data[c] for c in SPAN_COLUMNS})
    n_spans = spans_tbl.num_rows
    del data, spans, sess_col

    marks = [x for sess in sessions for x in sess.marks]
    msess: list = []
    for sess in sessions:
        msess.extend([sess.id] * len(sess.marks))
    values = [x.value for x in marks]
    marks_tbl = pa.table({
        "session_id": pa.array(msess, s),
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
    del marks, msess, values

    stat_keys = ("mean", "std", "min", "max", "norm")
    n: dict[str, list] = {c: [] for c in ("session_id", "snapshot_id", "span_id", "tensor", "role", "dtype", "shape",
                                           "mode", "ts_ns", *stat_keys, "numel", "nan_count", "inf_count",
                                           "stats_json", "blob_uri")}
    for sess in sessions:
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
            for k in stat_keys:
                n[k].append(_float(_decode(st.get(k))))
            for k in ("numel", "nan_count", "inf_count"):
                n[k].append(_int(st.get(k)))
            n["stats_json"].append(safe_dumps(st).decode())
    ntypes = {"ts_ns": i64, "numel": i64, "nan_count": i64, "inf_count": i64, "shape": pa.list_(i64),
              **{k: f64 for k in stat_keys}}
    snaps_tbl = pa.table({c: pa.array(v, ntypes.get(c, s)) for c, v in n.items()})

    with atomic_dir(out_dir, PARQUET_FILES) as tmp:
        pq.write_table(spans_tbl, tmp / "spans.parquet")
        pq.write_table(marks_tbl, tmp / "marks.parquet")
        pq.write_table(snaps_tbl, tmp / "snapshots.parquet")
    return n_spans


def _decode(v: object) -> object:
    from cirron._schema import decode_float

    return decode_float(v)
