"""A big session's winning records as Arrow columns, piece by piece, in bounded memory.

:func:`cirron.spool.columnar.read_columns` holds a whole session's columns, about 0.6 bytes per
byte of JSON, so it reads sessions up to :data:`~cirron.spool.columnar.MAX_SESSION_BYTES`. For a
bigger streamable session :func:`iter_pieces` gives the same records, in the same order, as
several :class:`~cirron.spool.columnar.SessionColumns` (each holds whole batch files, at least
:data:`PIECE_ROWS` records when the session has that many), which the exporters write one after
another:

1. each batch file is parsed once (:func:`cirron.spool.columnar.read_file`, fast or careful as
   there), its Arrow columns are spilled to temporary Arrow IPC files and only compact keys stay
   in memory: per span its 128-bit id key, whether it is closed, its parent's key and whether it
   is an ``epoch``/``batch`` step; per mark its id key, its span's key and how it is attached;
2. the rules of :func:`~cirron.spool.columnar.read_columns` are applied to the keys (the dedupe
   of :func:`cirron.spool.arrays.last_of_each`, parent rows, the enclosing epoch/batch of
   :func:`cirron.spool.arrays.enclosing_steps`, which marks belong to the session), leaving per
   record whether it is written and its epoch/batch;
3. the spilled columns are read back a few files at a time, filtered to the winners, and the
   epoch/batch attached.

Memory: about 40 bytes per span and 30 per mark during step 2 (the keys and their sort), then
17 bytes per record (winner flags, epoch, batch), plus one piece. Disk: the spill, about as big as
the columns (0.6 bytes per byte of JSON), in the temporary directory, removed when the iteration
ends. Ids are keyed by their 128 bits when they are 32 hex digits, else by a BLAKE2 digest
(:func:`cirron.spool.stream._key`), as the reference's streamed reader does.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._schema import BATCH_SPAN_NAME, EPOCH_SPAN_NAME, ROOT_SENTINEL
from cirron.spool.arrays import enclosing_steps, last_of_each
from cirron.spool.catalog import SessionInfo
from cirron.spool.columnar import (
    SessionColumns,
    Unsupported,
    file_batches,
    mark_schema,
    read_file,
    span_schema,
)

__all__ = ["PIECE_ROWS", "iter_pieces"]

#: Records (spans, or marks when there are more) per piece, at least: whole files are added until
#: a piece holds this many. One Parquet row group each.
PIECE_ROWS = 65_536

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def id_keys(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """128-bit keys ``(hi, lo)`` of a string column (nulls give ``(0, 0)``): the id's own bits
    when it is 32 hex digits, else :func:`cirron.spool.stream._key` (the same keys either way)."""
    from cirron.spool.stream import _key

    n = len(ids)
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    if not n:
        return hi, lo
    ids = ids.cast(pa.large_string()) if ids.type != pa.large_string() else ids
    valid = ids.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset: ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    plain = valid & (np.diff(offsets) == 32)
    rows = np.flatnonzero(plain)
    if rows.size:
        nib = _HEX[data[offsets[rows, None] + np.arange(32)]]
        good = (nib != 255).all(axis=1)
        packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
        words = np.ascontiguousarray(packed).view(">u8").astype(np.uint64)
        hi[rows[good]] = words[good, 0]
        lo[rows[good]] = words[good, 1]
        plain[rows[~good]] = False
    odd = np.flatnonzero(valid & ~plain)
    if odd.size:
        for i, text in zip(odd.tolist(), ids.take(pa.array(odd)).to_pylist()):
            hi[i], lo[i] = _key(text)
    return hi, lo


@dataclass
class _Keys:
    """Pass 1's per-record keys, appended file by file."""

    s_hi: list[np.ndarray] = field(default_factory=list)
    s_lo: list[np.ndarray] = field(default_factory=list)
    s_closed: list[np.ndarray] = field(default_factory=list)
    s_parent: list[np.ndarray] = field(default_factory=list)
    s_has_parent: list[np.ndarray] = field(default_factory=list)
    #: 1: an epoch, 2: a batch (with an integer index); 0: neither
    s_kind: list[np.ndarray] = field(default_factory=list)
    #: The epoch/batch spans: their rows and their index
    s_step_rows: list[np.ndarray] = field(default_factory=list)
    s_step_index: list[np.ndarray] = field(default_factory=list)
    m_hi: list[np.ndarray] = field(default_factory=list)
    m_lo: list[np.ndarray] = field(default_factory=list)
    m_target: list[np.ndarray] = field(default_factory=list)
    m_attached: list[np.ndarray] = field(default_factory=list)
    #: Snapshots: (file, position in the file, own batch, id, span id)
    snaps: list[tuple[int, int, bool, Any, Any]] = field(default_factory=list)
    n_spans: int = 0

    def add(self, spans: pa.RecordBatch, marks: pa.RecordBatch | None) -> None:
        hi, lo = id_keys(spans.column("id"))
        self.s_hi.append(hi)
        self.s_lo.append(lo)
        self.s_closed.append(spans.column("end_ns").is_valid().to_numpy(zero_copy_only=False))
        parent = spans.column("parent_id")
        phi, plo = id_keys(parent)
        self.s_parent.append(phi ^ plo)
        self.s_has_parent.append(parent.is_valid().to_numpy(zero_copy_only=False))
        names, index = spans.column("name"), spans.column("index")
        has_index = index.is_valid().to_numpy(zero_copy_only=False)
        epoch = pc.equal(names, EPOCH_SPAN_NAME).fill_null(False).to_numpy(zero_copy_only=False) & has_index
        batch = pc.equal(names, BATCH_SPAN_NAME).fill_null(False).to_numpy(zero_copy_only=False) & has_index
        kind = np.where(epoch, 1, np.where(batch, 2, 0)).astype(np.int8)
        self.s_kind.append(kind)
        steps = np.flatnonzero(kind)
        if steps.size:
            self.s_step_rows.append(steps + self.n_spans)
            self.s_step_index.append(index.take(pa.array(steps)).to_numpy(zero_copy_only=False))
        self.n_spans += len(spans)
        if marks is None:
            return
        mhi, mlo = id_keys(marks.column("id"))
        self.m_hi.append(mhi)
        self.m_lo.append(mlo)
        attached = marks.column("attached")
        on_span = pc.equal(attached, 1)  # only these look their span up: leave the others' ids out
        thi, tlo = id_keys(pc.if_else(on_span, marks.column("span_id"), pa.scalar(None, pa.string())))
        self.m_target.append(thi ^ tlo)
        self.m_attached.append(attached.to_numpy(zero_copy_only=False))


def _stack(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    out = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)
    parts.clear()
    return out


@dataclass
class _Plan:
    """Pass 2's instructions: per record row (in write order) whether it is written and, per
    written span/mark, its enclosing epoch and batch (-1: none); the written snapshots."""

    keep_spans: np.ndarray
    keep_marks: np.ndarray
    span_epoch: np.ndarray
    span_batch: np.ndarray
    span_parent: np.ndarray
    mark_epoch: np.ndarray
    mark_batch: np.ndarray
    #: (file, position in the file) of each winning snapshot
    snaps: set[tuple[int, int]]


def _plan(keys: _Keys) -> _Plan:
    # each step frees what it no longer needs before the next one sorts
    keep_m = last_of_each(_stack(keys.m_hi, np.uint64), _stack(keys.m_lo, np.uint64), None)
    hi, lo = _stack(keys.s_hi, np.uint64), _stack(keys.s_lo, np.uint64)
    keep = last_of_each(hi, lo, _stack(keys.s_closed, bool))
    win_rows = np.flatnonzero(keep)
    join = hi[win_rows]
    join ^= lo[win_rows]
    del hi, lo
    by_join = np.argsort(join, kind="stable")
    sorted_join = join[by_join]
    del join
    n = len(win_rows)

    def lookup(targets: np.ndarray) -> np.ndarray:
        """Row among the winners of each target key (-1: none)."""
        if not n:
            return np.full(len(targets), -1, dtype=np.int64)
        pos = np.searchsorted(sorted_join, targets)
        np.minimum(pos, n - 1, out=pos)
        found = sorted_join[pos] == targets
        return np.where(found, by_join[pos], -1)

    parent = _stack(keys.s_parent, np.uint64)[win_rows]
    has_parent = _stack(keys.s_has_parent, bool)[win_rows]
    parent_row = np.where(has_parent, lookup(parent), -1)
    del parent, has_parent
    kind = _stack(keys.s_kind, np.int8)[win_rows]
    index = np.full(n, -1, dtype=np.int64)
    step_rows = _stack(keys.s_step_rows, np.int64)
    step_index = _stack(keys.s_step_index, np.int64)
    # the winning step spans: their position among the winners
    at = np.searchsorted(win_rows, step_rows)
    won = (at < n) & (win_rows[np.minimum(at, max(n - 1, 0))] == step_rows) if n else np.zeros(0, bool)
    index[at[won]] = step_index[won]
    del step_rows, step_index, at, won, win_rows
    span_epoch, span_batch = enclosing_steps(parent_row, kind == 1, kind == 2, index)
    del kind, index

    attached = _stack(keys.m_attached, np.int8)
    row = lookup(_stack(keys.m_target, np.uint64))
    hit = (attached == 1) & (row >= 0)
    keep_m &= hit | (attached == 0)
    del attached
    row = row[keep_m]
    hit = hit[keep_m]
    np.maximum(row, 0, out=row)
    mark_epoch = np.where(hit, span_epoch[row] if n else -1, -1)
    mark_batch = np.where(hit, span_batch[row] if n else -1, -1)
    del row, hit
    snaps = _winning_snapshots(keys.snaps, lookup)
    return _Plan(keep, keep_m, _compact(span_epoch), _compact(span_batch), _compact(parent_row),
                 _compact(mark_epoch), _compact(mark_batch), snaps)


def _compact(a: np.ndarray) -> np.ndarray:
    """``a`` as int32 when its values fit (half the memory while the pieces are written)."""
    i32 = np.iinfo(np.int32)
    if not a.size or (int(a.min()) >= i32.min and int(a.max()) <= i32.max):
        return a.astype(np.int32)
    return a


def _winning_snapshots(snaps: list[tuple[int, int, bool, Any, Any]], lookup: Any) -> set[tuple[int, int]]:
    """The rule of :func:`cirron.spool.columnar._snapshots` (last write wins; kept when on a
    winning span, or on the root sentinel or none in one of the session's own batches)."""
    from cirron.spool.stream import _key

    last: dict[Any, int] = {}
    for i, (_f, _j, _own, sn_id, _sid) in enumerate(snaps):
        last[sn_id] = i
    out = set()
    for i, (f, j, own, sn_id, sid) in enumerate(snaps):
        if last[sn_id] != i:
            continue
        if sid is None or sid == ROOT_SENTINEL:
            ok = own
        else:
            h, lo_ = _key(sid)
            ok = bool(lookup(np.array([h ^ lo_], dtype=np.uint64))[0] >= 0)
        if ok:
            out.add((f, j))
    return out


class _Spill:
    """Per-file span and mark record batches in two temporary Arrow IPC files, with the mark
    values and snapshots that the columns do not carry (pickled, in a third file)."""

    def __init__(self, directory: Path, with_marks: bool) -> None:
        self.dir = directory
        self._spans = pa.ipc.new_file(str(directory / "spans.arrow"), span_schema())
        self._marks = pa.ipc.new_file(str(directory / "marks.arrow"), mark_schema()) if with_marks else None
        self._extra = open(directory / "extra.pickle", "wb")  # noqa: SIM115 - closed in finish()
        #: per spilled file: its position in the session's files, span and mark counts, where its
        #: odd values and snapshots are in the extra file
        self.files: list[tuple[int, int, int, tuple[int, int] | None]] = []

    def add(self, file_no: int, spans: pa.RecordBatch, marks: pa.RecordBatch | None, values: list[Any],
            snaps: list[Any]) -> None:
        self._spans.write_batch(spans)
        if self._marks is not None and marks is not None:
            self._marks.write_batch(marks)
        extra = None
        odd = values if not set(map(type, values)) <= {float} else None
        if odd is not None or snaps:
            start = self._extra.tell()
            pickle.dump((odd, snaps), self._extra, protocol=pickle.HIGHEST_PROTOCOL)
            extra = (start, self._extra.tell() - start)
        self.files.append((file_no, len(spans), len(values), extra))

    def finish(self) -> None:
        self._spans.close()
        if self._marks is not None:
            self._marks.close()
        self._extra.close()


def iter_pieces(info: SessionInfo, *, marks: bool = True) -> Iterator[SessionColumns] | None:
    """``info``'s winning records as :class:`SessionColumns` pieces (see the module docstring), or
    ``None`` when the columns cannot carry them exactly (then read the session the reference
    way). ``marks=False``: spans only. The pieces' ``span_parent`` is the parent's row in the
    same piece (-1: none, or in another piece)."""
    if not info.streamable:
        return None
    tmp = tempfile.TemporaryDirectory(prefix="cirron-spill-")
    try:
        spill, plan = _first_pass(info, Path(tmp.name), marks)
    except Unsupported:
        tmp.cleanup()
        return None
    except BaseException:
        tmp.cleanup()
        raise
    return _second_pass(info, spill, plan, tmp)


def _first_pass(info: SessionInfo, directory: Path, with_marks: bool) -> tuple[_Spill, _Plan]:
    from cirron.spool.reconstruct import paused_gc

    keys = _Keys()
    spill = _Spill(directory, with_marks)
    pool = pa.default_memory_pool()
    try:
        with paused_gc():
            for file_no, bf in enumerate(info.files):
                got = read_file(bf, with_marks)
                if got is None:
                    continue
                span_batch, mark_batch, values, own, snaps = file_batches(info, file_no, got)
                del got
                keys.add(span_batch, mark_batch if with_marks else None)
                for j, sn in enumerate(snaps):
                    keys.snaps.append((len(spill.files), j, own, sn.id, sn.span_id))
                spill.add(file_no, span_batch, mark_batch if with_marks else None, values, snaps)
                del span_batch, mark_batch, values, snaps
                if file_no % 16 == 15:
                    pool.release_unused()
    finally:
        spill.finish()
    return spill, _plan(keys)


def _second_pass(info: SessionInfo, spill: _Spill, plan: _Plan, tmp: tempfile.TemporaryDirectory) -> \
        Iterator[SessionColumns]:
    try:
        spans_in = pa.ipc.open_file(pa.OSFile(str(spill.dir / "spans.arrow")))
        marks_in = pa.ipc.open_file(pa.OSFile(str(spill.dir / "marks.arrow"))) if spill._marks is not None else None
        with open(spill.dir / "extra.pickle", "rb") as extra:
            group: list[int] = []
            rows = 0
            cursor = _Cursor()
            for k, (_file_no, n_spans, n_marks, _x) in enumerate(spill.files):
                group.append(k)
                rows += max(n_spans, n_marks if marks_in is not None else 0)
                if rows >= PIECE_ROWS or k == len(spill.files) - 1:
                    piece = _piece(info, spill, plan, cursor, group, spans_in, marks_in, extra)
                    group, rows = [], 0
                    if piece is not None:
                        yield piece
                    del piece
                    pa.default_memory_pool().release_unused()
    finally:
        tmp.cleanup()


@dataclass
class _Cursor:
    """Where the next piece starts: span/mark rows (all records) and winning span/mark rows."""

    span: int = 0
    mark: int = 0
    win_span: int = 0
    win_mark: int = 0


def _piece(info: SessionInfo, spill: _Spill, plan: _Plan, cur: _Cursor, group: list[int], spans_in: Any,
           marks_in: Any, extra: Any) -> SessionColumns | None:
    span_t = pa.Table.from_batches([spans_in.get_batch(k) for k in group], span_schema())
    n_s = span_t.num_rows
    keep = plan.keep_spans[cur.span: cur.span + n_s]
    w0, w1 = cur.win_span, cur.win_span + int(keep.sum())
    span_t = span_t.filter(pa.array(keep)) if not keep.all() else span_t
    parent = plan.span_parent[w0:w1]
    parent = np.where((parent >= w0) & (parent < w1), parent - w0, -1)
    cur.span += n_s
    cur.win_span = w1

    values_list: list[Any] | None = None
    snaps: list[Any] = []
    odd_any = False
    per_file: list[tuple[list[Any] | None, int]] = []
    for k in group:
        _file_no, _n_s, n_m, where = spill.files[k]
        odd, file_snaps = None, []
        if where is not None:
            extra.seek(where[0])
            odd, file_snaps = pickle.loads(extra.read(where[1]))
        per_file.append((odd, n_m))
        odd_any = odd_any or odd is not None
        snaps.extend(sn for j, sn in enumerate(file_snaps) if (k, j) in plan.snaps)

    if marks_in is not None:
        mark_t = pa.Table.from_batches([marks_in.get_batch(k) for k in group], mark_schema())
    else:
        mark_t = mark_schema().empty_table()
    n_m = mark_t.num_rows
    keep_m = plan.keep_marks[cur.mark: cur.mark + n_m]
    m0, m1 = cur.win_mark, cur.win_mark + int(keep_m.sum())
    if odd_any:
        values_list = []
        start = 0
        for odd, length in per_file:
            values_list.extend(odd if odd is not None else mark_t["value"].slice(start, length).to_pylist())
            start += length
        values_list = [v for v, k in zip(values_list, keep_m.tolist()) if k]
    mark_t = mark_t.filter(pa.array(keep_m)) if not keep_m.all() else mark_t
    mark_t = mark_t.drop_columns(["attached"])
    cur.mark += n_m
    cur.win_mark = m1
    if not (span_t.num_rows or mark_t.num_rows or snaps):
        return None
    i64 = np.int64
    return SessionColumns(info, span_t, mark_t, snaps, plan.span_epoch[w0:w1].astype(i64),
                          plan.span_batch[w0:w1].astype(i64), plan.mark_epoch[m0:m1].astype(i64),
                          plan.mark_batch[m0:m1].astype(i64), values_list, parent.astype(i64))
