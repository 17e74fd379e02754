"""A big session's winning records as Arrow columns, piece by piece, in bounded memory.

:func:`cirron.spool.columnar.read_columns` holds a whole session's columns, about 0.6 bytes per
byte of JSON, so it reads sessions up to :data:`~cirron.spool.columnar.MAX_SESSION_BYTES`. For a
bigger streamable session :func:`iter_pieces` gives the same records, in the same order, as
several :class:`~cirron.spool.columnar.SessionColumns` (each holds whole batch files, at least
:data:`PIECE_ROWS` records when the session has that many), which the exporters write one after
another (:func:`read_pieces` gives them as :class:`Pieces`, for an exporter that reads them twice):

1. each batch file is parsed once (:func:`cirron.spool.columnar.read_file`, fast or careful as
   there), its Arrow columns are spilled to temporary Arrow IPC files and compact keys to files
   beside them: per span its id key (64-bit joined and 128-bit), whether it is closed, its
   parent's key (joined, and its ``hi`` half: the lookups compare whole keys) and whether it is
   an ``epoch``/``batch`` step; per mark its id key, its span's key and how it is attached; and
   the row of a span's parent and of a mark's span when that span is in the same batch file
   (found on the reading threads);
2. the rules of :func:`~cirron.spool.columnar.read_columns` are applied to the keys (the dedupe
   of :func:`cirron.spool.arrays.last_of_each`, parent rows, the enclosing epoch/batch of
   :func:`cirron.spool.arrays.enclosing_steps`, which marks belong to the session), leaving per
   record whether it is written and its epoch/batch; when no span record lost the dedupe, only
   the parents and marks' spans not found in their own batch file are looked up among all the
   session's keys;
3. the spilled columns are read back a few files at a time, filtered to the winners, and the
   epoch/batch attached.

Memory: no keys while the files are parsed (they go to files beside the spill); about 35 bytes
per record while the rules run (the spans' and the marks' sorts side by side), then about 20
(winner flags, epoch, batch, parent row), plus one piece. Disk: the spill, about as big as the
columns (0.6 bytes per byte of JSON) plus 45 bytes per span and per mark of keys, in the temporary directory,
removed when the iteration ends. Ids are keyed by their 128 bits when they are 32 hex digits, else by a BLAKE2 digest
(:func:`cirron.spool.stream._key`), as the reference's streamed reader does.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._memory import returned_memory
from cirron._schema import BATCH_SPAN_NAME, EPOCH_SPAN_NAME, ROOT_SENTINEL, SESSION_SPAN_NAME
from cirron.spool.arrays import (
    JoinedIndex,
    PairIndex,
    enclosing_steps,
    hex_halves,
    last_of_each,
    packed_hex_halves,
)
from cirron.spool.catalog import SessionInfo
from cirron.spool.columnar import (
    FileBatches,
    SessionColumns,
    Unsupported,
    _cbatch,
    map_session_files,
    mark_schema,
    span_schema,
)

__all__ = ["PIECE_ROWS", "Pieces", "iter_pieces", "read_pieces"]

#: Records (spans, or marks when there are more) per piece, at least: whole files are added until
#: a piece holds this many. One Parquet row group each.
PIECE_ROWS = 65_536


def id_keys(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """128-bit keys ``(hi, lo)`` of a string column (nulls give ``(0, 0)``): the id's own bits
    when it is 32 hex digits, else :func:`cirron.spool.stream._key` (the same keys either way;
    :func:`cirron.spool.arrays.id_keys` does this for a list of ids, this one reads the Arrow
    buffers without making Python strings)."""
    from cirron.spool.stream import _key

    n = len(ids)
    if n and ids.type == pa.string() and _cbatch is not None:
        validity, offsets, data = ids.buffers()
        hi_b, lo_b, plain_b = _cbatch.hex_keys(offsets, b"" if data is None else data, validity, ids.offset, n, False)
        hi, lo = np.frombuffer(hi_b, dtype=np.uint64), np.frombuffer(lo_b, dtype=np.uint64)
        odd = np.flatnonzero(np.frombuffer(plain_b, dtype=np.uint8) == 0)
        if odd.size and ids.null_count:
            odd = odd[ids.is_valid().to_numpy(zero_copy_only=False)[odd]]
        for i, text in zip(odd.tolist(), ids.take(pa.array(odd)).to_pylist()):
            hi[i], lo[i] = _key(text)
        return hi, lo
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    if not n:
        return hi, lo
    ids = ids.cast(pa.large_string()) if ids.type != pa.large_string() else ids
    valid = ids.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset: ids.offset + n + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    plain = valid & (np.diff(offsets) == 32)
    if plain.all() and offsets[n] - offsets[0] == 32 * n:  # all 32 characters, back to back: one call
        halves = packed_hex_halves(data[offsets[0]:offsets[n]].tobytes())
        if halves is not None:
            return halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64)
    rows = np.flatnonzero(plain)
    if rows.size:
        good, halves = hex_halves(data[offsets[rows, None] + np.arange(32)])
        hi[rows[good]] = halves[:, 0]
        lo[rows[good]] = halves[:, 1]
        plain[rows[~good]] = False
    odd = np.flatnonzero(valid & ~plain)
    if odd.size:
        for i, text in zip(odd.tolist(), ids.take(pa.array(odd)).to_pylist()):
            hi[i], lo[i] = _key(text)
    return hi, lo


def _any_upper_hex(ids: pa.Array) -> bool:
    """Whether any text of a string column holds an uppercase A-F. Without one, two ids share a
    key only when their texts are equal (the keys take the bits of a 32-digit hex id whatever its
    case, where the column encoders compare texts); a few bytes more than the column's (a slice's
    buffer) may be looked at, which can only say yes where no would do."""
    if ids.type != pa.string():
        return len(ids) > 0  # not looked at: taken as holding one
    data = ids.buffers()[2]
    if data is None:
        return False
    text = np.frombuffer(data, dtype=np.uint8)
    return bool(((text - np.uint8(ord("A"))) < 6).any())


def _local_rows(hi: np.ndarray, lo: np.ndarray) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A lookup of keys among one batch file's span keys ``(hi, lo)``: the row (int32) of each
    key ``(q_hi, q_lo)`` where ``wanted`` is true and a span of the file has it, -1 elsewhere. Most
    parents and marks are in their span's batch file: the plan's lookups in the whole session
    (random reads over all its keys, on one thread) are left with the few others, and this work
    runs on the reading threads."""
    index = PairIndex(hi, lo)

    def find(q_hi: np.ndarray, q_lo: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        out = np.full(len(q_hi), -1, dtype=np.int32)
        rows = np.flatnonzero(wanted)
        if rows.size and len(index):
            out[rows] = index.lookup(q_hi[rows], q_lo[rows])
        return out

    return find


#: The key files pass 1 writes beside the spill (name → dtype): per span its id's joined key
#: (``hi ^ lo``), its 128-bit key, its parent's joined key and ``hi`` half (the two make the
#: whole key), flags (:data:`_CLOSED`...) and its parent's row in the same batch file
#: (:func:`_local_rows`); per epoch/batch span its row and index; per mark its id's joined and
#: 128-bit keys, its span's joined key and ``hi`` half, how it is attached (1: to a span id, 0:
#: to the sentinel or none in one of the session's own batches, -1: neither) and its span's row
#: in the same batch file; per batch file whether an id, a parent's or a mark's span id in it holds
#: an uppercase A-F (:func:`_any_upper_hex`).
_KEY_FILES = {"s_join": np.uint64, "s_hi": np.uint64, "s_lo": np.uint64, "s_parent": np.uint64,
              "s_parent_hi": np.uint64, "s_flags": np.uint8, "s_local_parent": np.int32,
              "s_step_row": np.int64, "s_step_index": np.int64,
              "m_join": np.uint64, "m_hi": np.uint64, "m_lo": np.uint64, "m_target": np.uint64,
              "m_target_hi": np.uint64, "m_att": np.int8, "m_local_target": np.int32,
              "f_upper": np.uint8}
#: s_flags: a closed span, one with a parent, an epoch or batch step, a session's root span (named
#: ``cirron.session``, without parent)
_CLOSED, _HAS_PARENT, _EPOCH, _BATCH, _ROOT = 1, 2, 4, 8, 16
#: Keys read from the key files per lookup block (bounds what a lookup holds).
_LOOKUP_BLOCK = 1 << 18
#: Bytes buffered per key file while pass 1 appends to it.
_KEY_BUFFER = 256 << 10


class _Keys:
    """Pass 1's per-record keys, appended file by file to files in the spill directory, so memory
    holds none of them while the batch files are parsed."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._out = {name: open(directory / f"{name}.bin", "wb", buffering=_KEY_BUFFER)  # noqa: SIM115
                     for name in _KEY_FILES}
        #: Snapshots: (spilled file, position in it, own batch, id, span id)
        self.snaps: list[tuple[int, int, bool, Any, Any]] = []
        self.n_spans = 0
        #: Per batch file: its first span row, and its number of marks
        self.file_spans: list[int] = []
        self.file_marks: list[int] = []

    def _write(self, name: str, a: np.ndarray) -> None:
        # through the file's buffer: a write of its own per file's keys (ndarray.tofile) gave up
        # the GIL each time, and waited to get it back from the reading threads
        self._out[name].write(np.ascontiguousarray(a, dtype=_KEY_FILES[name]).data)

    @staticmethod
    def of(spans: pa.RecordBatch, marks: pa.RecordBatch | None) -> dict[str, np.ndarray]:
        """One file's keys (what :meth:`add` writes; step rows counted in the file). Touches no
        state, so it runs on the reading threads."""
        out: dict[str, np.ndarray] = {}
        hi, lo = id_keys(spans.column("id"))
        out["s_hi"], out["s_lo"], out["s_join"] = hi, lo, hi ^ lo
        parent = spans.column("parent_id")
        phi, plo = id_keys(parent)
        out["s_parent"], out["s_parent_hi"] = phi ^ plo, phi
        names, index = spans.column("name"), spans.column("index")
        has_index = index.is_valid().to_numpy(zero_copy_only=False)
        epoch = pc.equal(names, EPOCH_SPAN_NAME).fill_null(False).to_numpy(zero_copy_only=False) & has_index
        batch = pc.equal(names, BATCH_SPAN_NAME).fill_null(False).to_numpy(zero_copy_only=False) & has_index
        has_parent = parent.is_valid().to_numpy(zero_copy_only=False)
        root = pc.equal(names, SESSION_SPAN_NAME).fill_null(False).to_numpy(zero_copy_only=False) & ~has_parent
        out["s_flags"] = (np.where(spans.column("end_ns").is_valid().to_numpy(zero_copy_only=False), _CLOSED, 0)
                          | np.where(has_parent, _HAS_PARENT, 0)
                          | np.where(epoch, _EPOCH, 0) | np.where(batch, _BATCH, 0) | np.where(root, _ROOT, 0))
        upper = _any_upper_hex(spans.column("id")) or _any_upper_hex(parent)
        find = _local_rows(hi, lo)
        out["s_local_parent"] = find(phi, plo, has_parent)
        steps = np.flatnonzero(epoch | batch)
        if steps.size:
            out["s_step_row"] = steps
            out["s_step_index"] = index.take(pa.array(steps)).to_numpy(zero_copy_only=False)
        if marks is None:
            out["f_upper"] = np.array([upper])
            return out
        mhi, mlo = id_keys(marks.column("id"))
        out["m_hi"], out["m_lo"], out["m_join"] = mhi, mlo, mhi ^ mlo
        attached = marks.column("attached")
        on_span = pc.equal(attached, 1)  # only these look their span up: leave the others' ids out
        thi, tlo = id_keys(pc.if_else(on_span, marks.column("span_id"), pa.scalar(None, pa.string())))
        out["m_target"], out["m_target_hi"] = thi ^ tlo, thi
        out["m_att"] = attached.to_numpy(zero_copy_only=False)
        out["m_local_target"] = find(thi, tlo, out["m_att"] == 1)
        out["f_upper"] = np.array([upper or _any_upper_hex(marks.column("span_id"))])
        return out

    def add(self, n_spans: int, keys: dict[str, np.ndarray]) -> None:
        """Append one file's keys (:meth:`of`) of its ``n_spans`` spans."""
        for name, a in keys.items():
            self._write(name, a + self.n_spans if name == "s_step_row" else a)
        self.file_spans.append(self.n_spans)
        self.file_marks.append(len(keys.get("m_att", ())))
        self.n_spans += n_spans

    def local_rows(self, name: str, counts: list[int]) -> np.ndarray:
        """Key file ``name`` of rows in the same batch file (:func:`_local_rows`) as span rows
        of the whole session (-1 stays -1); ``counts``: its rows per batch file."""
        dtype = _rows_dtype(self.n_spans)
        local = self.load(name).astype(dtype)
        np.add(local, np.repeat(np.array(self.file_spans, dtype=dtype), counts), out=local, where=local >= 0)
        return local

    def close(self) -> None:
        for fh in self._out.values():
            fh.close()

    def load(self, name: str) -> np.ndarray:
        return np.fromfile(self.dir / f"{name}.bin", dtype=_KEY_FILES[name])

    def reader(self, name: str, numbering: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`rows` of ``name`` as a function of row numbers (``numbering[r]``: the row of
        number ``r``; None: the row itself)."""
        return lambda r: self.rows(name, r if numbering is None else numbering[r])

    def lookup(self, index: JoinedIndex, name: str, rows: np.ndarray | None) -> np.ndarray:
        """``index``'s row of each key of key files ``name`` (joined keys) and ``name_hi`` (their
        hi halves): only ``rows`` (ascending) when given. The files are read a block at a time,
        so memory holds none of them whole."""
        size = (self.dir / f"{name}.bin").stat().st_size // 8
        out = np.empty(len(rows) if rows is not None else size, dtype=index.dtype)
        for first in range(0, size, _LOOKUP_BLOCK):
            count = min(_LOOKUP_BLOCK, size - first)
            if rows is None:
                at, put = None, slice(first, first + count)
            else:  # the rows among this block's
                start, stop = np.searchsorted(rows, (first, first + count))
                if start == stop:
                    continue
                at, put = rows[start:stop] - first, slice(start, stop)
            join, hi = (self._slice(f, first, count) for f in (name, f"{name}_hi"))
            if at is not None:
                join, hi = join[at], hi[at]
            out[put] = index.lookup(join, hi.__getitem__)
        return out

    def _slice(self, name: str, first: int, count: int) -> np.ndarray:
        dtype = np.dtype(_KEY_FILES[name])
        return np.fromfile(self.dir / f"{name}.bin", dtype=dtype, count=count, offset=first * dtype.itemsize)

    def rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Some rows of a key file, without reading the rest."""
        if not rows.size:
            return np.empty(0, dtype=_KEY_FILES[name])
        mm = np.memmap(self.dir / f"{name}.bin", dtype=_KEY_FILES[name], mode="r")
        out = np.array(mm[rows])
        del mm
        return out


@dataclass
class _Plan:
    """Pass 2's instructions: per record row (in write order) whether it is written and, per
    written span/mark, its enclosing epoch and batch (-1: none) and a span's parent row among the
    winners (int32 where the values fit); the written snapshots."""

    keep_spans: np.ndarray
    keep_marks: np.ndarray
    span_epoch: np.ndarray
    span_batch: np.ndarray
    span_parent: np.ndarray
    mark_epoch: np.ndarray
    mark_batch: np.ndarray
    #: (spilled file, position in the file) of each winning snapshot
    snaps: set[tuple[int, int]]
    #: Row of each written mark's span among the written spans (-1: none, on the sentinel or no
    #: span), when asked for (:func:`read_pieces`'s ``mark_spans``)
    mark_span: np.ndarray | None
    #: Row of the session's root span among the written spans (the first named
    #: ``cirron.session`` without parent; -1: none)
    root: int
    #: Whether no id, parent or mark's span id holds an uppercase A-F: then two of them share a key
    #: only when their texts are equal
    exact_ids: bool


def _rows_dtype(n: int) -> Any:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def _dedupe(keys: _Keys, prefix: str, closed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dedupe of :func:`cirron.spool.arrays.last_of_each` on the 128-bit keys: the joined
    keys are sorted once; only rows whose joined key repeats read their full key. Returns the
    winner mask and the joined keys sorted with their rows (what :class:`~cirron.spool.arrays.JoinedIndex` needs)."""
    join = keys.load(f"{prefix}_join")
    n = len(join)
    order = np.argsort(join, kind="stable").astype(_rows_dtype(n))
    sorted_join = join[order]
    del join
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep, sorted_join, order
    repeat = sorted_join[1:] == sorted_join[:-1]
    if not repeat.any():
        return keep, sorted_join, order
    in_group = np.zeros(n, dtype=bool)
    in_group[1:] |= repeat
    in_group[:-1] |= repeat
    del repeat
    cand = np.sort(order[in_group])  # in write order, as last_of_each wants them
    del in_group
    keep[cand] = last_of_each(keys.rows(f"{prefix}_hi", cand), keys.rows(f"{prefix}_lo", cand),
                              None if closed is None else closed[cand])
    return keep, sorted_join, order


def _mark_winners(keys: _Keys) -> np.ndarray:
    """The dedupe of the marks: :func:`_dedupe` when a joined key repeats, else every mark (a
    plain sort tells, without the argsort that only the repeats need)."""
    join = np.sort(keys.load("m_join"))
    repeats = len(join) > 1 and bool((join[1:] == join[:-1]).any())
    n = len(join)
    del join
    return _dedupe(keys, "m", None)[0] if repeats else np.ones(n, dtype=bool)


def _plan(keys: _Keys, mark_spans: bool = False) -> _Plan:
    from concurrent.futures import ThreadPoolExecutor

    has_marks = (keys.dir / "m_join.bin").stat().st_size > 0
    with ThreadPoolExecutor(1, thread_name_prefix="cirron-plan") as pool:  # the two sorts side by side
        marks_done = pool.submit(_mark_winners, keys) if has_marks else None
        flags = keys.load("s_flags")
        keep, sorted_join, order = _dedupe(keys, "s", (flags & _CLOSED).astype(bool))
        keep_m = marks_done.result() if marks_done is not None else np.zeros(0, dtype=bool)
    # every span record won (no two hold one key): a key found in its batch file is the row the
    # whole session's index would give, and only the keys not found there are looked up in it
    local = bool(keep.all())
    win_rows: np.ndarray | None = None
    if not local:
        won = keep[order]
        win_idx = (np.cumsum(keep) - 1).astype(order.dtype)
        order = win_idx[order[won]]
        sorted_join = sorted_join[won]
        del won, win_idx
        win_rows = np.flatnonzero(keep)
        flags = flags[win_rows]
    # a winner's row among the winners → its row among all spans (what the key files hold)
    joined = JoinedIndex(sorted_join, order, keys.reader("s_hi", win_rows))
    del sorted_join, order
    n = len(flags)

    m_row: np.ndarray | None = None
    if has_marks:
        attached = keys.load("m_att")
        if local:
            m_row = keys.local_rows("m_local_target", keys.file_marks)
            rest = np.flatnonzero((m_row < 0) & (attached == 1))
            if rest.size:
                m_row[rest] = keys.lookup(joined, "m_target", rest)
        else:
            m_row = keys.lookup(joined, "m_target", None)
        hit = (attached == 1) & (m_row >= 0)
        keep_m &= hit | (attached == 0)
        del attached
        m_row = m_row[keep_m]
        m_row[~hit[keep_m]] = -1
        del hit
    if local:
        parent_row = keys.local_rows("s_local_parent", np.diff([*keys.file_spans, keys.n_spans]).tolist())
        rest = np.flatnonzero((parent_row < 0) & ((flags & _HAS_PARENT) != 0))
        if rest.size:
            parent_row[rest] = keys.lookup(joined, "s_parent", rest)
    else:
        parent_row = keys.lookup(joined, "s_parent", win_rows)
    parent_row[(flags & _HAS_PARENT) == 0] = -1
    snaps = _winning_snapshots(keys.snaps, joined)
    del joined
    roots = np.flatnonzero(flags & _ROOT)
    root = int(roots[0]) if roots.size else -1
    del roots

    index = np.full(n, -1, dtype=np.int64)
    step_rows, step_index = keys.load("s_step_row"), keys.load("s_step_index")
    if win_rows is not None:  # the winning step spans, at their row among the winners
        at = np.searchsorted(win_rows, step_rows)
        won_step = (at < n) & (win_rows[np.minimum(at, max(n - 1, 0))] == step_rows) if n else at < 0
        step_rows, step_index = at[won_step], step_index[won_step]
        del at, won_step
    index[step_rows] = step_index
    del step_rows, step_index, win_rows
    span_epoch, span_batch = enclosing_steps(parent_row, (flags & _EPOCH) != 0, (flags & _BATCH) != 0, index)
    del flags, index
    span_epoch, span_batch = _compact(span_epoch), _compact(span_batch)
    if m_row is not None and n:
        safe = np.maximum(m_row, 0)
        mark_epoch = np.where(m_row >= 0, span_epoch[safe], -1).astype(span_epoch.dtype)
        mark_batch = np.where(m_row >= 0, span_batch[safe], -1).astype(span_batch.dtype)
        del safe
    else:
        mark_epoch = mark_batch = np.full(int(keep_m.sum()), -1, dtype=np.int32)
    mark_span = None
    if mark_spans:
        mark_span = m_row if m_row is not None else np.zeros(0, dtype=np.int32)
    del m_row
    exact_ids = not keys.load("f_upper").any()
    return _Plan(keep, keep_m, span_epoch, span_batch, parent_row, mark_epoch, mark_batch, snaps, mark_span, root,
                 exact_ids)


def _compact(a: np.ndarray) -> np.ndarray:
    """``a`` as int32 when its values fit (half the memory while the pieces are written)."""
    i32 = np.iinfo(np.int32)
    if not a.size or (int(a.min()) >= i32.min and int(a.max()) <= i32.max):
        return a.astype(np.int32)
    return a


def _winning_snapshots(snaps: list[tuple[int, int, bool, Any, Any]], joined: JoinedIndex) -> set[tuple[int, int]]:
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
            h, lo = _key(sid)
            key_hi = np.array([h], dtype=np.uint64)
            ok = bool(joined.lookup(key_hi ^ np.uint64(lo), key_hi.__getitem__)[0] >= 0)
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


def iter_pieces(info: SessionInfo, *, marks: bool = True,
                session_parents: bool = False) -> Iterator[SessionColumns] | None:
    """``info``'s winning records as :class:`SessionColumns` pieces (see the module docstring), or
    ``None`` when the columns cannot carry them exactly (then read the session the reference
    way). ``marks=False``: spans only. The pieces' ``span_parent`` is the parent's row in the
    same piece (-1: none, or in another piece); with ``session_parents`` its row among all the
    session's winning spans (-1: none), for a caller that joins the pieces."""
    pieces = read_pieces(info, marks=marks, session_parents=session_parents)
    return None if pieces is None else _second_pass(info, pieces.spill, pieces.plan, pieces.tmp, session_parents)


class Pieces:
    """The pieces of :func:`iter_pieces`, to be read more than once: each iteration gives the same
    pieces (step 3 again, cheap next to steps 1 and 2) until :meth:`close` removes the spill (a
    ``with`` block closes it too)."""

    def __init__(self, info: SessionInfo, spill: _Spill, plan: _Plan, tmp: tempfile.TemporaryDirectory[str],
                 session_parents: bool) -> None:
        self.info: SessionInfo = info
        self.spill: _Spill = spill
        self.plan: _Plan = plan
        self.tmp: tempfile.TemporaryDirectory[str] = tmp
        self.session_parents: bool = session_parents

    @property
    def mark_span(self) -> np.ndarray | None:
        """Row of each written mark's span among the written spans, in session order (-1: none,
        on the sentinel or no span); ``None`` unless :func:`read_pieces` was asked to keep it."""
        return self.plan.mark_span

    @property
    def root(self) -> int:
        """Row of the session's root span among the written spans (the first named
        ``cirron.session`` without parent), -1 where there is none."""
        return self.plan.root

    @property
    def exact_ids(self) -> bool:
        """Whether no id, parent or mark's span id holds an uppercase A-F, so two of them name
        the same span only when their texts are equal (the keys here take a hex id's bits
        whatever its case; the column encoders compare texts)."""
        return self.plan.exact_ids

    def __iter__(self) -> Iterator[SessionColumns]:
        return _second_pass(self.info, self.spill, self.plan, None, self.session_parents)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each piece's spans and marks end among the session's winning ones, in iteration
        order; a piece of neither (not given by iteration) ends where the one before it does."""
        with_marks = self.spill._marks is not None
        ends = np.cumsum([len(g) for g in _groups(self.spill, with_marks)], dtype=np.int64)
        return (_winners_before(self.plan.keep_spans, [f[1] for f in self.spill.files], ends),
                _winners_before(self.plan.keep_marks, [f[2] for f in self.spill.files] if with_marks else [], ends))

    def close(self) -> None:
        self.tmp.cleanup()

    def __enter__(self) -> Pieces:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_pieces(info: SessionInfo, *, marks: bool = True, session_parents: bool = False,
                mark_spans: bool = False) -> Pieces | None:
    """What :func:`iter_pieces` reads, as :class:`Pieces` a caller may iterate several times.
    ``mark_spans``: keep the row of each written mark's span (:attr:`Pieces.mark_span`), 4 bytes a
    mark."""
    if not info.streamable:
        return None
    tmp = tempfile.TemporaryDirectory(prefix="cirron-spill-")
    try:
        spill, plan = _first_pass(info, Path(tmp.name), marks, mark_spans)
    except Unsupported:
        tmp.cleanup()
        return None
    except BaseException:
        tmp.cleanup()
        raise
    return Pieces(info, spill, plan, tmp, session_parents)


def _first_pass(info: SessionInfo, directory: Path, with_marks: bool, mark_spans: bool) -> tuple[_Spill, _Plan]:
    from cirron.spool.reconstruct import paused_gc

    keys = _Keys(directory)
    spill = _Spill(directory, with_marks)
    pool = pa.default_memory_pool()

    def with_keys(file_no: int, got: FileBatches) -> tuple[int, FileBatches, dict[str, np.ndarray]]:
        return file_no, got, _Keys.of(got[0], got[1] if with_marks else None)

    try:
        with paused_gc(), closing(map_session_files(info, with_marks, with_keys)) as files:
            for file_no, (span_batch, mark_batch, values, own, snaps), file_keys in files:
                keys.add(len(span_batch), file_keys)
                del file_keys
                for j, sn in enumerate(snaps):
                    keys.snaps.append((len(spill.files), j, own, sn.id, sn.span_id))
                spill.add(file_no, span_batch, mark_batch if with_marks else None, values, snaps)
                del span_batch, mark_batch, values, snaps
    finally:
        spill.finish()
        keys.close()
    # Arrow's pool reuses what one file's columns freed for the next (given back after each
    # few files, each file's columns were fresh pages: a third of the command's page faults);
    # what pass 1 leaves goes back once, before the plan's sorts
    pool.release_unused()
    with returned_memory():  # its big temporaries go back to the system, not to a heap kept through pass 2
        return spill, _plan(keys, mark_spans)


def _second_pass(info: SessionInfo, spill: _Spill, plan: _Plan, tmp: tempfile.TemporaryDirectory | None,
                 session_parents: bool) -> Iterator[SessionColumns]:
    """Step 3; ``tmp`` (the spill) is removed when it ends, if given."""
    try:
        spans_in = _Mapped(spill.dir / "spans.arrow")
        marks_in = _Mapped(spill.dir / "marks.arrow") if spill._marks is not None else None
        with open(spill.dir / "extra.pickle", "rb") as extra:
            cursor = _Cursor()
            for group in _groups(spill, marks_in is not None):
                piece = _piece(info, spill, plan, cursor, group, spans_in, marks_in, extra, session_parents)
                if piece is not None:
                    yield piece
                del piece  # its memory serves the next piece (Arrow's pool keeps it)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _winners_before(keep: np.ndarray, counts: list[int], ends: np.ndarray) -> np.ndarray:
    """How many of the records (``keep``: whether each is written; ``counts``: records per spilled
    file) of the spilled files before each of ``ends`` are written."""
    if not counts:
        return np.zeros(len(ends), dtype=np.int64)
    records = np.cumsum([0, *counts], dtype=np.int64)
    written = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=written[1:])
    return written[records[ends]]


def _groups(spill: _Spill, with_marks: bool) -> list[list[int]]:
    """The spilled files of each piece: whole files, until a piece holds :data:`PIECE_ROWS` records."""
    groups: list[list[int]] = []
    group: list[int] = []
    rows = 0
    for k, (_file_no, n_spans, n_marks, _x) in enumerate(spill.files):
        group.append(k)
        rows += max(n_spans, n_marks if with_marks else 0)
        if rows >= PIECE_ROWS or k == len(spill.files) - 1:
            groups.append(group)
            group, rows = [], 0
    return groups


class _Mapped:
    """An Arrow IPC file read by memory mapping (no copy into fresh pages), mapped afresh for each
    piece: a mapping's touched pages count as resident until it goes, so one mapping of the whole
    file would hold the whole spill by the last piece."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def batches(self, group: list[int]) -> list[pa.RecordBatch]:
        reader = pa.ipc.open_file(pa.memory_map(self.path))
        return [reader.get_batch(k) for k in group]


@dataclass
class _Cursor:
    """Where the next piece starts: span/mark rows (all records) and winning span/mark rows."""

    span: int = 0
    mark: int = 0
    win_span: int = 0
    win_mark: int = 0


def _piece(info: SessionInfo, spill: _Spill, plan: _Plan, cur: _Cursor, group: list[int], spans_in: Any,
           marks_in: Any, extra: Any, session_parents: bool) -> SessionColumns | None:
    span_t = pa.Table.from_batches(spans_in.batches(group), span_schema())
    n_s = span_t.num_rows
    keep = plan.keep_spans[cur.span: cur.span + n_s]
    w0, w1 = cur.win_span, cur.win_span + int(keep.sum())
    span_t = span_t.filter(pa.array(keep)) if not keep.all() else span_t
    parent = plan.span_parent[w0:w1]
    if not session_parents:
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
        mark_t = pa.Table.from_batches(marks_in.batches(group), mark_schema())
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
