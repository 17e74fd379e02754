"""One big session read in bounded memory: two passes over its batch files instead of a rebuild.

Rebuilding a session whole holds all its records. For a session whose batch files hold nothing
else (:attr:`~cirron.spool.catalog.SessionInfo.streamable`) the readers here make two passes:

1. :func:`session_columns` reads the files once and keeps, per record, its 128-bit id key, its
   parent's (or for a mark its span's) key and its times in numpy arrays (held in memory up to
   :data:`COLUMNS_IN_MEMORY` bytes, then in temporary files, :class:`_ColumnSpill`); the dedupe
   winners (:func:`cirron.spool.reconstruct.span_wins`, last write wins for marks), each span's
   parent and each mark's span (its own, else the session root, as
   :func:`cirron.spool.reconstruct.mark_span_id` says) are then computed one key column at a
   time, and only what the caller asked for is kept (int32 rows and indices);
2. the files are read again, one at a time, for the records a command prints or writes.

:func:`iter_span_marks` yields each winning span with its marks (OTLP nests marks in their span).
Spans come in the order :class:`~cirron.spool.reconstruct.Reconstructor` gives them (where their
winning record was written) and marks in write order, so what is built from this stream equals
what is built from the rebuilt session. A mark written before its span is kept, encoded by the
caller, until the span arrives; past :data:`SPILL_BYTES` such marks go to a temporary file. A mark
written after its span's winning record (rare: a summary added after the span closed) is read
ahead, before the second pass, from the files holding such marks.

:func:`view_outline` computes the nodes ``cirron traces view`` prints (the tree to a depth,
hidden spans, collapsed counts) on the columns.

Memory: one batch file's records; while reading, :data:`COLUMNS_IN_MEMORY` bytes of keys; then
one key column (8 bytes a record) with its sort index at a time; then what the command keeps:
about 20 bytes per winning span and 12 per mark for :func:`iter_span_marks` (with at most
:data:`SPILL_BYTES` of encoded marks waiting for their span), about 40 per span and mark for
:func:`view_outline`. Freed blocks are handed back to the system between the steps
(:func:`_release_memory`), so the peak is the largest step, not their sum. Measured on one session of
2.5M spans and 2.5M marks: ``view --depth 2`` 250 MB, ``export --format otel`` 185 MB.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cirron._memory import trim
from cirron._schema import ROOT_SENTINEL
from cirron.spool.arrays import JoinedIndex, id_keys, last_of_each
from cirron.spool.catalog import SessionInfo
from cirron.spool.parallel import ordered_map
from cirron.spool.reader import BatchFile, read_batch
from cirron.spool.reconstruct import paused_gc

__all__ = ["SPILL_BYTES", "SpanMarks", "iter_span_marks"]

#: Encoded marks waiting for their span are held in memory up to this many bytes, then spilled.
SPILL_BYTES = 32 << 20


def stack_parts(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    """The per-file arrays as one, freeing them as it goes."""
    out = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    parts.clear()
    return out


class _MarkStore:
    """Encoded marks waiting for their span, by span row, in arrival order; in memory up to
    :data:`SPILL_BYTES`, then in a temporary file."""

    def __init__(self) -> None:
        self._mem: dict[int, list[tuple[bytes, Any]]] = {}
        self._mem_bytes = 0
        self._file: Any = None
        self._spilled: dict[int, array] = {}
        self._raw_spilled: dict[int, list[Any]] = {}

    def add(self, row: int, data: bytes, raw: Any) -> None:
        if self._file is None and self._mem_bytes + len(data) <= SPILL_BYTES:
            self._mem.setdefault(row, []).append((data, raw))
            self._mem_bytes += len(data)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="cirron-marks-")
        fh = self._file
        fh.seek(0, os.SEEK_END)
        off = fh.tell()
        fh.write(data)
        self._spilled.setdefault(row, array("q")).extend((off, len(data)))
        if raw is not None:
            self._raw_spilled.setdefault(row, []).append(raw)

    def take(self, row: int) -> tuple[list[bytes], Iterator[bytes], list[Any]]:
        """The marks held for ``row``, removed from the store: those in memory, those read back
        lazily from the spill file (consume them before the next :meth:`add`), and the raw ones."""
        mem = self._mem.pop(row, ())
        data = [d for d, _r in mem]
        raws = [r for _d, r in mem if r is not None]
        self._mem_bytes -= sum(len(d) for d in data)
        spilled = self._spilled.pop(row, None)
        if spilled is None:
            return data, iter(()), raws
        raws.extend(self._raw_spilled.pop(row, ()))
        return data, self._read_back(spilled), raws

    def _read_back(self, spilled: array) -> Iterator[bytes]:
        fh = self._file
        for i in range(0, len(spilled), 2):
            fh.seek(spilled[i])
            yield fh.read(spilled[i + 1])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class SpanMarks:
    """One winning span record and its marks: ``encoded`` (what the caller's ``encode`` made of
    each, in write order; consume it before asking for the next span) and ``raw`` (the records
    ``keep_raw`` asked to keep, in write order)."""

    span: Any
    encoded: Iterator[bytes]
    raw: list[Any]


def iter_span_marks(info: SessionInfo, encode: Callable[[Any], bytes],
                    keep_raw: Callable[[Any], bool] = lambda _m: False) -> Iterator[SpanMarks] | None:
    """The winning spans of a streamable session with their marks (see the module docstring);
    ``None`` when :func:`session_columns` cannot outline it."""
    cols = session_columns(info, times=False)
    if cols is None:
        return None
    return _iter_span_marks(cols, encode, keep_raw)


@dataclass
class _Outline:
    files: list[BatchFile]
    span_start: np.ndarray
    mark_start: np.ndarray
    #: Per span row: whether it wins the dedupe.
    span_win: np.ndarray
    #: Per mark row: the span row it hangs from (-1: not a winning mark of the session).
    mark_target: np.ndarray


def _by_row(cols: SessionColumns) -> _Outline:
    span_win = np.zeros(int(cols.span_start[-1]), dtype=bool)
    span_win[cols.rows] = True
    target = np.full(int(cols.mark_start[-1]), -1, dtype=cols.rows.dtype)
    target[cols.mark_rows] = cols.rows[cols.mark_target]
    return _Outline(cols.files, cols.span_start, cols.mark_start, span_win, target)


def _iter_span_marks(cols: SessionColumns, encode: Callable[[Any], bytes],
                     keep_raw: Callable[[Any], bool]) -> Iterator[SpanMarks]:
    ol = _by_row(cols)
    del cols
    quiet = lambda _m: None  # noqa: E731
    mark_rows = np.flatnonzero(ol.mark_target >= 0)
    mark_file = np.searchsorted(ol.mark_start, mark_rows, side="right") - 1
    span_file = np.searchsorted(ol.span_start, ol.mark_target[mark_rows], side="right") - 1
    late = mark_rows[mark_file > span_file]  # written after their span's winning record
    del mark_rows, mark_file, span_file
    early = _MarkStore()
    late_store = _MarkStore()
    is_late = np.zeros(len(ol.mark_target), dtype=bool)
    is_late[late] = True
    try:
        if len(late):
            late_files = np.unique(np.searchsorted(ol.mark_start, late, side="right") - 1)
            for fi in late_files.tolist():
                batch = read_batch(ol.files[fi], quiet, "full")
                base = int(ol.mark_start[fi])
                for j, m in enumerate(batch["marks"] if batch is not None else ()):
                    if is_late[base + j]:
                        late_store.add(int(ol.mark_target[base + j]), encode(m), m if keep_raw(m) else None)
        del late
        for fi, bf in enumerate(ol.files):
            batch = read_batch(bf, quiet, "full")
            if batch is None:
                continue
            s0, m0 = int(ol.span_start[fi]), int(ol.mark_start[fi])
            local: dict[int, list[tuple[bytes, Any]]] = {}
            targets = ol.mark_target[m0:m0 + len(batch["marks"])].tolist()
            late_here = is_late[m0:m0 + len(batch["marks"])].tolist()
            for j, m in enumerate(batch["marks"]):
                t = targets[j]
                if t < 0 or late_here[j]:
                    continue
                rec = (encode(m), m if keep_raw(m) else None)
                if t >= s0 + len(batch["spans"]):
                    early.add(t, *rec)
                else:
                    local.setdefault(t, []).append(rec)
            win = ol.span_win[s0:s0 + len(batch["spans"])].tolist()
            for j, s in enumerate(batch["spans"]):
                if not win[j]:
                    continue
                row = s0 + j
                mem, spilled, raws = early.take(row)
                here = local.pop(row, ())
                late_mem, late_spilled, late_raws = late_store.take(row)
                raws.extend(r for _d, r in here if r is not None)
                raws.extend(late_raws)
                encoded = itertools.chain(mem, spilled, (d for d, _r in here), late_mem, late_spilled)
                yield SpanMarks(s, encoded, raws)
            del batch, local
    finally:
        early.close()
        late_store.close()


# --------------------------------------------------------------------------- the view's tree

#: Node kinds of :class:`ViewOutline` (what ``cirron traces view`` prints, in order).
NODE_SPAN, NODE_MARK, NODE_COLLAPSED = 0, 1, 2
_NO_TIME = np.iinfo(np.int64).min


#: The key columns :func:`append_span_keys` adds per batch: id halves, the parent's joined key
#: and its hi half (the two make the whole key), whether there is a parent, whether the span is
#: closed, and its times.
SPAN_KEY_COLUMNS = ("hi", "lo", "pjoin", "phi", "has_p", "closed", "start", "end")


def append_span_keys(cols: dict[str, list[np.ndarray]], spans: list[Any]) -> None:
    """Append one batch's span key columns (:data:`SPAN_KEY_COLUMNS`) to ``cols``."""
    hi, lo = id_keys([s.id for s in spans])
    cols["hi"].append(hi)
    cols["lo"].append(lo)
    parents = [s.parent_id for s in spans]
    phi, plo = id_keys([p if p is not None else "" for p in parents])
    cols["pjoin"].append(phi ^ plo)
    cols["phi"].append(phi)
    cols["has_p"].append(np.fromiter((p is not None for p in parents), dtype=bool, count=len(spans)))
    cols["closed"].append(np.fromiter((s.end_ns is not None for s in spans), dtype=bool, count=len(spans)))
    cols["start"].append(time_column([s.start_ns for s in spans]))
    cols["end"].append(time_column([s.end_ns for s in spans]))


def target_keys(recs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Key columns of marks or snapshots: their id halves, the halves of the key of the span each
    names, and whether it names a span (rather than the root sentinel or none)."""
    hi, lo = id_keys([r.id for r in recs])
    targets = [r.span_id for r in recs]
    on_span = np.fromiter((t is not None and t != ROOT_SENTINEL for t in targets), dtype=bool, count=len(recs))
    thi, tlo = id_keys([t if t is not None and t != ROOT_SENTINEL else "" for t in targets])
    return hi, lo, thi, tlo, on_span


def _plain_ids(ids: list[Any]) -> bool:
    """Whether every id is 32 lowercase hex digits (their 128-bit keys then sort as the ids do)."""
    for x in ids:
        if type(x) is not str or len(x) != 32 or not (x.islower() or x.isdigit()):
            return False
    return True


def time_column(values: list[Any]) -> np.ndarray:
    """Integers as int64, anything else as :data:`_NO_TIME`."""
    if set(map(type, values)) <= {int}:  # the common case, converted in one call
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    return np.fromiter((v if type(v) is int else _NO_TIME for v in values), dtype=np.int64, count=len(values))


@dataclass
class ViewOutline:
    """The nodes ``cirron traces view`` prints for one streamable session, in order, from one
    summary pass (:func:`view_outline`); the caller reads the files again for their records."""

    files: list[BatchFile]
    span_start: np.ndarray
    mark_start: np.ndarray
    #: Per node, in print order: its kind, its span row / mark row / collapsed index, its depth.
    kind: np.ndarray
    ref: np.ndarray
    depth: np.ndarray
    #: Per collapsed node: how many spans it hides and the wall time of its top ones.
    collapsed_spans: np.ndarray
    collapsed_ns: np.ndarray
    root_row: int


def view_outline(info: SessionInfo, depth: int | None, min_wall_ns: int | None,
                 match: Callable[[Any], bool] | None = None) -> ViewOutline | None:
    """What ``view`` prints of ``info``'s session (its tree to ``depth``, spans shorter than
    ``min_wall_ns`` hidden with what hangs below them; with ``match``, ``--name``'s filter: only
    the spans it accepts (given each span record as read with ``fields="export"``) and their
    ancestors, and the marks of the accepted ones), as the whole-session view computes it
    (``cirron_cli.traces``), keeping about 50 bytes per record. ``None`` when the session's ids
    are not all 32 lowercase hex digits (their order would then need the ids themselves)."""
    with paused_gc():
        return _view_outline(info, depth, min_wall_ns, match)


_NO_INT = np.iinfo(np.int64).min
#: What :class:`SessionColumns` holds for an unknown time or integer.
NO_TIME, NO_INT = _NO_TIME, _NO_INT


#: A session's key columns are held in memory up to this many bytes while its files are read,
#: then in temporary files, and read back one column at a time (:class:`_ColumnSpill`).
COLUMNS_IN_MEMORY = 32 << 20


#: Items read at once when a spilled column is read back for some of its rows.
_TAKE_CHUNK = 1 << 20


class _ColumnSpill:
    """Named columns built file by file: in memory up to :data:`COLUMNS_IN_MEMORY` bytes, then
    appended to a temporary file each. :meth:`take` hands a column back whole, once."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {}
        self._dtype: dict[str, np.dtype[Any]] = {}
        self._files: dict[str, Any] = {}
        self._held = 0

    def add(self, name: str, values: np.ndarray) -> None:
        self._parts.setdefault(name, []).append(values)
        self._dtype[name] = values.dtype
        self._held += values.nbytes
        if self._held > COLUMNS_IN_MEMORY:
            for key in self._parts:
                self._flush(key)
            self._held = 0

    def settle(self) -> None:
        """Once anything went to disk, send the rest there too (so it is not held meanwhile)."""
        if self._files:
            for key in self._parts:
                self._flush(key)
            self._held = 0

    def _flush(self, name: str) -> None:
        parts = self._parts[name]
        if not parts:
            return
        fh = self._files.get(name)
        if fh is None:
            fh = self._files[name] = tempfile.TemporaryFile(prefix="cirron-columns-")
        for part in parts:
            fh.write(part.tobytes())
        parts.clear()

    def take(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Column ``name`` (only its ``rows``, ascending, when given), once."""
        dtype = self._dtype.get(name, np.dtype(np.int64))
        fh = self._files.pop(name, None)
        parts = self._parts.pop(name, [])
        if fh is None:
            whole = stack_parts(parts, dtype)
            return whole if rows is None else whole[rows]
        with fh:
            for part in parts:
                fh.write(part.tobytes())
            parts.clear()
            fh.seek(0)
            if rows is None:
                return np.fromfile(fh, dtype=dtype)
            out = np.empty(len(rows), dtype=dtype)
            done = first = 0
            while done < len(rows):  # a slice of the file at a time
                chunk = np.fromfile(fh, dtype=dtype, count=_TAKE_CHUNK)
                if not len(chunk):
                    break
                end = int(np.searchsorted(rows, first + len(chunk), side="left"))
                out[done:end] = chunk[rows[done:end] - first]
                done, first = end, first + len(chunk)
            return out

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._parts.clear()


def _index_dtype(n: int) -> type[np.signedinteger[Any]]:
    """The narrowest of int32/int64 that numbers ``n`` rows (and -1)."""
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


@dataclass
class SessionColumns:
    """One summary-like pass over a streamable session (:func:`session_columns`): its winning
    spans (``idx`` below: their position among the winners, in write order) and winning marks.
    Rows and idx are int32 (int64 past 2**31 records)."""

    files: list[BatchFile]
    #: Per file (and one past the end): its first span row and first mark row.
    span_start: np.ndarray
    mark_start: np.ndarray
    #: Per winning span: its row, times (``_NO_TIME`` when unknown; ``None`` unless asked), its
    #: parent's idx (-1: none).
    rows: np.ndarray
    start: np.ndarray | None
    end: np.ndarray | None
    parent: np.ndarray
    root_idx: int
    #: Per winning span, when asked: its position in id order (ids are 32 hex digits: their order).
    id_rank: np.ndarray | None
    #: Per winning span, when asked: thread id and rank (``_NO_INT`` when unknown).
    thread: np.ndarray | None
    rank: np.ndarray | None
    #: Per winning mark of the session, in write order: its row, time (0 when unknown; ``None``
    #: unless times are asked), the idx of its own span (-1: not a span of the session) and of the
    #: span it hangs from (its own, else the root).
    mark_rows: np.ndarray
    mark_ts: np.ndarray | None
    mark_span: np.ndarray
    mark_target: np.ndarray
    #: Per winning span, when a test was given: whether it passes it.
    matched: np.ndarray | None = None


def session_columns(info: SessionInfo, *, threads: bool = False, times: bool = True,
                    mark_times: bool | None = None, id_order: bool = False) -> SessionColumns | None:
    """Columns of ``info``'s session from one pass over its batch files. ``threads``: each span's
    thread and rank; ``times``: span times, and mark times unless ``mark_times`` says otherwise;
    ``id_order``: each span's rank in id order.
    ``None`` when its ids are not all 32 lowercase hex digits (their keys would not sort as the
    ids do) or it has no root.

    Memory: while the files are read, at most :data:`COLUMNS_IN_MEMORY` bytes of keys (the rest
    waits in temporary files); then one key column at a time (8 bytes a record) with its sort
    index, and what is returned: about 20 bytes a winning span (36 with times, 52 with threads)
    and 12 a winning mark (20 with times)."""
    with paused_gc():
        return _session_columns(info, threads, times, times if mark_times is None else mark_times, id_order)


def _session_columns(info: SessionInfo, threads: bool, times: bool, mark_times: bool,
                     id_order: bool, match: Callable[[Any], bool] | None = None) -> SessionColumns | None:
    files: list[BatchFile] = []
    span_start, mark_start = [0], [0]
    col = _ColumnSpill()
    batches = ordered_map(_export_read, info.files)  # the next files are read meanwhile on another thread
    try:
        for bf, batch in zip(info.files, batches):
            if batch is None:
                continue
            files.append(bf)
            spans, marks = batch["spans"], batch["marks"]
            if not _plain_ids([s.id for s in spans]):
                return None
            keys: dict[str, list[np.ndarray]] = {k: [] for k in SPAN_KEY_COLUMNS}
            append_span_keys(keys, spans)
            for k, v in keys.items():
                if times or k not in ("start", "end"):
                    col.add(k, v[0])
            if match is not None:
                col.add("match", np.fromiter(map(match, spans), dtype=bool, count=len(spans)))
            if threads:
                col.add("thread", time_column([s.thread_id for s in spans]))
                col.add("rank", time_column([s.rank for s in spans]))
            own = batch["session_id"] == info.id
            mhi, mlo, thi, tlo, on_span = target_keys(marks)
            col.add("mhi", mhi)
            col.add("mlo", mlo)
            col.add("tjoin", thi ^ tlo)
            col.add("thi", thi)
            # 1: on a span id; 0: on the sentinel (or none) in the session's own batch; -1: neither
            col.add("att", np.where(on_span, 1, 0 if own else -1).astype(np.int8))
            if mark_times:
                col.add("ts", time_column([m.ts_ns for m in marks]))
            span_start.append(span_start[-1] + len(spans))
            mark_start.append(mark_start[-1] + len(marks))
            del batch, spans, marks, keys
        col.settle()
        trim()
        out = _columns_from(col, info, files, span_start, mark_start, threads, times, mark_times, id_order)
        if out is not None and match is not None:
            out.matched = col.take("match", out.rows)
        return out
    finally:
        batches.close()
        col.close()


def _export_read(bf: BatchFile) -> dict[str, Any] | None:
    return read_batch(bf, lambda _m: None, "export")  # summary reads leave out the marks' times


def _columns_from(col: _ColumnSpill, info: SessionInfo, files: list[BatchFile], span_start: list[int],
                  mark_start: list[int], threads: bool, times: bool, mark_times: bool,
                  id_order: bool) -> SessionColumns | None:
    """The dedupe, parents and marks' spans, one key column at a time."""
    idx_t = _index_dtype(max(span_start[-1], mark_start[-1]))
    member = last_of_each(col.take("mhi"), col.take("mlo"), None)
    trim()
    hi, lo = col.take("hi"), col.take("lo")
    rows = np.flatnonzero(last_of_each(hi, lo, col.take("closed"))).astype(idx_t)
    whi = hi[rows]
    del hi
    wlo = lo[rows]
    del lo
    trim()
    id_rank = _id_rank(whi, wlo, idx_t) if id_order else None
    join = whi ^ wlo
    root_hi, root_lo = id_keys([info.id])
    del wlo
    spans_by_key = JoinedIndex.of(join, whi.__getitem__, idx_t)
    del join
    trim()

    root_idx = int(spans_by_key.lookup(root_hi ^ root_lo, root_hi.__getitem__)[0])
    if root_idx < 0:
        return None
    p_hi = col.take("phi", rows)
    parent = spans_by_key.lookup(col.take("pjoin", rows), p_hi.__getitem__)
    del p_hi
    parent[~col.take("has_p", rows)] = -1
    parent[root_idx] = -1
    att = col.take("att")
    on_span = np.flatnonzero(att == 1)
    own_span = np.full(len(att), -1, dtype=idx_t)
    t_hi = col.take("thi", on_span)
    own_span[on_span] = spans_by_key.lookup(col.take("tjoin", on_span), t_hi.__getitem__)
    del on_span, t_hi, spans_by_key, whi
    member &= (own_span >= 0) | (att >= 0)
    del att
    mark_rows = np.flatnonzero(member).astype(idx_t)
    del member
    own_span = own_span[mark_rows]
    mark_target = np.where(own_span >= 0, own_span, root_idx).astype(idx_t)
    trim()
    start = col.take("start", rows) if times else None
    end = col.take("end", rows) if times else None
    thread = col.take("thread", rows) if threads else None
    rank = col.take("rank", rows) if threads else None
    mark_ts = None
    if mark_times:
        mark_ts = col.take("ts", mark_rows)
        mark_ts[mark_ts == _NO_TIME] = 0
    return SessionColumns(files, np.array(span_start, np.int64), np.array(mark_start, np.int64), rows,
                          start, end, parent, root_idx, id_rank, thread, rank, mark_rows, mark_ts, own_span,
                          mark_target)




def _id_rank(hi: np.ndarray, lo: np.ndarray, idx_t: Any) -> np.ndarray:
    """Each key's position in ``(hi, lo)`` order (the keys are distinct)."""
    order = np.argsort(hi, kind="stable")
    h = hi[order]
    if len(h) > 1 and (h[1:] == h[:-1]).any():  # two ids share their upper half: sort on both
        order = np.lexsort((lo, hi))
    del h
    out = np.empty(len(hi), dtype=idx_t)
    out[order] = np.arange(len(hi), dtype=idx_t)
    return out


def _view_outline(info: SessionInfo, depth: int | None, min_wall_ns: int | None,
                  match: Callable[[Any], bool] | None) -> ViewOutline | None:
    cols = _session_columns(info, False, True, True, True, match)
    if cols is None:
        return None
    assert cols.start is not None and cols.end is not None and cols.mark_ts is not None
    assert cols.id_rank is not None
    rows, start, end, parent, root_idx = cols.rows, cols.start, cols.end, cols.parent, cols.root_idx
    cols.mark_span = None  # type: ignore[assignment]
    n = len(rows)
    valid = (start != _NO_TIME) & (end != _NO_TIME)
    wall = end - start
    wall[~valid] = 0
    cols.end = end = None  # type: ignore[assignment]
    visible = np.ones(n, dtype=bool) if min_wall_ns is None else ~(valid & (wall < min_wall_ns))
    if cols.matched is not None:
        visible &= _with_ancestors(cols.matched, parent)
    visible[root_idx] = True
    level, levels = _levels(parent, root_idx, visible)
    reach = np.zeros(n, dtype=bool)
    reach[root_idx] = True
    for kids in levels:
        reach[kids] = True
    del visible
    limit = np.iinfo(np.int32).max if depth is None else depth
    shown = reach & (level <= limit)
    del reach
    # collapsed nodes: below each shown span at the limit, its reachable descendants
    coll_idx = np.flatnonzero(shown & (level == limit)) if depth is not None else np.empty(0, np.int64)
    coll_spans = np.zeros(0, dtype=np.int64)
    coll_ns = np.zeros(0, dtype=np.int64)
    if len(coll_idx):
        desc = np.zeros(n, dtype=np.int64)
        for kids in reversed(levels):
            np.add.at(desc, parent[kids], desc[kids] + 1)
        coll_spans = desc[coll_idx]
        del desc
        child_wall = np.zeros(n, dtype=np.int64)
        for kids in levels:
            timed = kids[valid[kids]]
            np.add.at(child_wall, parent[timed], wall[timed])
        coll_ns = child_wall[coll_idx]
        del child_wall
        keep = coll_spans > 0
        coll_idx, coll_spans, coll_ns = coll_idx[keep], coll_spans[keep], coll_ns[keep]
    del levels, wall, valid
    trim()

    # the children of every expanded span, spans then marks at equal times, in print order; a
    # child is its span idx, or for a mark -1 - its position in ``mark_rows``
    expand = shown & (level < limit)
    ok = expand[cols.mark_target]
    if cols.matched is not None:  # only the marks of the spans the test accepted
        ok &= cols.matched[cols.mark_target]
    cols.matched = None
    mark_rows = cols.mark_rows[ok]
    mark_parent = cols.mark_target[ok]
    mark_ts = cols.mark_ts[ok]
    del ok
    cols.mark_rows = cols.mark_target = cols.mark_ts = None  # type: ignore[assignment]
    child_idx = np.flatnonzero(shown & (parent >= 0))
    child_idx = child_idx[expand[parent[child_idx]]]
    del shown, expand
    span_time = start[child_idx]
    span_time[span_time == _NO_TIME] = 0
    cols.start = start = None  # type: ignore[assignment]
    idx_t = rows.dtype
    c_parent = np.concatenate([parent[child_idx], mark_parent]).astype(idx_t)
    order = np.lexsort((np.concatenate([cols.id_rank[child_idx], np.arange(len(mark_rows), dtype=idx_t)]),
                        np.concatenate([np.zeros(len(child_idx), np.int8), np.ones(len(mark_rows), np.int8)]),
                        np.concatenate([span_time, mark_ts]), c_parent))
    del span_time, mark_ts, mark_parent
    cols.id_rank = None
    c_parent = c_parent[order]
    c_node = np.concatenate([child_idx.astype(idx_t), -1 - np.arange(len(mark_rows), dtype=idx_t)])[order]
    del order, child_idx
    trim()
    first_child = np.searchsorted(c_parent, np.arange(n + 1, dtype=idx_t)).astype(idx_t)
    del c_parent
    coll_at = np.full(n, -1, dtype=idx_t)
    coll_at[coll_idx] = np.arange(len(coll_idx))
    kinds, refs, depths = _preorder(root_idx, limit, _as_array(rows), _as_array(level), _as_array(first_child),
                                    _as_array(c_node), _as_array(mark_rows), _as_array(coll_at))
    return ViewOutline(cols.files, cols.span_start, cols.mark_start,
                       np.frombuffer(kinds, np.int8), np.frombuffer(refs, np.int64), np.frombuffer(depths, np.int32),
                       coll_spans, coll_ns, int(rows[root_idx]))


def _with_ancestors(marked: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """``marked`` with every ancestor of a marked span marked too."""
    out = marked.copy()
    cur = np.flatnonzero(marked)
    while cur.size:
        up = np.unique(parent[cur])
        up = up[up >= 0]
        cur = up[~out[up]]
        out[cur] = True
    return out


def _levels(parent: np.ndarray, root_idx: int, visible: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each span's depth below the root (-1: unreached) and, per depth from 1, the spans shown
    there (a span shows when it and all its ancestors are ``visible``)."""
    n = len(parent)
    level = np.full(n, -1, dtype=np.int32)
    level[root_idx] = 0
    by_parent = np.argsort(parent, kind="stable").astype(parent.dtype)
    sorted_parent = parent[by_parent]
    levels: list[np.ndarray] = []
    frontier = np.array([root_idx], dtype=parent.dtype)
    d = 0
    while len(frontier):
        lo_pos = np.searchsorted(sorted_parent, frontier, side="left")
        counts = np.searchsorted(sorted_parent, frontier, side="right") - lo_pos
        total = int(counts.sum())
        if not total:
            break
        # the positions lo_pos[i] .. lo_pos[i] + counts[i] - 1 of every frontier span, as one array
        nonempty = counts > 0
        starts, counts = lo_pos[nonempty], counts[nonempty]
        pos = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        pos += np.arange(total)
        kids = by_parent[pos]
        del pos, starts, counts, lo_pos
        kids = kids[level[kids] < 0]  # never revisit (a cycle cannot reach here, but be safe)
        d += 1
        level[kids] = d
        kids = kids[visible[kids]]
        if len(kids):
            levels.append(kids)
        frontier = kids
    return level, levels


def _as_array(values: np.ndarray) -> memoryview:
    """A view of ``values`` whose items index as Python ints (faster than numpy's scalars)."""
    return np.ascontiguousarray(values).data


def _preorder(root_idx: int, limit: int, rows: memoryview, level: memoryview, first_child: memoryview,
              c_node: memoryview, mark_rows: memoryview, coll_at: memoryview) -> tuple[array, array, array]:
    """The view's nodes in print order (kind, ref, depth), walking the sorted children."""
    kinds, refs, depths = array("b"), array("q"), array("i")
    stack: list[list[int]] = []  # per open span: [next child, end, depth of its children]

    def enter(idx: int, d: int) -> None:
        kinds.append(NODE_SPAN)
        refs.append(rows[idx])
        depths.append(d)
        c = coll_at[idx]
        if c >= 0:
            kinds.append(NODE_COLLAPSED)
            refs.append(c)
            depths.append(d + 1)
        elif level[idx] < limit and first_child[idx] < first_child[idx + 1]:
            stack.append([first_child[idx], first_child[idx + 1], d + 1])

    enter(root_idx, 0)
    while stack:
        top = stack[-1]
        j, d = top[0], top[2]
        top[0] = j + 1
        if j + 1 >= top[1]:
            stack.pop()
        v = c_node[j]
        if v < 0:
            kinds.append(NODE_MARK)
            refs.append(mark_rows[-1 - v])
            depths.append(d)
        else:
            enter(v, d)
    return kinds, refs, depths
