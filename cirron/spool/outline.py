"""One big session read in bounded memory: two passes over its batch files instead of a rebuild.

Rebuilding a session whole holds all its records. For a session whose batch files hold nothing
else (:attr:`~cirron.spool.catalog.SessionInfo.streamable`) the readers here make two passes:

1. :func:`session_columns` reads the files once and keeps, per record, its 128-bit id key, its
   parent's (or for a mark its span's) key and its times in numpy arrays, about 80 bytes a
   record; the dedupe winners (:func:`cirron.spool.reconstruct.span_wins`, last write wins for
   marks), each span's parent and each mark's span (its own, else the session root, as
   :func:`cirron.spool.reconstruct.mark_span_id` says) are computed on them;
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

Memory: the columns, one batch file's records, and at most :data:`SPILL_BYTES` of encoded marks
waiting for their span.
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

from cirron._schema import ROOT_SENTINEL
from cirron.spool.arrays import id_keys, last_of_each
from cirron.spool.catalog import SessionInfo
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
    cols = session_columns(info)
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
    target = np.full(int(cols.mark_start[-1]), -1, dtype=np.int64)
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
    late_rows = set(late.tolist())
    try:
        if late_rows:
            late_files = np.unique(np.searchsorted(ol.mark_start, late, side="right") - 1)
            for fi in late_files.tolist():
                batch = read_batch(ol.files[fi], quiet, "full")
                base = int(ol.mark_start[fi])
                for j, m in enumerate(batch["marks"] if batch is not None else ()):
                    if base + j in late_rows:
                        late_store.add(int(ol.mark_target[base + j]), encode(m), m if keep_raw(m) else None)
        for fi, bf in enumerate(ol.files):
            batch = read_batch(bf, quiet, "full")
            if batch is None:
                continue
            s0, m0 = int(ol.span_start[fi]), int(ol.mark_start[fi])
            local: dict[int, list[tuple[bytes, Any]]] = {}
            targets = ol.mark_target[m0:m0 + len(batch["marks"])].tolist()
            for j, m in enumerate(batch["marks"]):
                t = targets[j]
                if t < 0 or (m0 + j) in late_rows:
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


#: The key columns :func:`append_span_keys` adds per batch: id halves, the parent's joined key,
#: whether there is a parent, whether the span is closed, and its times.
SPAN_KEY_COLUMNS = ("hi", "lo", "pjoin", "has_p", "closed", "start", "end")


def append_span_keys(cols: dict[str, list[np.ndarray]], spans: list[Any]) -> None:
    """Append one batch's span key columns (:data:`SPAN_KEY_COLUMNS`) to ``cols``."""
    hi, lo = id_keys([s.id for s in spans])
    cols["hi"].append(hi)
    cols["lo"].append(lo)
    parents = [s.parent_id for s in spans]
    phi, plo = id_keys([p if p is not None else "" for p in parents])
    cols["pjoin"].append(phi ^ plo)
    cols["has_p"].append(np.fromiter((p is not None for p in parents), dtype=bool, count=len(spans)))
    cols["closed"].append(np.fromiter((s.end_ns is not None for s in spans), dtype=bool, count=len(spans)))
    cols["start"].append(time_column([s.start_ns for s in spans]))
    cols["end"].append(time_column([s.end_ns for s in spans]))


def target_keys(recs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Key columns of marks or snapshots: their id halves, the joined key of the span each names,
    and whether it names a span (rather than the root sentinel or none)."""
    hi, lo = id_keys([r.id for r in recs])
    targets = [r.span_id for r in recs]
    on_span = np.fromiter((t is not None and t != ROOT_SENTINEL for t in targets), dtype=bool, count=len(recs))
    thi, tlo = id_keys([t if t is not None and t != ROOT_SENTINEL else "" for t in targets])
    return hi, lo, thi ^ tlo, on_span


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


def view_outline(info: SessionInfo, depth: int | None, min_wall_ns: int | None) -> ViewOutline | None:
    """What ``view`` prints of ``info``'s session (its tree to ``depth``, spans shorter than
    ``min_wall_ns`` hidden with what hangs below them), as the whole-session view computes it
    (``cirron_cli.traces``), keeping about 50 bytes per record. ``None`` when the session's ids
    are not all 32 lowercase hex digits (their order would then need the ids themselves)."""
    with paused_gc():
        return _view_outline(info, depth, min_wall_ns)


_NO_INT = np.iinfo(np.int64).min
#: What :class:`SessionColumns` holds for an unknown time or integer.
NO_TIME, NO_INT = _NO_TIME, _NO_INT


@dataclass
class SessionColumns:
    """One summary-like pass over a streamable session (:func:`session_columns`): its winning
    spans (``idx`` below: their position among the winners, in write order) and winning marks."""

    files: list[BatchFile]
    #: Per file (and one past the end): its first span row and first mark row.
    span_start: np.ndarray
    mark_start: np.ndarray
    #: Per winning span: its row, id key, times (``_NO_TIME`` when unknown), parent's idx (-1: none).
    rows: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    start: np.ndarray
    end: np.ndarray
    parent: np.ndarray
    root_idx: int
    #: Per winning span, when asked: thread id and rank (``_NO_INT`` when unknown).
    thread: np.ndarray | None
    rank: np.ndarray | None
    #: Per winning mark of the session, in write order: its row, time (0 when unknown), the idx of
    #: its own span (-1: not a span of the session) and of the span it hangs from (its own, else
    #: the root).
    mark_rows: np.ndarray
    mark_ts: np.ndarray
    mark_span: np.ndarray
    mark_target: np.ndarray


def session_columns(info: SessionInfo, *, threads: bool = False) -> SessionColumns | None:
    """Columns of ``info``'s session from one pass over its batch files, about 80 bytes per
    record (``threads``: 16 more per span). ``None`` when its ids are not all 32 lowercase hex
    digits (their keys would not sort as the ids do) or it has no root."""
    with paused_gc():
        return _session_columns(info, threads)


def _session_columns(info: SessionInfo, threads: bool) -> SessionColumns | None:
    quiet = lambda _m: None  # noqa: E731
    files: list[BatchFile] = []
    names = [*SPAN_KEY_COLUMNS] + (["thread", "rank"] if threads else [])
    sp: dict[str, list[np.ndarray]] = {k: [] for k in names}
    mk: dict[str, list[np.ndarray]] = {k: [] for k in ("hi", "lo", "tjoin", "att", "ts")}
    span_start, mark_start = [0], [0]
    for bf in info.files:
        batch = read_batch(bf, quiet, "export")  # summary reads leave out the marks' times
        if batch is None:
            continue
        files.append(bf)
        spans, marks = batch["spans"], batch["marks"]
        ids = [s.id for s in spans]
        if not _plain_ids(ids):
            return None
        append_span_keys(sp, spans)
        if threads:
            sp["thread"].append(time_column([s.thread_id for s in spans]))
            sp["rank"].append(time_column([s.rank for s in spans]))
        own = batch["session_id"] == info.id
        mhi, mlo, tjoin, on_span = target_keys(marks)
        mk["hi"].append(mhi)
        mk["lo"].append(mlo)
        mk["tjoin"].append(tjoin)
        # 1: on a span id; 0: on the sentinel (or none) in the session's own batch; -1: neither
        mk["att"].append(np.where(on_span, 1, 0 if own else -1).astype(np.int8))
        mk["ts"].append(time_column([m.ts_ns for m in marks]))
        span_start.append(span_start[-1] + len(spans))
        mark_start.append(mark_start[-1] + len(marks))
        del batch, spans, marks
    # marks first: their per-file arrays as one before the spans' temporaries exist
    mcat = {k: stack_parts(v, np.uint64) for k, v in mk.items()}
    del mk
    hi, lo, closed = stack_parts(sp["hi"], np.uint64), stack_parts(sp["lo"], np.uint64), stack_parts(sp["closed"], bool)
    rows = np.flatnonzero(last_of_each(hi, lo, closed))
    del closed
    whi, wlo = hi[rows], lo[rows]
    del hi, lo
    pjoin = stack_parts(sp["pjoin"], np.uint64)[rows]
    has_p = stack_parts(sp["has_p"], bool)[rows].astype(bool)
    start = stack_parts(sp["start"], np.int64)[rows].astype(np.int64)
    end = stack_parts(sp["end"], np.int64)[rows].astype(np.int64)
    thread = stack_parts(sp["thread"], np.int64)[rows].astype(np.int64) if threads else None
    rank = stack_parts(sp["rank"], np.int64)[rows].astype(np.int64) if threads else None
    del sp
    n = len(rows)
    join = whi ^ wlo
    by_join = np.argsort(join, kind="stable")
    sorted_join = join[by_join]
    del join

    def lookup(keys: np.ndarray) -> np.ndarray:
        if not n:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_join, keys), n - 1)
        return np.where(sorted_join[pos] == keys, by_join[pos], -1)

    root_hi, root_lo = id_keys([info.id])
    root_idx = int(lookup(root_hi ^ root_lo)[0])
    if root_idx < 0:
        return None
    parent = np.where(has_p, lookup(pjoin), -1)
    parent[root_idx] = -1
    del pjoin, has_p

    mwin = last_of_each(mcat.pop("hi"), mcat.pop("lo"), None)
    att = mcat.pop("att").astype(np.int8)
    own_span = np.where(att == 1, lookup(mcat.pop("tjoin").astype(np.uint64)), -1)
    member = mwin & ((own_span >= 0) | (att >= 0))
    del mwin
    mark_rows = np.flatnonzero(member)
    own_span = own_span[mark_rows]
    mark_ts = mcat.pop("ts").astype(np.int64)[mark_rows]
    mark_ts = np.where(mark_ts == _NO_TIME, 0, mark_ts)
    del mcat, att, member
    return SessionColumns(files, np.array(span_start, np.int64), np.array(mark_start, np.int64), rows, whi, wlo,
                          start, end, parent, root_idx, thread, rank, mark_rows, mark_ts, own_span,
                          np.where(own_span >= 0, own_span, root_idx))


def _view_outline(info: SessionInfo, depth: int | None, min_wall_ns: int | None) -> ViewOutline | None:
    cols = _session_columns(info, False)
    if cols is None:
        return None
    rows, whi, wlo, start, end = cols.rows, cols.hi, cols.lo, cols.start, cols.end
    parent, root_idx = cols.parent, cols.root_idx
    n = len(rows)
    valid = (start != _NO_TIME) & (end != _NO_TIME)
    wall = np.where(valid, end - start, 0)
    visible = np.ones(n, dtype=bool) if min_wall_ns is None else ~(valid & (wall < min_wall_ns))
    visible[root_idx] = True
    # depth and reachability (a span shows when it and all its ancestors are visible)
    level = np.full(n, -1, dtype=np.int32)
    level[root_idx] = 0
    reach = np.zeros(n, dtype=bool)
    reach[root_idx] = True
    frontier = np.array([root_idx])
    by_parent = np.argsort(parent, kind="stable")
    sorted_parent = parent[by_parent]
    levels: list[np.ndarray] = []
    d = 0
    while len(frontier):
        lo_pos = np.searchsorted(sorted_parent, frontier, side="left")
        hi_pos = np.searchsorted(sorted_parent, frontier, side="right")
        kids = np.concatenate([by_parent[a:b] for a, b in zip(lo_pos.tolist(), hi_pos.tolist())])
        kids = kids[level[kids] < 0]  # never revisit (a cycle cannot reach here, but be safe)
        d += 1
        level[kids] = d
        kids = kids[visible[kids]]
        reach[kids] = True
        if len(kids):
            levels.append(kids)
        frontier = kids
    del by_parent, sorted_parent
    limit = np.iinfo(np.int32).max if depth is None else depth
    shown = reach & (level <= limit)
    # collapsed nodes: below each shown span at the limit, its reachable descendants
    coll_idx = np.flatnonzero(shown & (level == limit)) if depth is not None else np.empty(0, np.int64)
    coll_spans = np.zeros(0, dtype=np.int64)
    coll_ns = np.zeros(0, dtype=np.int64)
    if len(coll_idx):
        desc = np.zeros(n, dtype=np.int64)
        for kids in reversed(levels):
            np.add.at(desc, parent[kids], desc[kids] + 1)
        child_wall = np.zeros(n, dtype=np.int64)
        timed = np.concatenate(levels) if levels else np.empty(0, np.int64)
        timed = timed[valid[timed]]
        np.add.at(child_wall, parent[timed], wall[timed])
        coll_spans, coll_ns = desc[coll_idx], child_wall[coll_idx]
        keep = coll_spans > 0
        coll_idx, coll_spans, coll_ns = coll_idx[keep], coll_spans[keep], coll_ns[keep]
        del desc, child_wall
    del levels, visible, reach, wall, valid

    # marks: shown under an expanded span
    expand = shown & (level < limit)
    ok = expand[cols.mark_target]
    mark_rows = cols.mark_rows[ok]
    mark_parent = cols.mark_target[ok]
    mark_ts = cols.mark_ts[ok]
    del ok

    # children of every expanded span, spans then marks at equal times, in print order
    child_idx = np.flatnonzero(shown & (parent >= 0))
    child_idx = child_idx[expand[parent[child_idx]]]
    c_parent = np.concatenate([parent[child_idx], mark_parent])
    c_time = np.concatenate([np.where(start[child_idx] == _NO_TIME, 0, start[child_idx]), mark_ts])
    c_group = np.concatenate([np.zeros(len(child_idx), np.int8), np.ones(len(mark_rows), np.int8)])
    tie1 = np.concatenate([whi[child_idx], mark_rows.astype(np.uint64)])
    tie2 = np.concatenate([wlo[child_idx], np.zeros(len(mark_rows), np.uint64)])
    c_kind = np.concatenate([np.full(len(child_idx), NODE_SPAN, np.int8), np.full(len(mark_rows), NODE_MARK, np.int8)])
    c_ref = np.concatenate([rows[child_idx], mark_rows])
    c_span = np.concatenate([child_idx, np.full(len(mark_rows), -1, np.int64)])
    order = np.lexsort((tie2, tie1, c_group, c_time, c_parent))
    c_parent, c_kind, c_ref, c_span = c_parent[order], c_kind[order], c_ref[order], c_span[order]
    del c_time, c_group, tie1, tie2, order, whi, wlo, mark_parent, mark_ts
    coll_of = dict(zip(coll_idx.tolist(), range(len(coll_idx))))

    kinds: list[int] = []
    refs: list[int] = []
    depths: list[int] = []
    stack: list[tuple[int, int, int, int]] = [(NODE_SPAN, int(rows[root_idx]), root_idx, 0)]
    lv = level
    while stack:
        k, ref, idx, d = stack.pop()
        kinds.append(k)
        refs.append(ref)
        depths.append(d)
        if k != NODE_SPAN:
            continue
        c = coll_of.get(idx)
        if c is not None:
            kinds.append(NODE_COLLAPSED)
            refs.append(c)
            depths.append(d + 1)
            continue
        if lv[idx] >= limit:
            continue
        a = int(np.searchsorted(c_parent, idx, side="left"))
        b = int(np.searchsorted(c_parent, idx, side="right"))
        for j in range(b - 1, a - 1, -1):
            stack.append((int(c_kind[j]), int(c_ref[j]), int(c_span[j]), d + 1))
    return ViewOutline(cols.files, cols.span_start, cols.mark_start,
                       np.array(kinds, np.int8), np.array(refs, np.int64), np.array(depths, np.int32),
                       coll_spans, coll_ns, int(rows[root_idx]))
