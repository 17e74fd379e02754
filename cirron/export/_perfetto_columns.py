"""The trace events of one session encoded from its Arrow columns (:mod:`cirron.spool.columnar`).

The bytes are exactly what :func:`cirron.export._perfetto._session_events` gives for the rebuilt
session. The pieces of every event are built a column at a time (see
:mod:`cirron.export._otlp_columns`); the order of a thread's begin/end events comes from sorting:

* a thread's spans are sorted by start (longest first); the end of span ``j`` is due just before
  the first span that starts at or after it ends, and the ends due at one place come innermost
  first. When the events in that order nest properly (checked on their depths), every span fits
  the thread's first track and that order is the sweep's of :func:`_track_events`;
* a thread whose spans overlap without nesting (concurrent requests, sessions that overlap) is
  swept span by span by :func:`_sweep`, the sweep of :func:`_track_events` on plain integers.

Span args are built from each distinct attrs text once; attrs that carry a key the args add
(``index``, ``span_id``, ``cirron.open``) or that ``orjson`` cannot write go the per-record way,
as do marks whose value is not a finite float.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cirron import _native as native
from cirron.export._common import arrow_text
from cirron.export._json import _json_strings
from cirron.export._otlp_columns import CannotEncode, _Columns, _distinct, _floats, _join, _np, _table_text
from cirron.export._perfetto import _distinct as _codes
from cirron.export._perfetto import _dumps, _dumps_args, _mark_event, _span_args, rank_processes

__all__ = ["SLICE_EVENTS", "Encoded", "session_events"]

_cperfetto = native.load("cirron.export._cperfetto")

#: Events encoded at a time.
SLICE_EVENTS = 16_384
_ARGS_KEYS = ("index", "span_id", "cirron.open")
_B, _E, _X, _TEXT = 0, 1, 2, 3


@dataclass
class Encoded:
    """Events already encoded, comma-separated, ``spans`` of them one per span."""

    data: memoryview | bytes
    spans: int


def _release() -> None:
    """Hand the memory Arrow's pool keeps for reuse back (what a slice's text took)."""
    pa.default_memory_pool().release_unused()


def _check_range(ns: np.ndarray, base: int) -> None:
    """Refuse times whose distance to ``base`` an int64 cannot hold."""
    if len(ns) and (int(ns.max()) - base > 2**63 - 1 or int(ns.min()) - base < -(2**63)):
        raise CannotEncode("time out of range")


def _ts(ns: np.ndarray, base: int) -> pa.Array:
    """``(ns - base) / 1000.0`` as ``orjson`` writes each (what the per-record encoder computes)."""
    _check_range(ns, base)
    return _floats((ns - np.int64(base)).astype(np.float64) / 1000.0)


class _SessionEvents:
    def __init__(self, cols: Any, base: int) -> None:
        self.s = _Columns(cols.spans)
        self.m = _Columns(cols.marks)
        self.cols = cols
        self.base = base
        decoded, self.attr = _distinct(cols.spans["attrs"])
        inner: list[str | None] = []
        for a in decoded:
            if type(a) is not dict:
                a = {}
            text = None
            if not any(k in a for k in _ARGS_KEYS):
                try:
                    text = orjson.dumps(a)[1:-1].decode()
                except (TypeError, orjson.JSONEncodeError):
                    pass
            inner.append(text if not text else text + ",")  # None: the per-record way
        self.attr_inner = inner
        self.slow_attr = np.array([t is None for t in inner] or [False], dtype=bool)
        self.decoded = decoded

    def args(self, rows: np.ndarray, is_open: np.ndarray) -> pa.Array:
        """The args JSON of spans ``rows``."""
        take = pa.array(rows)
        idx = self.s["index"].take(take)
        ids = self.s["id"].take(take)
        which = self.attr[rows]
        text = _join("{", _table_text(self.attr_inner, which),
                     pc.binary_join_element_wise('"index":', pc.cast(idx, pa.string()), ",", ""),
                     '"span_id":', _json_strings(ids),
                     pc.if_else(pa.array(is_open), ',"cirron.open":true', pa.scalar(None, pa.string())), "}")
        slow = self.slow_attr[which]
        if slow.any():
            exact = [self.exact_args(int(rows[k]), bool(is_open[k])).decode() for k in np.flatnonzero(slow).tolist()]
            text = pc.replace_with_mask(text, pa.array(slow), pa.array(exact, pa.string()))
        return text

    def exact_args(self, row: int, open_: bool) -> bytes:
        """The per-record args of span ``row`` (for attrs the columns cannot write)."""
        rec = {"attrs": self.decoded[self.attr[row]], "index": self.s["index"][row].as_py(),
               "id": self.s["id"][row].as_py()}
        return _dumps_args(_span_args(rec.get, open_))


def session_events(cols: Any, info: Any, base: int, pid_of: dict[tuple[str, object], int],
                   threads: set[tuple[int, int]]) -> Iterator[bytes | Encoded]:
    """The events of one session's columns (see the module docstring). Raises
    :class:`CannotEncode` before yielding anything when the columns need the per-record way."""
    _release()  # what reading the columns left in Arrow's pool (40 MB a 250K-span session)
    enc = _SessionEvents(cols, base)
    s = enc.s
    n = cols.spans.num_rows
    last = info.last_ns or base
    rank = _np(s["rank"], 0)
    tid = _np(s["thread_id"], 0)
    start = _np(s["start_ns"], base)
    is_open = pc.is_null(s["end_ns"]).to_numpy(zero_copy_only=False)
    end = np.maximum(np.where(is_open, np.maximum(start, last), _np(s["end_ns"], 0)), start)
    for ns in (start, end, _np(enc.m["ts_ns"], base)):  # checked before anything is yielded
        _check_range(ns, base)
    if _cperfetto is not None:
        from cirron.export import _perfetto_native

        _perfetto_native.check(tid)
        pid, new_processes = rank_processes(info, rank, pid_of)
        del rank
        yield from _perfetto_native.session_events(enc, base, pid, tid, start, end, is_open, new_processes, threads)
        return
    start_ts, end_ts = _ts(start, base), _ts(end, base)
    names = _json_strings(pc.fill_null(s["name"], "None"))
    _release()
    pid, new_processes = rank_processes(info, rank, pid_of)
    yield from new_processes
    if n:
        kinds, rows, texts, track_tid = _span_order(enc, pid, tid, start, end, threads)
        del rank, tid, start, end
        _release()
        yield from _encode_events(enc, kinds, rows, texts, pid, track_tid, start_ts, end_ts, names, is_open)
        del kinds, rows, texts, track_tid
    # the marks need none of the spans' arrays but their ids and pids: let the rest go first
    del start_ts, end_ts, names, is_open
    enc.s.drop(keep=("id",))
    _release()
    yield from _mark_events(enc, pid, base)


def _span_order(enc: _SessionEvents, pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray,
                threads: set[tuple[int, int]]
                ) -> tuple[np.ndarray, np.ndarray, list[bytes], np.ndarray]:
    """Every span event of the session in output order: its kind (B, E, X, or already encoded
    text) and its span row (for text: the position in the returned list); and per span the tid
    of the track it is drawn on."""
    n = len(pid)
    track, order, bounds = track_order(pid, tid, start, end)
    bounds = bounds.tolist()
    del track
    parent = np.asarray(enc.cols.span_parent, dtype=np.int64)
    kinds: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    texts: list[bytes] = []
    track_tid = tid.copy()  # per span: the tid of the track it is drawn on
    for t in range(len(bounds) - 1):
        members = order[bounds[t]:bounds[t + 1]]
        key = (int(pid[members[0]]), int(tid[members[0]]))
        nested = _nested_order(start[members], end[members])
        if nested is not None:
            kinds_t, local = nested
            opened = [(0, 0)]
        else:  # spans that overlap without nesting: swept span by span
            in_track = np.full(n, -1, dtype=np.int64)
            in_track[members] = np.arange(len(members))
            par = np.where(parent[members] >= 0, in_track[np.maximum(parent[members], 0)], -1)
            codes, lanes, opened = _sweep(start[members].data, end[members].data, par.data)
            code = np.frombuffer(codes, dtype=np.int64)
            kinds_t, local = code & 3, code >> 2
            lane = np.frombuffer(lanes, dtype=np.int64) - 1
            del codes, lanes
            over = lane > 0
            track_tid[members[over]] = -(np.abs(key[1]) * 64 + lane[over])
        rows_t = members[local]
        at = 0
        for place, lane_no in opened:  # each track's name, before its first event
            kinds.append(kinds_t[at:place])
            rows.append(rows_t[at:place])
            at = place
            named = thread_name(key[0], key[1], lane_no, threads)
            if named is not None:
                kinds.append(np.array([_TEXT]))
                rows.append(np.array([len(texts)]))
                texts.append(named)
        kinds.append(kinds_t[at:])
        rows.append(rows_t[at:])
    return np.concatenate(kinds), np.concatenate(rows), texts, track_tid


def thread_name(pid: int, tid: int, lane: int, threads: set[tuple[int, int]]) -> bytes | None:
    """The metadata event naming lane ``lane`` of thread ``tid`` (lane 0: the thread itself),
    or ``None`` when the export has named it already (``threads`` is updated)."""
    t_id = tid if lane == 0 else -(abs(tid) * 64 + lane)
    if (pid, t_id) in threads:
        return None
    threads.add((pid, t_id))
    label = f"thread {tid}" if lane == 0 else f"thread {tid} (overlapping {lane})"
    return _dumps({"ph": "M", "name": "thread_name", "pid": pid, "tid": t_id, "args": {"name": label}})


def track_order(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The session's threads (one per (pid, tid), numbered in the order their first span comes):
    each span's thread (int32), the spans in output order (by thread, then start, longest first,
    then row) and where each thread's spans begin in it (one more bound at the end)."""
    n = len(pid)
    tids, _f, tid_code = _codes(tid)  # (pid, tid) pairs numbered without sorting them
    key = pid.astype(np.int64) * len(tids) + tid_code
    del tid_code
    _u, t_first, t_of = _codes(key)
    del key
    t_rank = np.empty(len(t_first), dtype=np.int32)
    t_rank[np.argsort(t_first, kind="stable")] = np.arange(len(t_first))
    track = t_rank[t_of]
    del t_of
    if _cperfetto is None:
        order = np.lexsort((np.arange(n, dtype=np.int32), -end, start, track))
    else:  # spans come about in start order: a stable sort by start is quick, then the ties
        order = np.argsort(start, kind="stable").astype(np.int64, copy=False)
        if len(t_first) > 1:
            order = order[np.argsort(track[order], kind="stable")]
        _cperfetto.sort_ties(order, track, start, end)
    bounds = np.searchsorted(track[order], np.arange(len(t_first) + 1))
    return track, order, bounds


def _sweep(start: Any, end: Any, parent: Any) -> tuple[array, array, list[tuple[int, int]]]:
    """:func:`cirron.export._perfetto._track_events`' sweep on plain integers (int64 sequences):
    the events (span position * 4 + kind), each span's track, and where each track is first used."""
    ends: list[list[int]] = []
    held: list[list[int]] = []
    out = array("q")
    lane = array("q", bytes(8 * len(start)))
    opened: list[tuple[int, int]] = []
    append = out.append
    for i, (s, e, p) in enumerate(zip(start, end, parent)):
        for stack, rows in zip(ends, held):
            while stack and stack[-1] <= s:
                stack.pop()
                append(rows.pop() * 4 + _E)
        chosen = lane[p] - 1 if p >= 0 else -1  # lanes are kept plus one (0: not placed yet)
        if chosen < 0 or not (not ends[chosen] or ends[chosen][-1] >= e):
            chosen = next((k for k, stack in enumerate(ends) if not stack or stack[-1] >= e), -1)
        if chosen < 0:
            chosen = len(ends)
            ends.append([])
            held.append([])
            opened.append((len(out), chosen))
        lane[i] = chosen + 1
        if e == s:
            append(i * 4 + _X)
        else:
            append(i * 4 + _B)
            ends[chosen].append(e)
            held[chosen].append(i)
    for rows in held:
        while rows:
            append(rows.pop() * 4 + _E)
    return out, lane, opened


def _nested_order(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For one thread's spans (sorted by start, longest first): the kinds and span positions of
    their B/E/X events when they all nest on one track, else ``None``."""
    m = len(start)
    zero = end == start
    if ((start[1:] < end[:-1]) & (end[1:] > end[:-1]) & ~zero[:-1]).any():
        return None  # a span still open when the next one starts ends before it: they cross
    jj = np.flatnonzero(~zero).astype(np.int32)
    ends_at = end[jj]
    due = np.searchsorted(start, ends_at, side="left").astype(np.int32)  # the end is written before this span
    # the events in order: at each place, the ends due there (by end time, innermost first), then
    # the span that starts there; the ends alone are sorted, the begins slot in between them
    by_due = np.lexsort((-jj, ends_at, due))
    del ends_at
    begin_at = np.arange(m, dtype=np.int64)
    begin_at += np.cumsum(np.bincount(due, minlength=m + 1)[:m])
    del due
    is_end = np.ones(m + len(jj), dtype=bool)
    is_end[begin_at] = False
    local = np.empty(m + len(jj), dtype=np.int32)
    local[begin_at] = np.arange(m, dtype=np.int32)
    del begin_at
    local[is_end] = jj[by_due]
    del by_due
    kinds = zero[local].astype(np.int8) * np.int8(_X)
    kinds[is_end] = _E
    del is_end
    # they nest iff, for every span, the depth first falls below its begin's depth at its own end
    paired = kinds != _X
    k2, l2 = kinds[paired], local[paired]
    del paired
    depth = np.cumsum(np.where(k2 == _B, np.int8(1), np.int8(-1)), dtype=np.int32)
    if len(depth) and depth.min() < 0:
        return None
    where_b = np.empty(m, dtype=np.int32)
    where_e = np.empty(m, dtype=np.int32)
    places = np.arange(len(k2), dtype=np.int32)
    where_b[l2[k2 == _B]] = places[k2 == _B]
    where_e[l2[k2 == _E]] = places[k2 == _E]
    del k2, l2
    if len(jj):
        width = len(places) + 1
        level_key = depth.astype(np.int64)
        level_key *= width
        level_key += places
        del places
        level_key.sort()
        b = where_b[jj]
        want = depth[b].astype(np.int64) - 1
        hit = np.searchsorted(level_key, want * width + b + 1)
        ok = hit < len(level_key)
        found = np.where(ok, level_key[np.minimum(hit, len(level_key) - 1)], -1)
        if not (ok.all() and (found // width == want).all() and (found % width == where_e[jj]).all()):
            return None
    return kinds, local


def _encode_events(enc: _SessionEvents, kinds: np.ndarray, rows: np.ndarray, texts: list[bytes], pid: np.ndarray,
                   tid: np.ndarray, start_ts: pa.Array, end_ts: pa.Array, names: pa.Array,
                   is_open: np.ndarray) -> Iterator[Encoded]:
    text_table = pa.array([t.decode() + "," for t in texts], pa.string())
    heads = pa.array(['{"ph":"B","name":', '{"ph":"E","name":', '{"ph":"X","name":', ""], pa.string())
    for a in range(0, len(kinds), SLICE_EVENTS):
        k = kinds[a:a + SLICE_EVENTS]
        r = rows[a:a + SLICE_EVENTS]
        is_text = k == _TEXT
        span = np.where(is_text, 0, r)
        take = pa.array(span)
        is_end = pa.array(k == _E)
        tail = _tails(enc, k, span, is_open)
        built = _join(heads.take(pa.array(k)), names.take(take), ',"cat":"cirron","pid":',
                      pc.cast(pa.array(pid[span]), pa.string()), ',"tid":', pc.cast(pa.array(tid[span]), pa.string()),
                      ',"ts":', pc.if_else(is_end, end_ts.take(take), start_ts.take(take)), tail)
        if is_text.any():
            built = pc.if_else(pa.array(is_text), text_table.take(pa.array(np.where(is_text, r, 0))), built)
        yield Encoded(arrow_text(built)[:-1], int(((k == _B) | (k == _X)).sum()))
        del built, tail
        if a % (4 * SLICE_EVENTS) == 0:
            _release()


def _tails(enc: _SessionEvents, kinds: np.ndarray, span: np.ndarray, is_open: np.ndarray) -> pa.Array:
    """What ends each event, with the comma after it: ``}`` for a begin, the args for an end or
    a complete event (built for those alone)."""
    with_args = (kinds == _E) | (kinds == _X)
    rows = span[with_args]
    tails = _join(pc.if_else(pa.array(kinds[with_args] == _X), ',"dur":0.0,"args":', ',"args":'),
                  enc.args(rows, is_open[rows]), "},")
    where = np.full(len(kinds), len(tails), dtype=np.int64)  # the others: the plain "},"
    where[with_args] = np.arange(len(tails))
    return pa.concat_arrays([tails, pa.array(["},"], pa.string())]).take(pa.array(where))


@dataclass
class _Marks:
    """What every mark event needs from the session: each mark's process, time and value, and
    which marks are plain counters (``plain``) whose event the column encoders write."""

    pid: np.ndarray
    has_ts: np.ndarray
    ts: np.ndarray
    values: np.ndarray
    plain: np.ndarray
    given: Any

    def exact(self, enc: _SessionEvents, i: int, base: int) -> bytes | None:
        """The per-record event of mark ``i`` (``None``: it has none)."""
        m = enc.m
        rec = {"ts_ns": int(self.ts[i]), "value": self.given[i] if self.given is not None else float(self.values[i]),
               "name": m["name"][i].as_py(), "thread_id": m["thread_id"][i].as_py()}
        ev = _mark_event(rec, int(self.pid[i]), base)
        return _dumps(ev) if ev is not None else None


def _marks(enc: _SessionEvents, pid: np.ndarray, base: int) -> _Marks | None:
    """The session's marks (``None`` when it has none or no process to draw them in); the spans'
    combined columns are let go."""
    m = enc.m
    n = enc.cols.marks.num_rows
    if not n or not len(pid):
        return None
    mark_pid = np.full(n, pid[0], dtype=pid.dtype)
    if (pid != pid[0]).any():  # several processes: a mark's is its span's
        at = 0
        # on the column's chunks as they are (one hash table, no combined copy of the column)
        for chunk in pc.index_in(enc.cols.marks["span_id"], value_set=enc.s["id"]).chunks:
            row = pc.fill_null(chunk, -1).to_numpy(zero_copy_only=False)
            mark_pid[at:at + len(row)] = np.where(row >= 0, pid[np.maximum(row, 0)], pid[0])
            at += len(row)
    enc.s.drop()
    _release()  # the hash table of index_in
    has_ts = pc.is_valid(m["ts_ns"]).to_numpy(zero_copy_only=False)
    values = _np(m["value"], 0).astype(np.float64)
    plain = has_ts & np.isfinite(values)
    given = enc.cols.mark_values
    if given is not None:
        plain &= np.fromiter((type(v) is float for v in given), dtype=bool, count=n)
    return _Marks(mark_pid, has_ts, _np(m["ts_ns"], base), values, plain, given)


def _mark_events(enc: _SessionEvents, pid: np.ndarray, base: int) -> Iterator[bytes | Encoded]:
    marks = _marks(enc, pid, base)
    if marks is None:
        return
    m = enc.m
    n = len(marks.pid)
    for a in range(0, n, SLICE_EVENTS):
        b = min(n, a + SLICE_EVENTS)
        fast = marks.plain[a:b]
        name = _json_strings(pc.fill_null(m["name"].slice(a, b - a), "None"))
        built = _join('{"ph":"C","name":', name, ',"pid":', pc.cast(pa.array(marks.pid[a:b]), pa.string()),
                      ',"ts":', _ts(marks.ts[a:b], base), ',"args":{', name, ":", _floats(marks.values[a:b]), "}},")
        keep = fast.copy()
        slow = np.flatnonzero(~fast & marks.has_ts[a:b])
        if len(slow):
            exact = [marks.exact(enc, i, base) for i in (slow + a).tolist()]
            mask = np.zeros(b - a, dtype=bool)
            mask[slow] = True
            built = pc.replace_with_mask(built, pa.array(mask),
                                         pa.array([e.decode() + "," if e is not None else None for e in exact],
                                                  pa.string()))
            keep[slow] = [e is not None for e in exact]
        kept = built.filter(pa.array(keep))
        if len(kept):
            yield Encoded(arrow_text(kept)[:-1], 0)
        del built, kept
        if a % (4 * SLICE_EVENTS) == 0:
            _release()
