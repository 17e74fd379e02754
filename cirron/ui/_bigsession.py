"""The views of a session too big for the columnar reader, built piece by piece in bounded memory.

:class:`cirron.ui.data.SpoolData` reads a session whole with the columnar reader when it can
(:func:`cirron.spool.columnar.can_read`). A bigger session whose batch files hold nothing else
(:attr:`~cirron.spool.catalog.SessionInfo.streamable`) is read here instead, by the piece-wise
reader of the exports (:func:`cirron.spool.pieces.iter_pieces`: the same winning records, in
the same order, a few batch files at a time), into a :class:`BigSessionData`: the same views,
answers and API as :class:`~cirron.ui.data.SessionData`, from less memory:

* while the pieces are read, what the views need of each record is appended to files in a
  temporary directory (nothing of it is held meanwhile, beside the reader's own plan);
* then the per-span arrays of the timeline are loaded and ordered: start and end (int64), depth
  (int16), name code, parent row, index, enclosing epoch and row in the details file (int32), open
  flag: about 37 bytes a span; per point mark its time, value and series: 20 bytes. Each mark
  series is taken from the time-ordered ticks when asked for instead of being held twice;
* what is shown for a few spans at a time (id, cpu/gpu time, memory, attrs) stays on disk, in an
  Arrow IPC file that is memory-mapped and read by row on hover;
* summary marks and snapshots (few) are kept as read.

The temporary directory is removed by :meth:`BigSessionData.close` (the session leaves the
viewer's cache, or the server stops) and, failing that, when the object is collected.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._format import REQUEST_SPAN
from cirron._memory import trim
from cirron.spool.columnar import SessionColumns
from cirron.ui.data import (
    SessionData,
    SessionInfo,
    SessionRecords,
    _by_first_use,
    _decode_attrs,
    _depths,
    _np,
    _num,
    _numbers,
    _place_spans,
)

__all__ = ["BigSessionData", "read_big_session"]

#: The span columns kept on disk and read by row (ids to order ties and to find a span by id).
DETAILS = ("id", "cpu_ns", "gpu_ns", "memory_peak_bytes", "attrs")
_NO_TIME = np.iinfo(np.int64).min
_NO_INDEX32 = np.iinfo(np.int32).min
_PLAIN_ID = "^[0-9a-f]{32}$"


class _Details:
    """The :data:`DETAILS` of the spans, in read order, in an Arrow IPC file read by row: the file
    is mapped only while rows are taken from it, so the pages read do not stay in the process."""

    def __init__(self, path: Path, batch_rows: list[int]) -> None:
        self.path = path
        self.batch_start = np.concatenate([[0], np.cumsum(batch_rows, dtype=np.int64)])

    def take(self, rows: np.ndarray, columns: Iterable[str]) -> dict[str, list[Any]]:
        """Those columns at ``rows`` (positions in read order), as Python values."""
        columns = list(columns)
        out: dict[str, list[Any]] = {c: [None] * len(rows) for c in columns}
        if not len(rows):
            return out
        rows = np.asarray(rows, dtype=np.int64)
        batch = np.searchsorted(self.batch_start, rows, side="right") - 1
        with pa.memory_map(str(self.path)) as source:
            reader = pa.ipc.open_file(source)
            for b in np.unique(batch).tolist():
                at = np.flatnonzero(batch == b)
                local = pa.array(rows[at] - self.batch_start[b])
                rb = reader.get_batch(b)
                for c in columns:
                    values = rb.column(c).take(local).to_pylist()
                    column = out[c]
                    for k, v in zip(at.tolist(), values):
                        column[k] = v
                del rb
        return out


def read_big_session(info: SessionInfo) -> BigSessionData | None:
    """``info``'s views read piece by piece, or ``None`` when the piece-wise reader cannot read
    it exactly (see :func:`cirron.spool.pieces.iter_pieces`)."""
    from cirron.spool.pieces import iter_pieces

    pieces = iter_pieces(info.summary, session_parents=True)
    if pieces is None:
        return None
    tmp = tempfile.TemporaryDirectory(prefix="cirron-ui-")
    try:
        read = _read_pieces(info, pieces, Path(tmp.name))
        pa.default_memory_pool().release_unused()
        trim()
        return BigSessionData(info, read, tmp)
    except BaseException:
        tmp.cleanup()
        raise


class _Columns:
    """Numbers appended piece by piece to one file per name; each loaded whole once, then deleted."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._out: dict[str, Any] = {}
        self._dtype: dict[str, np.dtype[Any]] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        fh = self._out.get(name)
        if fh is None:
            fh = self._out[name] = open(self.dir / f"{name}.bin", "wb")  # noqa: SIM115 - closed in finish()
            self._dtype[name] = values.dtype
        np.ascontiguousarray(values, dtype=self._dtype[name]).tofile(fh)

    def finish(self) -> None:
        for fh in self._out.values():
            fh.close()

    def load(self, name: str, dtype: Any) -> np.ndarray:
        path = self.dir / f"{name}.bin"
        if name not in self._dtype:
            return np.empty(0, dtype=dtype)
        fh = self._out.pop(name)
        fh.close()
        out = np.fromfile(path, dtype=self._dtype.pop(name))
        path.unlink()
        return out


def _rows_of_file(read: _Read, name: str, rows: np.ndarray) -> np.ndarray:
    """Some rows of a column still on disk (mapped while they are read)."""
    mm = np.memmap(read.columns.dir / f"{name}.bin", dtype=np.uint64, mode="r")
    out = np.array(mm[rows])
    del mm
    return out


class _Read:
    """What :func:`_read_pieces` gathered: columns on disk, the names, the few records kept whole."""

    def __init__(self, columns: _Columns, details: Path) -> None:
        self.columns = columns
        self.details = details
        self.span_names: dict[str, int] = {}
        self.mark_names: dict[str, int] = {}
        self.mark_last: int | None = None
        self.summary_name: list[Any] = []
        self.summary_span: list[Any] = []
        self.summary_kind: list[Any] = []
        self.summary_ts: list[Any] = []
        self.summary_value: list[Any] = []
        self.snapshots: list[Any] = []
        #: Rows of each record batch of the details file, in order.
        self.batch_rows: list[int] = []
        #: Whether every span id is 32 lowercase hex digits (their 128-bit keys then sort as they do).
        self.plain_ids = True

    def summary_records(self, started_ns: int | None) -> SessionRecords:
        """The summary marks and snapshots as records for the shared builders (no spans or point marks)."""
        values = self.summary_value
        return SessionRecords(
            started_ns=started_ns, span_id=None, span_parent=np.zeros(0, dtype=np.int64), span_name=None,
            span_index=None, span_start=None, span_end=None, span_cpu=None, span_gpu=None, span_memory=None,
            span_attrs=None, mark_span=pa.array(self.summary_span, pa.string()),
            mark_name=pa.array(self.summary_name, pa.string()), mark_kind=pa.array(self.summary_kind, pa.string()),
            mark_ts=pa.array(self.summary_ts, pa.int64()), mark_number=_numbers(values), mark_values=values,
            snapshots=self.snapshots)


def _codes(strings: Any, numbering: dict[str, int]) -> np.ndarray:
    """Each string's number in ``numbering`` (nulls as ``"None"``), new strings numbered in order."""
    enc = pc.dictionary_encode(pc.fill_null(strings, "None"))
    if hasattr(enc, "combine_chunks"):
        enc = enc.combine_chunks()
    lut = np.array([numbering.setdefault(s, len(numbering)) for s in enc.dictionary.to_pylist()], dtype=np.int32)
    return lut[enc.indices.to_numpy(zero_copy_only=False)] if len(enc) else np.zeros(0, dtype=np.int32)


def _read_pieces(info: SessionInfo, pieces: Iterator[SessionColumns], directory: Path) -> _Read:
    from cirron.spool.pieces import id_keys

    cols = _Columns(directory)
    read = _Read(cols, directory / "details.arrow")
    writer = None
    try:
        for p in pieces:
            s = p.spans
            cols.add("start", _np(s["start_ns"], -1).astype(np.int64))
            cols.add("end", _np(s["end_ns"], -1).astype(np.int64))
            cols.add("index", _np(s["index"], _NO_TIME).astype(np.int64))
            cols.add("parent", p.span_parent.astype(np.int32))
            cols.add("epoch", p.span_epoch)
            cols.add("name", _codes(s["name"], read.span_names))
            ids = s["id"].combine_chunks()
            hi, lo = id_keys(ids)
            cols.add("hi", hi)
            cols.add("lo", lo)
            del hi, lo
            read.plain_ids = read.plain_ids and bool(pc.all(pc.match_substring_regex(ids, _PLAIN_ID)).as_py())
            del ids
            details = s.select(list(DETAILS)).combine_chunks().to_batches()
            if writer is None:
                writer = pa.ipc.new_file(str(read.details), details[0].schema)
            for batch in details:
                writer.write_batch(batch)
                read.batch_rows.append(batch.num_rows)
            del details, s
            _read_marks(p, read)
            read.snapshots.extend(p.snapshots)
            del p
    finally:
        cols.finish()
        if writer is not None:
            writer.close()
    if writer is None:
        with pa.ipc.new_file(str(read.details), pa.schema([(c, pa.string()) for c in DETAILS])):
            pass
    return read


def _read_marks(p: SessionColumns, read: _Read) -> None:
    """One piece's marks: point marks to the columns, summary marks kept as read."""
    m = p.marks
    if not m.num_rows:
        return
    cols = read.columns
    last = pc.max(m["ts_ns"]).as_py()
    if last is not None and (read.mark_last is None or last > read.mark_last):
        read.mark_last = last
    summary = _np(pc.equal(m["kind"], "summary"), False).astype(bool)
    if p.mark_values is None:
        number = _np(m["value"], math.nan)
        numeric = np.ones(m.num_rows, dtype=bool)
    else:  # a NaN that was read as a number is a point; a string is not
        number = _numbers(p.mark_values)
        numeric = np.array([_num(v) is not None for v in p.mark_values], dtype=bool)
    points = pa.array(np.flatnonzero(numeric & ~summary))
    cols.add("m_ts", _np(m["ts_ns"].take(points), _NO_TIME).astype(np.int64))
    cols.add("m_value", np.asarray(number, dtype=np.float64)[points.to_numpy()])
    cols.add("m_name", _codes(m["name"].take(points), read.mark_names))
    rows = np.flatnonzero(summary)
    if rows.size:
        take = pa.array(rows)
        read.summary_name.extend(m["name"].take(take).to_pylist())
        read.summary_span.extend(m["span_id"].take(take).to_pylist())
        read.summary_kind.extend(m["kind"].take(take).to_pylist())
        read.summary_ts.extend(m["ts_ns"].take(take).to_pylist())
        if p.mark_values is None:
            read.summary_value.extend(number[rows].tolist())
        else:
            read.summary_value.extend(p.mark_values[i] for i in rows.tolist())


class _SeriesByName(Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """The point-mark series of :attr:`SessionData.mark_series`, taken from the time-ordered ticks
    on access (each series in time order, write order among equal times, as the whole read gives)."""

    def __init__(self, data: SessionData) -> None:
        self._data = data

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        d = self._data
        try:
            code = d.mark_tick_names.index(name)
        except ValueError:
            raise KeyError(name) from None
        mask = d.mark_tick_name == code
        return d.mark_ts[mask], d.mark_tick_value[mask]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data.mark_tick_names)

    def __len__(self) -> int:
        return len(self._data.mark_tick_names)


class _OnDisk:
    """An array attribute read from the views' temporary directory: each access maps the file
    anew, so the pages a request reads leave the process with the request (a mapping kept open
    would keep them all in its resident memory). Assigned values are held in memory until the
    views put the array on disk (``_on_disk`` names it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        dtype = obj._on_disk.get(self.name)
        if dtype is None:
            return obj.__dict__[self.name]
        path = Path(obj._tmp.name) / f"{self.name}.bin"
        if not path.stat().st_size:
            return np.empty(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


class BigSessionData(SessionData):
    """:class:`SessionData` built from the piece-wise read (see the module docstring)."""

    #: While the views are built: the decoded attrs of the request spans summary marks are on.
    _attrs_ahead: dict[int, Any] | None = None
    cached_alone = True
    mark_ts = _OnDisk()  # type: ignore[assignment]
    mark_tick_name = _OnDisk()  # type: ignore[assignment]
    mark_tick_value = _OnDisk()  # type: ignore[assignment]

    def __init__(self, info: SessionInfo, read: _Read, tmp: tempfile.TemporaryDirectory[str]) -> None:
        self.info = info
        self._tmp = tmp
        #: Arrays kept on disk (their dtype by name), read through :class:`_OnDisk`.
        self._on_disk: dict[str, Any] = {}
        self._span_details = _Details(read.details, read.batch_rows)
        self._build_big_spans(read)
        self._depth_index()  # now, while less is in memory than after the marks
        trim()
        self._build_steps()
        del self._epoch  # only the steps' epochs are shown
        trim()
        summary = read.summary_records(info.started_ns)
        self._read_attrs_ahead(read.summary_span)
        SessionData._build_marks(self, summary)  # the summary table (point marks: below)
        self._build_requests()
        self._build_snapshots(summary)
        del self._id_rows, summary
        self._attrs_ahead = None
        trim()
        self._build_point_marks(read)
        trim()

    def close(self) -> None:
        """Remove the temporary files (the hover details stay readable while this object lives)."""
        self._tmp.cleanup()

    # ---------------------------------------------------------------- spans

    def _build_big_spans(self, read: _Read) -> None:
        cols = read.columns
        parent = cols.load("parent", np.int32)
        depth = _depths(parent).astype(np.int16)
        starts, ends = cols.load("start", np.int64), cols.load("end", np.int64)
        t0, is_open = _place_spans(starts, ends, self.info.started_ns, read.mark_last)
        self.t0_ns = t0
        cols.add("end", ends)  # back on disk while the spans are ordered
        cols.add("open", is_open)
        cols.finish()
        del ends, is_open
        order = self._order(starts, depth, read)
        n = order.size
        self.start = starts[order]
        del starts
        self.start -= t0
        self.end = cols.load("end", np.int64)[order]
        self.end -= t0
        self.open = cols.load("open", np.bool_)[order]
        self.depth = depth[order]
        del depth
        codes = cols.load("name", np.int32)[order]
        by_first, renumber = _by_first_use(codes, len(read.span_names))
        names = list(read.span_names)
        self.names = [names[c] for c in by_first.tolist()]
        self.name = renumber[codes]
        del codes
        new_row = np.empty(n, dtype=np.int32)
        new_row[order] = np.arange(n, dtype=np.int32)
        p = parent[order]
        del parent
        self.parent = np.where(p >= 0, new_row[np.maximum(p, 0)], -1).astype(np.int32)
        del p
        index = cols.load("index", np.int64)[order]
        known = index != _NO_TIME
        fits = not known.any() or (index[known].min() > _NO_INDEX32 and index[known].max() <= np.iinfo(np.int32).max)
        self._index_np = np.where(known, index, _NO_INDEX32).astype(np.int32) if fits else index
        self._no_index = _NO_INDEX32 if fits else _NO_TIME
        del index, known
        epoch = cols.load("epoch", np.int64)[order]
        self._epoch = epoch.astype(np.int32) if not epoch.size or epoch.max() <= np.iinfo(np.int32).max else epoch
        del epoch
        self._src = order
        del order
        self._id_rows = self._find_ids(read, new_row)
        del new_row
        self.duration_ns = int(self.end.max(initial=0))

    def _order(self, starts: np.ndarray, depth: np.ndarray, read: _Read) -> np.ndarray:
        """The timeline's order of :meth:`SessionData._build_spans` (by start, then depth, then id),
        sorting on the start alone and reading the ids only of the spans that share a start."""
        order = np.argsort(starts, kind="stable").astype(np.int32)
        sorted_starts = starts[order]
        tie = sorted_starts[1:] == sorted_starts[:-1]
        del sorted_starts
        if not tie.any():
            return order
        in_group = np.zeros(order.size, dtype=bool)
        in_group[1:] |= tie
        in_group[:-1] |= tie
        new_group = np.ones(order.size, dtype=bool)
        new_group[1:] = ~tie
        del tie
        pos = np.flatnonzero(in_group)
        group = np.cumsum(new_group)[pos]
        del in_group, new_group
        rows = order[pos]
        if read.plain_ids:  # their 128-bit keys sort as the ids do
            hi, lo = _rows_of_file(read, "hi", rows), _rows_of_file(read, "lo", rows)
            take = np.lexsort((lo, hi, depth[rows], group))
        else:
            ids = self._span_details.take(rows, ["id"])["id"]
            take = pc.sort_indices(pa.table({"g": group, "d": depth[rows], "id": pa.array(ids, pa.string())}),
                                   sort_keys=[("g", "ascending"), ("d", "ascending"), ("id", "ascending")]).to_numpy()
        order[pos] = rows[take]
        return order

    def _details(self, rows: np.ndarray) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        got = self._span_details.take(self._src[rows], DETAILS[1:])
        return got["cpu_ns"], got["gpu_ns"], got["memory_peak_bytes"], got["attrs"]

    def _index_of(self, i: int) -> int | None:
        v = int(self._index_np[i])
        return None if v == self._no_index else v

    def _epochs(self) -> np.ndarray:
        return self._epoch

    def _find_ids(self, read: _Read, new_row: np.ndarray) -> dict[str, int]:
        """The rows of the spans that summary marks and snapshots name (the only ids asked for),
        found by one pass over the spans' id keys."""
        from cirron.spool.pieces import id_keys

        wanted = {s for s in read.summary_span if isinstance(s, str)}
        wanted.update(s for sn in read.snapshots if isinstance(s := sn.get("span_id"), str))
        if not wanted or not new_row.size:
            return {}
        hi, lo = id_keys(pa.array(sorted(wanted), pa.string()))
        keys = np.sort(hi ^ lo)
        del hi, lo
        join = read.columns.load("hi", np.uint64)
        join ^= read.columns.load("lo", np.uint64)
        at = np.searchsorted(keys, join)
        np.minimum(at, keys.size - 1, out=at)
        rows = np.flatnonzero(keys[at] == join)  # a wanted id's key (or another id's with the same key)
        del join, at
        got = self._span_details.take(rows, ["id"])["id"]
        return {sid: int(new_row[r]) for r, sid in zip(rows.tolist(), got) if sid in wanted}

    def _rows_of(self, span_ids: Iterable[Any]) -> dict[Any, int]:
        return {s: row for s in set(span_ids) if isinstance(s, str) and (row := self._id_rows.get(s)) is not None}

    def _attrs_of(self, i: int) -> Any:
        if self._attrs_ahead is not None and i in self._attrs_ahead:
            return self._attrs_ahead[i]
        return _decode_attrs(self._details(np.array([i]))[3][0])

    def _read_attrs_ahead(self, span_ids: list[Any]) -> None:
        """The attrs of the request spans these ids name, read at once (each labels a summary mark)."""
        rows = np.array(sorted(self._rows_of(span_ids).values()), dtype=np.int64)
        if REQUEST_SPAN in self.names and rows.size:
            rows = rows[self.name[rows] == self.names.index(REQUEST_SPAN)]
            attrs = self._details(rows)[3]
            self._attrs_ahead = {i: _decode_attrs(a) for i, a in zip(rows.tolist(), attrs)}

    # ---------------------------------------------------------------- marks

    def _build_point_marks(self, read: _Read) -> None:
        cols = read.columns
        ts = cols.load("m_ts", np.int64)
        known = ts != _NO_TIME
        ts -= self.t0_ns
        ts[~known] = 0
        del known
        name = cols.load("m_name", np.int32)
        order = np.lexsort((name, ts))  # by time, then series, then write order (lexsort is stable)
        # kept on disk, in that order: a request maps what it reads of them (see _OnDisk)
        directory = Path(self._tmp.name)
        ts[order].tofile(directory / "mark_ts.bin")
        del ts
        name[order].tofile(directory / "mark_tick_name.bin")
        del name
        cols.load("m_value", np.float64)[order].tofile(directory / "mark_tick_value.bin")
        del order
        self._on_disk = {"mark_ts": np.int64, "mark_tick_name": np.int32, "mark_tick_value": np.float64}
        self.mark_tick_names = list(read.mark_names)
        self.mark_series = _SeriesByName(self)  # type: ignore[assignment]
