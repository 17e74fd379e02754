"""Three Parquet files (spans, marks, snapshots) with INT64 ``*_ns`` columns; pyarrow imported lazily."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cirron._errors import require
from cirron.export._common import atomic_dir, attrs_json, duration_ns
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
    if type(v) is bool:
        return float(v)
    if type(v) in (int, float):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def write_parquet(sessions: Sequence[Session], out_dir: str | os.PathLike[str]) -> int:
    """Write spans/marks/snapshots Parquet files into ``out_dir``; returns the number of spans."""
    pa = require("pyarrow", "Parquet export")
    pq = require("pyarrow.parquet", "Parquet export")
    i64, f64, s = pa.int64(), pa.float64(), pa.string()

    cols: dict[str, list] = {c: [] for c in SPAN_COLUMNS}
    for sess in sessions:
        sp = sess.spans
        n = len(sp)
        cols["session_id"].extend([sess.id] * n)
        cols["span_id"].extend([x["id"] for x in sp])
        cols["parent_id"].extend([_str(x.get("parent_id")) for x in sp])
        cols["name"].extend([_str(x.get("name")) for x in sp])
        for c in ("index", "start_ns", "end_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank"):
            cols[c].extend([_int(x.get(c)) for x in sp])
        cols["duration_ns"].extend([duration_ns(x) for x in sp])
        cols["attrs_json"].extend([attrs_json(x) for x in sp])
    types = {c: i64 for c in ("index", "start_ns", "end_ns", "duration_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes",
                              "thread_id", "pid", "rank")}
    spans_tbl = pa.table({c: pa.array(cols[c], types.get(c, s)) for c in SPAN_COLUMNS})
    n_spans = spans_tbl.num_rows
    del cols

    m: dict[str, list] = {c: [] for c in ("session_id", "mark_id", "span_id", "name", "value", "value_text",
                                           "value_type", "kind", "ts_ns", "thread_id", "attrs_json")}
    for sess in sessions:
        for x in sess.marks:
            v = x.get("value")
            m["session_id"].append(sess.id)
            m["mark_id"].append(x["id"])
            m["span_id"].append(_str(x.get("span_id")))
            m["name"].append(_str(x.get("name")))
            m["value"].append(_float(v))
            m["value_text"].append(v if type(v) is str else None)
            m["value_type"].append(_str(x.get("value_type")))
            m["kind"].append(_str(x.get("kind")))
            m["ts_ns"].append(_int(x.get("ts_ns")))
            m["thread_id"].append(_int(x.get("thread_id")))
            m["attrs_json"].append(attrs_json(x))
    mtypes = {"value": f64, "ts_ns": i64, "thread_id": i64}
    marks_tbl = pa.table({c: pa.array(v, mtypes.get(c, s)) for c, v in m.items()})
    del m

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
