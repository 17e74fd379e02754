"""One session's records in chunks, deduped, with the enclosing epoch and batch of each.

Exports that copy records (Parquet, CSV, JSON) do not need a session's tree, only its winning
records. For a session whose batch files hold nothing else (:attr:`SessionInfo.streamable`,
what cirron's writer produces) :func:`iter_chunks` reads it in two passes over its files:

1. a summary read keeps, per record, a 128-bit key of its id, whether it is closed, its parent's
   key and, for ``epoch``/``batch`` spans, their index, in numpy arrays (about 40 bytes a
   record); the dedupe winners (:func:`cirron.spool.reconstruct.span_wins`: the last closed
   record, else the last one; last write wins for marks and snapshots) and each record's
   enclosing epoch and batch index are computed on those arrays;
2. each file is read in full again and its winning records are yielded as one :class:`Chunk`.

Memory holds the arrays plus one batch file's records, whatever the session's size. Any other
session (records spread over other sessions' files, foreign writers) is rebuilt whole by the one
reconstruction (:mod:`cirron.spool.reconstruct`) and yielded as a single chunk with the same
columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cirron._schema import BATCH_SPAN_NAME, EPOCH_SPAN_NAME
from cirron.spool.arrays import enclosing_steps, last_of_each
from cirron.spool.catalog import Catalog, SessionInfo, info_from_session
from cirron.spool.reader import read_batch
from cirron.spool.reconstruct import paused_gc
from cirron.spool.sessions import Session

__all__ = ["Chunk", "chunk_of_session", "iter_chunks", "span_status"]

_KIND_EPOCH, _KIND_BATCH = 1, 2
_MASK64 = (1 << 64) - 1


@dataclass
class Chunk:
    """Winning records of one session, in write order, with per-record analyst columns."""

    session: SessionInfo
    spans: list[Any]
    marks: list[Any]
    snapshots: list[Any]
    #: Index of the nearest ``epoch``/``batch`` span at or above each span (None: none).
    span_epoch: list[Any] = field(default_factory=list)
    span_batch: list[Any] = field(default_factory=list)
    #: The same for the span each mark hangs from.
    mark_epoch: list[Any] = field(default_factory=list)
    mark_batch: list[Any] = field(default_factory=list)


def span_status(end_ns: Any, attrs_text: str) -> tuple[str, str | None]:
    """``(status, error)`` of a span: ``open`` (no end), ``error`` (an exception left it; the
    error text), ``interrupted`` (a signal or KeyboardInterrupt; its name) or ``ok``."""
    if end_ns is None:
        return "open", None
    if '"error"' in attrs_text or '"interrupted"' in attrs_text:
        import orjson

        try:
            attrs = orjson.loads(attrs_text)
        except orjson.JSONDecodeError:
            attrs = None
        if isinstance(attrs, dict):
            if attrs.get("error") is not None:
                return "error", str(attrs["error"])
            if attrs.get("interrupted") is not None:
                return "interrupted", str(attrs["interrupted"])
    return "ok", None


def _key(rec_id: Any) -> tuple[int, int]:
    """A 128-bit key of an id: the id itself when it is 32 hex digits, else a BLAKE2 digest."""
    if type(rec_id) is str and len(rec_id) == 32:
        try:
            v = int(rec_id, 16)
            return v >> 64, v & _MASK64
        except ValueError:
            pass
    d = hashlib.blake2b(str(rec_id).encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "big"), int.from_bytes(d[8:], "big")


def _join_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return hi ^ lo


def _spans_by_key(join: np.ndarray, hi: np.ndarray, keep: np.ndarray) -> Any:
    """The winning spans (``keep``), to find the row of a span by its whole key."""
    from cirron.spool.arrays import JoinedIndex

    return JoinedIndex.of(join, hi.__getitem__, rows=np.flatnonzero(keep))


def _enclosing(spans_by_key: Any, parent: np.ndarray, parent_hi: np.ndarray, has_parent: np.ndarray,
               kind: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every span row, the index of the nearest epoch and batch span at or above it (-1: none),
    following parent links (joined keys ``parent`` and their ``hi`` halves) among the winning
    records (``spans_by_key``: :func:`_spans_by_key`)."""
    if len(parent) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy()
    parent_row = spans_by_key.lookup(parent, parent_hi.__getitem__)
    parent_row[~has_parent] = -1
    return enclosing_steps(parent_row, kind == _KIND_EPOCH, kind == _KIND_BATCH, index)


def _none_list(a: np.ndarray) -> list[Any]:
    return [None if v < 0 else int(v) for v in a.tolist()]


@dataclass
class _Plan:
    """Pass 1 over a streamable session's files."""

    keep_spans: np.ndarray
    keep_marks: np.ndarray
    keep_snaps: np.ndarray
    span_epoch: np.ndarray
    span_batch: np.ndarray
    mark_epoch: np.ndarray
    mark_batch: np.ndarray
    #: Per mark/snapshot row: whether it belongs to the session at all.
    mark_in: np.ndarray
    snap_in: np.ndarray


def _plan(info: SessionInfo) -> _Plan:
    from cirron.spool.arrays import Column, id_keys
    from cirron.spool.outline import target_keys

    u64 = np.uint64
    span_cols = {k: Column(t) for k, t in (("hi", u64), ("lo", u64), ("closed", bool), ("pjoin", u64),
                                           ("phi", u64), ("has_p", bool), ("kind", np.int8), ("index", np.int64))}
    # per mark and snapshot: id halves, the joined key of its span and its hi half, and 1: hangs from a span id;
    # 0: from the sentinel (or no span) in the session's own batch; -1: neither
    target_cols = [{k: Column(t) for k, t in (("hi", u64), ("lo", u64), ("t", u64), ("thi", u64),
                                                                 ("att", np.int8))}
                   for _ in range(2)]
    quiet = lambda _m: None  # noqa: E731 - the summary pass already reported every file
    for bf in info.files:
        batch = read_batch(bf, quiet, "keys")
        if batch is None:
            continue
        own_batch = batch["session_id"] == info.id
        spans = batch["spans"]
        n = len(spans)
        hi, lo = id_keys([s.id for s in spans])
        span_cols["hi"].append(hi)
        span_cols["lo"].append(lo)
        span_cols["closed"].append(np.fromiter((s.end_ns is not None for s in spans), dtype=bool, count=n))
        parents = [s.parent_id for s in spans]
        phi, plo = id_keys([p if p is not None else "" for p in parents])
        has_p = np.fromiter((p is not None for p in parents), dtype=bool, count=n)
        span_cols["pjoin"].append(np.where(has_p, phi ^ plo, u64(0)))
        span_cols["phi"].append(np.where(has_p, phi, u64(0)))
        span_cols["has_p"].append(has_p)
        kinds = [(_KIND_EPOCH if s.name == EPOCH_SPAN_NAME else _KIND_BATCH if s.name == BATCH_SPAN_NAME else 0)
                 if type(s.index) is int else 0 for s in spans]
        span_cols["kind"].append(np.array(kinds, dtype=np.int8))
        span_cols["index"].append(np.fromiter((s.index if k else -1 for s, k in zip(spans, kinds)),
                                              dtype=np.int64, count=n))
        for recs, cols in ((batch["marks"], target_cols[0]), (batch["snapshots"], target_cols[1])):
            rhi, rlo, thi, tlo, on = target_keys(recs)
            cols["hi"].append(rhi)
            cols["lo"].append(rlo)
            cols["t"].append(np.where(on, thi ^ tlo, u64(0)))
            cols["thi"].append(np.where(on, thi, u64(0)))
            cols["att"].append(np.where(on, 1, 0 if own_batch else -1).astype(np.int8))
        del batch, spans

    shi, slo = span_cols["hi"].take(), span_cols["lo"].take()
    join = _join_key(shi, slo)
    keep_spans = last_of_each(shi, slo, span_cols["closed"].take())
    del slo
    spans_by_key = _spans_by_key(join, shi, keep_spans)
    del join
    kind_a = span_cols["kind"].take()
    index_a = span_cols["index"].take()
    epoch, batch_ = _enclosing(spans_by_key, span_cols["pjoin"].take(), span_cols["phi"].take(),
                               span_cols["has_p"].take(), kind_a, index_a)
    del kind_a, index_a

    def attach(cols: dict[str, Any]) -> tuple[np.ndarray, ...]:
        mhi, mlo = cols["hi"].take(), cols["lo"].take()
        keep = last_of_each(mhi, mlo, None)
        del mhi, mlo
        a = cols["att"].take()
        t_hi = cols["thi"].take()
        row = spans_by_key.lookup(cols["t"].take(), t_hi.__getitem__)
        del t_hi
        row[a != 1] = -1
        hit = row >= 0
        # A streamable session's marks on span ids all hit (the index checked), so a mark is in
        # it when it hangs from a span or from the sentinel in one of the session's own batches.
        member = hit | (a == 0)
        del a
        e = np.where(hit, epoch[np.maximum(row, 0)] if len(epoch) else -1, -1)
        b = np.where(hit, batch_[np.maximum(row, 0)] if len(batch_) else -1, -1)
        return keep, member, e, b

    keep_m, mark_in, mark_e, mark_b = attach(target_cols[0])
    keep_n, snap_in, _e, _b = attach(target_cols[1])
    return _Plan(keep_spans, keep_m, keep_n, epoch, batch_, mark_e, mark_b, mark_in, snap_in)


def _chunks_streamed(info: SessionInfo, fields: str) -> Iterator[Chunk]:
    from cirron._memory import returned_memory

    with returned_memory(), paused_gc():
        plan = _plan(info)
    quiet = lambda _m: None  # noqa: E731
    si = mi = ni = 0
    for bf in info.files:
        batch = read_batch(bf, quiet, fields)
        if batch is None:
            continue
        spans, marks, snaps = batch["spans"], batch["marks"], batch["snapshots"]
        s_sl = slice(si, si + len(spans))
        m_sl = slice(mi, mi + len(marks))
        n_sl = slice(ni, ni + len(snaps))
        si, mi, ni = s_sl.stop, m_sl.stop, n_sl.stop
        ks = plan.keep_spans[s_sl]
        km = plan.keep_marks[m_sl] & plan.mark_in[m_sl]
        kn = plan.keep_snaps[n_sl] & plan.snap_in[n_sl]
        out_spans = [s for s, k in zip(spans, ks.tolist()) if k]
        out_marks = [m for m, k in zip(marks, km.tolist()) if k]
        out_snaps = [x for x, k in zip(snaps, kn.tolist()) if k]
        if not (out_spans or out_marks or out_snaps):
            continue
        yield Chunk(info, out_spans, out_marks, out_snaps,
                    _none_list(plan.span_epoch[s_sl][ks]), _none_list(plan.span_batch[s_sl][ks]),
                    _none_list(plan.mark_epoch[m_sl][km]), _none_list(plan.mark_batch[m_sl][km]))
        del batch, spans, marks, snaps, out_spans, out_marks, out_snaps


def chunk_of_session(sess: Session, info: SessionInfo | None = None) -> Chunk:
    """A whole rebuilt session as one chunk (its analyst columns computed on its tree)."""
    if info is None:
        info = info_from_session(sess, Path())
    n = len(sess.spans)
    hi = np.empty(n, dtype=np.uint64)
    lo = np.empty(n, dtype=np.uint64)
    p_join = np.zeros(n, dtype=np.uint64)
    p_hi = np.zeros(n, dtype=np.uint64)
    p_has = np.zeros(n, dtype=bool)
    kind = np.zeros(n, dtype=np.int8)
    index = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(sess.spans):
        hi[i], lo[i] = _key(s["id"])
        parent = s.get("parent_id")
        if parent is not None:
            ph, pl = _key(parent)
            p_join[i], p_hi[i] = ph ^ pl, ph
            p_has[i] = True
        idx, name = s.get("index"), s.get("name")
        if type(idx) is int and name in (EPOCH_SPAN_NAME, BATCH_SPAN_NAME):
            kind[i] = _KIND_EPOCH if name == EPOCH_SPAN_NAME else _KIND_BATCH
            index[i] = idx
    spans_by_key = _spans_by_key(_join_key(hi, lo), hi, np.ones(n, dtype=bool))
    epoch, batch = _enclosing(spans_by_key, p_join, p_hi, p_has, kind, index)
    by_id = {s["id"]: i for i, s in enumerate(sess.spans)}
    rows = [by_id.get(m.get("span_id"), -1) for m in sess.marks]
    m_e = [None if r < 0 or epoch[r] < 0 else int(epoch[r]) for r in rows]
    m_b = [None if r < 0 or batch[r] < 0 else int(batch[r]) for r in rows]
    return Chunk(info, sess.spans, sess.marks, sess.snapshots, _none_list(epoch), _none_list(batch), m_e, m_b)


def iter_chunks(cat: Catalog, infos: Sequence[SessionInfo], fields: str = "export", *,
                columnar: bool = False, marks: bool = True) -> Iterator[Any]:
    """The records of ``infos``, session after session, in chunks (see the module docstring).

    With ``columnar``, each session :mod:`cirron.spool.columnar` can read comes as one
    :class:`~cirron.spool.columnar.SessionColumns` instead (the same records, as Arrow columns),
    a streamable one too big for that as several (:func:`cirron.spool.pieces.iter_pieces`); the
    others as chunks. ``marks=False``: a spans-only reader may leave the columns' marks out."""
    for info in infos:
        if columnar:
            from cirron.spool.columnar import can_read, read_columns

            if can_read(info):
                cols = read_columns(info, marks=marks)
                if cols is not None:
                    yield cols
                    del cols  # before the next session is read: one session's columns in memory at a time
                    continue
            elif info.streamable:  # too big to hold whole: in pieces, from one pass and a spill
                from cirron.spool.pieces import iter_pieces

                pieces = iter_pieces(info, marks=marks)
                if pieces is not None:
                    yield from pieces
                    continue
        if info.streamable:
            yield from _chunks_streamed(info, fields)
        else:
            yield chunk_of_session(cat.load(info, fields), info)
