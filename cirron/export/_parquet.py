"""Spans, marks and snapshots as Parquet, one file each or hive-partitioned; pyarrow imported lazily.

Columns: the reference's (``*_ns`` as INT64, ``attrs_json`` as text) first, then the analyst
columns of :data:`PARQUET_SCHEMA_VERSION` 2: ``start``/``end`` (spans) and ``ts`` (marks,
snapshots) as UTC timestamps, ``status``/``error`` on spans, the enclosing ``epoch``/``batch``
index on spans and marks, and the session's ``run_id`` (and ``rank`` on marks and snapshots).
Every file carries ``cirron.parquet_schema_version`` and ``cirron.spool_schema_version`` in its
key-value metadata.

Records arrive as chunks (:mod:`cirron.spool.stream`) and are written as they come, so memory
holds one chunk. With ``partition_by`` (``session``, ``rank`` or ``run``) each table is a
directory of ``<column>=<value>/part-<n>.parquet`` files (hive layout: the partition column lives
in the path, not in the files, and holds the session's value; a missing one is
``__HIVE_DEFAULT_PARTITION__``), which DuckDB,
Polars and Spark read as one table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cirron._errors import require
from cirron._schema import SCHEMA_VERSION, SPAN_INT_FIELDS, decode_float
from cirron.export._common import atomic_dir, attrs_text, is_columns
from cirron.spool.reader import safe_dumps
from cirron.spool.sessions import Session

__all__ = ["PARQUET_FILES", "PARQUET_SCHEMA_VERSION", "PARTITION_COLUMNS", "write_parquet"]

PARQUET_FILES = ("spans.parquet", "marks.parquet", "snapshots.parquet")
#: 1: the reference's columns; 2: plus the analyst columns (see the module docstring).
PARQUET_SCHEMA_VERSION = 2
#: ``--partition-by`` value → the column that names each partition.
PARTITION_COLUMNS = {"session": "session_id", "rank": "rank", "run": "run_id"}
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

SPAN_COLUMNS = (
    "session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns",
    "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json",
    "start", "end", "status", "error", "epoch", "batch", "run_id",
)
MARK_COLUMNS = (
    "session_id", "mark_id", "span_id", "name", "value", "value_text", "value_type", "kind", "ts_ns", "thread_id",
    "attrs_json", "ts", "epoch", "batch", "rank", "run_id",
)
_STAT_KEYS = ("mean", "std", "min", "max", "norm")
SNAPSHOT_COLUMNS = ("session_id", "snapshot_id", "span_id", "tensor", "role", "dtype", "shape", "mode", "ts_ns",
                    *_STAT_KEYS, "numel", "nan_count", "inf_count", "stats_json", "blob_uri", "ts", "rank", "run_id")


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


class _Tables:
    """Arrow tables of one chunk, with the types fixed once."""

    def __init__(self) -> None:
        self.pa = require("pyarrow", "Parquet export")
        self.pc = require("pyarrow.compute", "Parquet export")
        pa = self.pa
        self.i64, self.f64, self.s = pa.int64(), pa.float64(), pa.string()
        self.ts = pa.timestamp("ns", tz="UTC")

    def _stamp(self, ns_col: Any) -> Any:
        return self.pc.cast(ns_col, self.ts)

    def spans(self, chunk: Any) -> Any:
        from cirron.spool.stream import span_status

        if is_columns(chunk):
            return self._spans_of_columns(chunk)
        pa, i64, s = self.pa, self.i64, self.s
        spans = chunk.spans
        n = len(spans)
        info = chunk.session
        attrs = [attrs_text(x.attrs) for x in spans]
        status = [span_status(x.end_ns, a) for x, a in zip(spans, attrs)]
        data: dict[str, Any] = {
            "session_id": pa.array([info.id] * n, s),
            "span_id": pa.array([x.id for x in spans], s),
            "parent_id": pa.array([x.parent_id for x in spans], s),
            "name": pa.array([_str(x.name) for x in spans], s),
        }
        for c in SPAN_INT_FIELDS:
            data[c] = pa.array(list(map(attrgetter(c), spans)), i64)
        data["duration_ns"] = self.pc.subtract(data["end_ns"], data["start_ns"])
        data["attrs_json"] = pa.array(attrs, s)
        data["start"] = self._stamp(data["start_ns"])
        data["end"] = self._stamp(data["end_ns"])
        data["status"] = pa.array([st for st, _e in status], s)
        data["error"] = pa.array([e for _st, e in status], s)
        data["epoch"] = pa.array(chunk.span_epoch, i64)
        data["batch"] = pa.array(chunk.span_batch, i64)
        data["run_id"] = pa.array([info.run_id] * n, s)
        return pa.table({c: data[c] for c in SPAN_COLUMNS})

    def marks(self, chunk: Any) -> Any:
        if is_columns(chunk):
            return self._marks_of_columns(chunk)
        pa, i64, f64, s = self.pa, self.i64, self.f64, self.s
        marks = chunk.marks
        n = len(marks)
        info = chunk.session
        values = [x.value for x in marks]
        ts_ns = pa.array([x.ts_ns for x in marks], i64)
        return pa.table({
            "session_id": pa.array([info.id] * n, s),
            "mark_id": pa.array([x.id for x in marks], s),
            "span_id": pa.array([x.span_id for x in marks], s),
            "name": pa.array([_str(x.name) for x in marks], s),
            "value": pa.array([_float(v) for v in values], f64),
            "value_text": pa.array([v if type(v) is str else None for v in values], s),
            "value_type": pa.array([_str(x.value_type) for x in marks], s),
            "kind": pa.array([_str(x.kind) for x in marks], s),
            "ts_ns": ts_ns,
            "thread_id": pa.array([x.thread_id for x in marks], i64),
            "attrs_json": pa.array([attrs_text(x.attrs) for x in marks], s),
            "ts": self._stamp(ts_ns),
            "epoch": pa.array(chunk.mark_epoch, i64),
            "batch": pa.array(chunk.mark_batch, i64),
            "rank": pa.array([info.rank] * n, i64),
            "run_id": pa.array([info.run_id] * n, s),
        })

    # Columns read by cirron.spool.columnar: the same tables, built with Arrow kernels.

    def _index(self, a: Any) -> Any:
        """An int64 column of a numpy index array, null where it is -1."""
        return self.pa.array(a, self.i64, mask=a < 0)

    def _constant(self, value: Any, n: int, typ: Any) -> Any:
        pa = self.pa
        if typ == self.s and type(value) is str:
            return _repeated_text(pa, value, n)
        return pa.repeat(pa.scalar(value, typ), n)

    def _spans_of_columns(self, cols: Any) -> Any:
        pa, pc, s = self.pa, self.pc, self.s
        t = cols.spans
        n = t.num_rows
        info = cols.session
        status, error = span_status_columns(t["end_ns"], t["attrs"])
        data = {
            "session_id": self._constant(info.id, n, s), "span_id": t["id"], "parent_id": t["parent_id"],
            "name": t["name"],
            **{c: t[c] for c in SPAN_INT_FIELDS},
            "duration_ns": pc.subtract(t["end_ns"], t["start_ns"]),
            "attrs_json": t["attrs"], "start": self._stamp(t["start_ns"]), "end": self._stamp(t["end_ns"]),
            "status": status, "error": error, "epoch": self._index(cols.span_epoch),
            "batch": self._index(cols.span_batch), "run_id": self._constant(info.run_id, n, s),
        }
        return pa.table({c: data[c] for c in SPAN_COLUMNS})

    def _marks_of_columns(self, cols: Any) -> Any:
        s, i64 = self.s, self.i64
        t = cols.marks
        n = t.num_rows
        info = cols.session
        return self.pa.table({
            "session_id": self._constant(info.id, n, s), "mark_id": t["id"], "span_id": t["span_id"],
            "name": t["name"], "value": t["value"], "value_text": t["value_text"], "value_type": t["value_type"],
            "kind": t["kind"], "ts_ns": t["ts_ns"], "thread_id": t["thread_id"], "attrs_json": t["attrs"],
            "ts": self._stamp(t["ts_ns"]), "epoch": self._index(cols.mark_epoch), "batch": self._index(cols.mark_batch),
            "rank": self._constant(info.rank, n, i64), "run_id": self._constant(info.run_id, n, s),
        })

    def snapshots(self, chunk: Any) -> Any:
        pa, i64, f64, s = self.pa, self.i64, self.f64, self.s
        info = chunk.session
        n: dict[str, list[Any]] = {c: [] for c in SNAPSHOT_COLUMNS if c != "ts"}
        for x in chunk.snapshots:
            st = x.get("stats") if isinstance(x.get("stats"), dict) else {}
            shape = x.get("shape")
            n["session_id"].append(info.id)
            n["snapshot_id"].append(x["id"])
            n["span_id"].append(_str(x.get("span_id")))
            for c in ("tensor", "role", "dtype", "mode", "blob_uri"):
                n[c].append(_str(x.get(c)))
            n["shape"].append([d for d in shape if type(d) is int] if isinstance(shape, list) else None)
            n["ts_ns"].append(_int(x.get("ts_ns")))
            for k in _STAT_KEYS:
                n[k].append(_float(decode_float(st.get(k))))
            for k in ("numel", "nan_count", "inf_count"):
                n[k].append(_int(st.get(k)))
            n["stats_json"].append(safe_dumps(st).decode())
            n["rank"].append(info.rank)
            n["run_id"].append(info.run_id)
        ntypes = {"ts_ns": i64, "numel": i64, "nan_count": i64, "inf_count": i64, "shape": pa.list_(i64),
                  "rank": i64, **dict.fromkeys(_STAT_KEYS, f64)}
        cols = {c: pa.array(v, ntypes.get(c, s)) for c, v in n.items()}
        cols["ts"] = self._stamp(cols["ts_ns"])
        return pa.table({c: cols[c] for c in SNAPSHOT_COLUMNS})


#: Rows per row group at most (a session read as columns comes whole).
ROW_GROUP_ROWS = 65_536
#: Columns whose values are (nearly) all distinct: a dictionary page would only cost time.
_DISTINCT = frozenset({"span_id", "parent_id", "mark_id", "snapshot_id", "attrs_json", "stats_json", "start_ns",
                       "end_ns", "duration_ns", "cpu_ns", "ts_ns", "start", "end", "ts", "value", "blob_uri"})


def _dictionary_columns(schema: Any) -> list[str]:
    return [n for n in schema.names if n not in _DISTINCT]


def span_status_columns(end_ns: Any, attrs: Any) -> tuple[Any, Any]:
    """The ``status`` and ``error`` columns (:func:`cirron.spool.stream.span_status` per row): only
    the rows whose attrs mention ``"error"`` or ``"interrupted"`` are parsed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from cirron.spool.stream import span_status

    closed = pc.is_valid(end_ns)
    status = pc.if_else(closed, "ok", "open")
    error = pa.nulls(len(end_ns), pa.string())
    maybe = pc.and_(closed, pc.or_(pc.match_substring(attrs, '"error"'), pc.match_substring(attrs, '"interrupted"')))
    rows = np.flatnonzero(pc.fill_null(maybe, False).to_numpy(zero_copy_only=False))
    if rows.size:
        st = np.array(status.to_pylist(), dtype=object)
        err = np.full(len(end_ns), None, dtype=object)
        for i, text in zip(rows.tolist(), attrs.take(pa.array(rows)).to_pylist()):
            st[i], err[i] = span_status(0, text)
        status, error = pa.array(st, pa.string()), pa.array(err, pa.string())
    return status, error


def _repeated_text(pa: Any, value: str, n: int) -> Any:
    """A string array of ``n`` times ``value``, made from its buffers (``pa.repeat`` appends the
    value row by row: ~0.4 us a row, 0.1 s per column of a 250,000-span session)."""
    import numpy as np

    try:
        data = value.encode()
    except UnicodeEncodeError:  # a lone surrogate: pyarrow's own conversion says what it makes of it
        data = None
    if data is None or len(data) * n >= 1 << 31:  # or past int32 offsets
        return pa.repeat(pa.scalar(value, pa.string()), n)
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])


def _metadata() -> dict[bytes, bytes]:
    return {b"cirron.parquet_schema_version": str(PARQUET_SCHEMA_VERSION).encode(),
            b"cirron.spool_schema_version": str(SCHEMA_VERSION).encode()}


def _partition_dir(column: str, value: Any) -> str:
    text = HIVE_NULL if value is None else str(value)
    return f"{column}={quote(text, safe='')}"


def _partition_value(info: Any, partition_by: str | None) -> Any:
    """The session-level value a chunk's rows are partitioned by."""
    return {"session": info.id, "rank": info.rank, "run": info.run_id}[partition_by or ""]


def _as_chunks(items: Iterable[Any]) -> Iterable[Any]:
    """Chunks as they are; a plain :class:`Session` becomes one chunk."""
    from cirron.spool.stream import chunk_of_session

    for item in items:
        out = chunk_of_session(item) if isinstance(item, Session) else item
        del item
        yield out
        del out  # before the next one is read


#: Bytes of tables being written on threads at once, at most: a table that does not fit beside
#: those still being written waits for them, and one bigger than this alone is written on the
#: calling thread. The tables of a session of 25,000 spans (~13 MB) are all written while the
#: next session is read; of a 250,000-span session (spans ~70 MB, marks ~60 MB) the marks are,
#: the spans are written first on the calling thread (with both at once, and the next session's
#: columns, the export peaked past 300 MB).
WRITE_BEHIND_BYTES = 64 << 20


class _TableWrites:
    """Tables written to their files on threads (the Parquet encoding releases the GIL) while the
    caller builds the chunk's next table and reads the next chunk, :data:`WRITE_BEHIND_BYTES` of
    them at most; with one read thread (:func:`cirron.spool.parallel.read_threads`) everything is
    written on the calling thread."""

    def __init__(self) -> None:
        from cirron.spool.parallel import read_threads

        self._threads = min(read_threads(), len(PARQUET_FILES))
        self._pool: Any = None
        self._pending: list[Any] = []
        self._bytes = 0  # of the tables in _pending

    def write(self, writer: Any, table: Any) -> None:
        """``table`` appended to ``writer``'s file: on a thread when it fits beside the tables
        still being written (after those, when it does not), at once when it is too big alone."""
        size = table.nbytes
        if self._threads <= 1 or size > WRITE_BEHIND_BYTES:
            self.wait()
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            return
        if self._bytes + size > WRITE_BEHIND_BYTES:
            self.wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cirron-parquet")
        self._pending.append(self._pool.submit(writer.write_table, table, row_group_size=ROW_GROUP_ROWS))
        self._bytes += size

    def wait(self) -> None:
        """Every table handed over so far is written; raises the first write's error."""
        pending, self._pending, self._bytes = self._pending, [], 0
        errors = [exc for fut in pending if (exc := fut.exception()) is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Wait for the writes still running (their errors are the caller's to raise) and stop the threads."""
        for fut in self._pending:
            fut.exception()
        self._pending, self._bytes = [], 0
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def write_parquet(chunks: Iterable[Any], out_dir: str | os.PathLike[str], partition_by: str | None = None) -> int:
    """Write spans/marks/snapshots into ``out_dir``; returns the number of spans.

    ``chunks`` are :class:`cirron.spool.stream.Chunk` objects (or sessions). Without
    ``partition_by``: ``spans.parquet``, ``marks.parquet``, ``snapshots.parquet``. With it
    (``session``, ``rank`` or ``run``): directories ``spans/``, ``marks/``, ``snapshots/`` in the
    hive layout. The output replaces what was there only once everything is written."""
    pq = require("pyarrow.parquet", "Parquet export")
    if partition_by is not None and partition_by not in PARTITION_COLUMNS:
        raise ValueError(f"partition_by must be one of {', '.join(PARTITION_COLUMNS)}, not {partition_by!r}")
    tables = _Tables()
    column = PARTITION_COLUMNS.get(partition_by or "")
    names = PARQUET_FILES if column is None else tuple(n.removesuffix(".parquet") for n in PARQUET_FILES)
    builders = (tables.spans, tables.marks, tables.snapshots)
    n_spans = 0
    with atomic_dir(out_dir, names) as tmp:
        writers: dict[tuple[str, str], Any] = {}
        # which writer and version wrote each session: "cirron.writers" metadata
        written: dict[str, dict[str, Any]] = {}
        writes = _TableWrites()
        try:
            for chunk in _as_chunks(chunks):
                writes.wait()  # the last chunk's, before this one's tables go to the same files
                n_spans += len(chunk.spans)
                info = chunk.session
                written.setdefault(info.id, {"session_id": info.id, "writer": info.writer,
                                             "sdk_version": info.sdk_version})
                for name, build in zip(names, builders):
                    table = build(chunk)
                    if column is None:
                        key, path = (name, ""), tmp / name
                    else:
                        part = _partition_dir(column, _partition_value(chunk.session, partition_by))
                        key = (name, part)
                        path = tmp / name / part / "part-0.parquet"
                        table = table.drop_columns([column])
                    if not table.num_rows and column is not None:
                        continue
                    w = writers.get(key)
                    if w is None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        w = writers[key] = pq.ParquetWriter(path, table.schema.with_metadata(_metadata()),
                                                            use_dictionary=_dictionary_columns(table.schema))
                    if table.num_rows:
                        writes.write(w, table)
                columns_done = is_columns(chunk)
                del chunk, table  # before the next one is read
                if columns_done:
                    tables.pa.default_memory_pool().release_unused()
            writes.wait()
            # A table nothing was written to still gets an empty file with its columns (partitioned:
            # in the null partition), so readers see zero rows rather than no table.
            empty = _Empty()
            for name, build in zip(names, builders):
                if any(k[0] == name for k in writers):
                    continue
                table = build(empty).replace_schema_metadata(_metadata())
                if column is None:
                    pq.write_table(table, tmp / name)
                else:
                    path = tmp / name / _partition_dir(column, None) / "part-0.parquet"
                    path.parent.mkdir(parents=True)
                    pq.write_table(table.drop_columns([column]), path)
            for w in writers.values():
                w.add_key_value_metadata({"cirron.writers": safe_dumps(list(written.values())).decode()})
        finally:
            writes.close()
            for w in writers.values():
                w.close()
    return n_spans


class _Empty:
    """A chunk with no records (gives each table its columns)."""

    def __init__(self) -> None:
        from cirron.spool.catalog import SessionInfo

        self.session = SessionInfo("", Path(), None, None, None, False, False, 0, 0, 0, ())
        self.spans: list[Any] = []
        self.marks: list[Any] = []
        self.snapshots: list[Any] = []
        self.span_epoch: list[Any] = []
        self.span_batch: list[Any] = []
        self.mark_epoch: list[Any] = []
        self.mark_batch: list[Any] = []
