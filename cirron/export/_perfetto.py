"""Chrome trace-event JSON (what ui.perfetto.dev, chrome://tracing and speedscope open).

One process per (session, rank), one track per thread; timestamps are microseconds relative to
the earliest span (the absolute start is kept in a final metadata event ``cirron_base_ns``);
numeric marks are counter tracks (``ph: C``), other marks instant events (``ph: i``).

Each span is a begin/end pair (``ph: B`` / ``ph: E``) named by the span's name alone
(``batch``, not ``batch[3]``), so every viewer groups the spans of one name: the aggregations
of Perfetto and chrome://tracing key on the name, speedscope on the name plus the *begin*
event's args. The span's own details (``index``, ``span_id``, its attrs) are the args of its
*end* event, which Perfetto and chrome://tracing merge into the slice and speedscope leaves out
of its frame key. Spans of one thread that overlap without nesting (concurrent requests on one
event loop) go to extra tracks of that thread, one per level of overlap, so no viewer has to
mis-nest them. A span that lasts 0 ns has nothing to separate begin from end and is a single
complete event (``ph: X``) carrying its args.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from cirron.export._common import atomic_file, open_output, write_members
from cirron.export._otlp import _getter
from cirron.spool.catalog import SessionInfo
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session

__all__ = ["iter_trace_events", "to_trace_events", "write_perfetto"]


def iter_trace_events(sessions: Iterable[Session | SessionInfo],
                      base_ns: int | None = None) -> Iterator[dict[str, Any] | bytes]:
    """The trace events of ``sessions``, one at a time (metadata events come before their use).

    ``base_ns`` is the time every ``ts`` counts from; without it, the earliest start of the
    sessions (which are then held in memory to find it). An item may be the
    :class:`~cirron.spool.catalog.SessionInfo` of a streamable session: it is then read in two
    passes over its batch files (:func:`_streamed_events`) and its events come already encoded.
    """
    return _events(sessions, base_ns, columns=False)  # type: ignore[return-value]


def _events(sessions: Iterable[Session | SessionInfo], base_ns: int | None,
            columns: bool) -> Iterator[dict[str, Any] | bytes | Any]:
    """:func:`iter_trace_events`; with ``columns``, a session the columnar reader holds comes as
    :class:`cirron.export._perfetto_columns.Encoded` runs of events."""
    if base_ns is None:
        sessions = list(sessions)
        starts = [x for sess in sessions for x in (sess.started_ns,) if type(x) is int]
        for sess in sessions:
            if isinstance(sess, Session) and sess.root is None:
                starts.extend(s["start_ns"] for s in sess.spans if type(s.get("start_ns")) is int)
        base_ns = min(starts) if starts else 0
    base = base_ns
    pid_of: dict[tuple[str, object], int] = {}
    threads: set[tuple[int, int]] = set()

    for item in sessions:
        if not isinstance(item, Session):
            encoded = _column_events(item, base, pid_of, threads) if columns else None
            if encoded is None and columns:
                encoded = _piece_events(item, base, pid_of, threads)
            if encoded is not None:
                yield from encoded
                continue
            streamed = _streamed_events(item, base, pid_of, threads)
            if streamed is not None:
                yield from streamed
                continue
            from cirron.spool.catalog import Catalog

            item = Catalog([item.spool], lambda _m: None).load(item)  # ids the outline cannot sort
        yield from _session_events(item, base, pid_of, threads)
    yield {"ph": "M", "name": "cirron_base_ns", "pid": 0, "tid": 0, "args": {"base_ns": str(base)}}


def _process_events(pid: int, session_id: str, rank: int, writer: str, sdk_version: str | None) -> list[dict[str, Any]]:
    return [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
             "args": {"name": f"session {session_id[:8]} rank {rank}"}},
            {"ph": "M", "name": "process_labels", "pid": pid, "tid": 0,
             "args": {"labels": f"writer {writer} {sdk_version or 'unknown'}"}}]


def _span_args(g: Any, open_: bool) -> dict[str, Any]:
    attrs = g("attrs")
    args = dict(attrs) if type(attrs) is dict else {}
    idx = g("index")
    if type(idx) is int:
        args["index"] = idx
    args["span_id"] = g("id")
    if open_:
        args["cirron.open"] = True
    return args


def _mark_event(m: Any, pid: int, base: int) -> dict[str, Any] | None:
    g = _getter(m)
    ts = g("ts_ns")
    if type(ts) is not int:
        return None
    v = g("value")
    name = g("name")
    name = name if type(name) is str else str(name)
    t = type(v)
    if (t is int or t is bool) or (t is float and math.isfinite(v)):
        return {"ph": "C", "name": name, "pid": pid, "ts": (ts - base) / 1000.0, "args": {name: float(v)}}
    tid = g("thread_id")
    shown = v if isinstance(v, str) else repr(v)
    return {"ph": "i", "s": "t", "name": f"{name}={shown}", "pid": pid,
            "tid": tid if type(tid) is int else 0, "ts": (ts - base) / 1000.0}


def _session_events(sess: Session, base: int, pid_of: dict[tuple[str, object], int],
                    threads: set[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    last = sess.last_ns or base
    span_pid: dict[str, int] = {}
    tracks: dict[tuple[int, int], list[tuple[int, int, dict[str, Any]]]] = {}
    for s in sess.spans:
        g = _getter(s)
        rank = g("rank")
        if type(rank) is not int:
            rank = 0
        key = (sess.id, rank)
        pid = pid_of.get(key)
        if pid is None:
            pid = pid_of[key] = len(pid_of) + 1
            yield from _process_events(pid, sess.id, rank, sess.writer, sess.sdk_version)
        sid = g("id")
        span_pid[sid] = pid
        tid = g("thread_id")
        if type(tid) is not int:
            tid = 0
        start = g("start_ns")
        if type(start) is not int:
            start = base
        end = g("end_ns")
        args = _span_args(g, type(end) is not int)
        if type(end) is not int:
            end = max(start, last)
        name = g("name")
        span = {"name": name if type(name) is str else str(name), "args": args, "id": sid, "parent": g("parent_id")}
        tracks.setdefault((pid, tid), []).append((start, max(end, start), span))
    for (pid, tid), spans in tracks.items():
        spans.sort(key=lambda x: (x[0], -x[1]))
        yield from _track_events(pid, tid, spans, base, threads)
    default_pid = next(iter(span_pid.values()), None)
    for m in sess.marks:
        pid = span_pid.get(_getter(m)("span_id"), default_pid)
        if pid is not None:
            ev = _mark_event(m, pid, base)
            if ev is not None:
                yield ev


def _track_events(pid: int, tid: int, spans: Iterable[tuple[int, int, dict[str, Any]]], base: int,
                  threads: set[tuple[int, int]], lane_of: Any = None) -> Iterator[dict[str, Any]]:
    """B/E events of one thread's spans (sorted by start, longest first), properly nested per
    track (overlaps go to extra tracks). ``lane_of`` remembers each span's track by its ``id``
    (a dict unless given)."""
    lanes: list[list[tuple[int, dict[str, Any]]]] = []  # per track: the stack of open (end, event) pairs
    lane_tids: list[int] = []
    lane_of = {} if lane_of is None else lane_of
    for start, end, span in spans:
        for stack in lanes:
            while stack and stack[-1][0] <= start:
                yield stack.pop()[1]
        parent_lane = lane_of.get(span["parent"])
        candidates = ([parent_lane] if parent_lane is not None else []) + list(range(len(lanes)))
        lane = next((i for i in candidates if not lanes[i] or lanes[i][-1][0] >= end), None)
        if lane is None:
            lane = len(lanes)
            lanes.append([])
            lane_tids.append(tid if lane == 0 else _overlap_tid(tid, lane))
        lane_of[span["id"]] = lane
        t = lane_tids[lane]
        if (pid, t) not in threads:
            threads.add((pid, t))
            label = f"thread {tid}" if lane == 0 else f"thread {tid} (overlapping {lane})"
            yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": t, "args": {"name": label}}
        common = {"name": span["name"], "cat": "cirron", "pid": pid, "tid": t}
        if end == start:
            yield {"ph": "X", **common, "ts": (start - base) / 1000.0, "dur": 0.0, "args": span["args"]}
            continue
        yield {"ph": "B", **common, "ts": (start - base) / 1000.0}  # no args: see the module docstring
        lanes[lane].append((end, {"ph": "E", **common, "ts": (end - base) / 1000.0, "args": span["args"]}))
    for stack in lanes:
        while stack:
            yield stack.pop()[1]


class _Lanes:
    """``lane_of`` of :func:`_track_events` for spans numbered 0..n-1 (-1: none), two bytes each."""

    def __init__(self, n: int) -> None:
        import numpy as np

        self._a = np.full(n, -1, dtype=np.int32)

    def get(self, i: int) -> int | None:
        v = int(self._a[i]) if i >= 0 else -1
        return None if v < 0 else v

    def __setitem__(self, i: int, lane: int) -> None:
        self._a[i] = lane


def _column_events(info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
                   threads: set[tuple[int, int]]) -> Iterator[Any] | None:
    """The events of a session :func:`cirron.spool.columnar.read_columns` can hold, encoded from
    its columns (:mod:`cirron.export._perfetto_columns`); ``None`` when it cannot."""
    from cirron.spool.columnar import can_read, read_columns

    cols = read_columns(info) if can_read(info) else None
    if cols is None:
        return None
    import itertools

    from cirron.export import _perfetto_columns

    events = _perfetto_columns.session_events(cols, info, base, pid_of, threads)
    try:
        first = next(events)
    except StopIteration:
        return iter(())
    except _perfetto_columns.CannotEncode:
        return None
    return itertools.chain((first,), events)


def _piece_events(info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
                  threads: set[tuple[int, int]]) -> Iterator[Any] | None:
    """The events of a streamable session too big for :func:`_column_events`, encoded from its
    columns piece by piece (:mod:`cirron.export._perfetto_pieces`); ``None`` when it cannot."""
    from cirron.spool.columnar import can_read

    if not info.streamable or can_read(info):
        return None
    from cirron.export._perfetto_pieces import session_events_in_pieces

    return session_events_in_pieces(info, base, pid_of, threads)


def _streamed_events(info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
                     threads: set[tuple[int, int]]) -> Iterator[bytes] | None:
    """The events of a streamable session, encoded, equal to :func:`_session_events`' for its
    rebuild, from two passes over its batch files (:func:`cirron.spool.outline.session_columns`):
    each span's name and args and each mark's event are encoded as the files are read and kept
    in temporary files, then the tracks are swept in start order. ``None`` when the session
    cannot be outlined."""
    from cirron.spool.outline import session_columns

    cols = session_columns(info, threads=True, mark_times=False)
    return None if cols is None else _streamed(cols, info, base, pid_of, threads)


def _streamed(cols: Any, info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
              threads: set[tuple[int, int]]) -> Iterator[bytes]:
    import tempfile

    import numpy as np

    from cirron.spool.outline import NO_INT, NO_TIME
    from cirron.spool.reader import read_batch

    n = len(cols.rows)
    last = info.last_ns or base
    # the columns are rewritten in place and let go as soon as they are used (a big session's
    # columns are most of what this holds)
    rank, tid, start, end = cols.rank, cols.thread, cols.start, cols.end
    cols.rank = cols.thread = cols.start = cols.end = None
    rank[rank == NO_INT] = 0
    tid[tid == NO_INT] = 0
    start[start == NO_TIME] = base
    is_open = end == NO_TIME
    end[is_open] = np.maximum(start[is_open], last)
    np.maximum(end, start, out=end)
    pid, new_processes = rank_processes(info, rank, pid_of)
    yield from new_processes
    del rank
    default_pid = int(pid[0]) if n else None
    with tempfile.TemporaryFile(prefix="cirron-perfetto-") as spans_tmp, \
            tempfile.TemporaryFile(prefix="cirron-perfetto-") as marks_tmp:
        off = np.zeros(n, dtype=np.int64)
        name_len = np.zeros(n, dtype=np.int32)
        args_len = np.zeros(n, dtype=np.int32)
        for fi, bf in enumerate(cols.files):
            s0, s1 = int(cols.span_start[fi]), int(cols.span_start[fi + 1])
            m0, m1 = int(cols.mark_start[fi]), int(cols.mark_start[fi + 1])
            batch = read_batch(bf, lambda _m: None, "full")
            if batch is None:
                continue
            a, b = np.searchsorted(cols.rows, [s0, s1]).tolist()
            for i, row in zip(range(a, b), cols.rows[a:b].tolist()):
                g = _getter(batch["spans"][row - s0])
                name = g("name")
                name_json = orjson.dumps(name if type(name) is str else str(name))
                args_json = _dumps_args(_span_args(g, bool(is_open[i])))
                off[i] = spans_tmp.tell()
                name_len[i], args_len[i] = len(name_json), len(args_json)
                spans_tmp.write(name_json + args_json)
            a, b = np.searchsorted(cols.mark_rows, [m0, m1]).tolist()
            for k, row in zip(range(a, b), cols.mark_rows[a:b].tolist()):
                own = int(cols.mark_span[k])
                p = int(pid[own]) if own >= 0 else default_pid
                mark_ev = _mark_event(batch["marks"][row - m0], p, base) if p is not None else None
                if mark_ev is not None:
                    marks_tmp.write(_dumps(mark_ev) + b"\n")
            del batch
        del is_open
        cols.rows = cols.mark_rows = cols.mark_span = cols.mark_target = None

        def span_of(i: int, parent: int) -> dict[str, Any]:
            spans_tmp.seek(int(off[i]))
            data = spans_tmp.read(int(name_len[i]) + int(args_len[i]))
            nl = int(name_len[i])
            return {"name": orjson.Fragment(data[:nl]), "args": orjson.Fragment(data[nl:]), "id": i,
                    "parent": parent}

        if n:  # tracks in the order their first span comes, each swept in start order
            tids, _f, tid_code = _distinct(tid)
            key = pid.astype(np.int64) * len(tids) + tid_code
            del tid_code
            _u, t_first, t_of = _distinct(key)
            del key
            firsts = np.sort(t_first)  # track t's first span
            t_pid, t_tid = pid[firsts].tolist(), tid[firsts].tolist()
            del pid, tid, firsts
            t_rank = np.empty(len(t_first), dtype=np.int32)
            t_rank[np.argsort(t_first, kind="stable")] = np.arange(len(t_first))
            span_track = t_rank[t_of]
            del t_of
            order = np.lexsort((np.arange(n, dtype=np.int32), -end, start, span_track)).astype(np.int32)
            bounds = np.searchsorted(span_track[order], np.arange(len(t_first) + 1)).tolist()
            lanes = _Lanes(n)
            parent = cols.parent

            def track_items(t: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
                for c in range(bounds[t], bounds[t + 1], _SWEEP_CHUNK):
                    members = order[c:min(c + _SWEEP_CHUNK, bounds[t + 1])]
                    for i, b, e, p in zip(members.tolist(), start[members].tolist(), end[members].tolist(),
                                          parent[members].tolist()):
                        yield b, e, span_of(i, p if p >= 0 and span_track[p] == t else -1)

            for t in range(len(t_first)):
                for ev in _track_events(t_pid[t], t_tid[t], track_items(t), base, threads, lanes):
                    yield _dumps(ev)
        marks_tmp.seek(0)
        for line in marks_tmp:
            yield line[:-1]


def rank_processes(info: SessionInfo, rank: Any, pid_of: dict[tuple[str, object], int]) -> tuple[Any, list[bytes]]:
    """Each span row's process id: one process per rank of the session, numbered across the
    export in the order the ranks first appear (``pid_of`` is updated); and the encoded events
    that name the processes new to the export."""
    import numpy as np

    ranks, first, which = _distinct(rank)
    rank_pid = np.zeros(len(ranks), dtype=np.int32)
    events: list[bytes] = []
    for u in np.argsort(first, kind="stable").tolist():
        r = int(ranks[u])
        p = pid_of.get((info.id, r))
        if p is None:
            p = pid_of[(info.id, r)] = len(pid_of) + 1
            events.extend(_dumps(ev) for ev in _process_events(p, info.id, r, info.writer, info.sdk_version))
        rank_pid[u] = p
    return rank_pid[which], events


def _distinct(values: Any) -> tuple[Any, Any, Any]:
    """``np.unique(values, return_index=True, return_inverse=True)`` with an int32 inverse, in
    a few masks for the usual handful of distinct values (ranks, threads) rather than a sort of
    the whole column with its int64 temporaries (the distinct values are found by hashing)."""
    import numpy as np
    import pyarrow.compute as pc

    uniq = np.sort(pc.unique(values).to_numpy()) if len(values) else np.unique(values)
    if len(uniq) > _FEW:
        uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        return uniq, first, inverse.reshape(-1).astype(np.int32)
    inverse = np.empty(len(values), dtype=np.int32)
    first = np.empty(len(uniq), dtype=np.int64)
    for code, v in enumerate(uniq.tolist()):
        hit = values == v
        inverse[hit] = code
        first[code] = int(np.argmax(hit))
    return uniq, first, inverse


#: Up to this many distinct values, :func:`_distinct` uses a mask per value.
_FEW = 64

#: Spans of a track whose times are turned into Python ints at once in the sweep.
_SWEEP_CHUNK = 1 << 16


def _dumps_args(args: dict[str, Any]) -> bytes:
    """``args`` as :func:`_dumps` writes them inside an event."""
    try:
        return orjson.dumps(args)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(_limit_depth(args, 16), default=str)


def _overlap_tid(tid: int, lane: int) -> int:
    """A track id for the ``lane``-th level of overlap on thread ``tid`` (never a real thread's)."""
    return -(abs(tid) * 64 + lane)


def to_trace_events(sessions: Sequence[Session]) -> dict[str, Any]:
    return {"traceEvents": list(iter_trace_events(sessions)), "displayTimeUnit": "ns"}


def _dumps(ev: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(ev)
    except (TypeError, orjson.JSONEncodeError):
        ev["args"] = _limit_depth(ev.get("args") or {}, 16)
        return orjson.dumps(ev, default=str)


def write_perfetto(sessions: Iterable[Session | SessionInfo], path: str | os.PathLike[str],
                   base_ns: int | None = None) -> int:
    """Write the trace-event JSON to ``path`` atomically, streamed; returns the number of span events.

    With ``base_ns`` (see :func:`iter_trace_events`) sessions are read and written one at a time;
    a streamable session given by its :class:`~cirron.spool.catalog.SessionInfo` is read in two
    passes over its batch files, in bounded memory."""

    n = 0

    def events() -> Iterator[bytes]:
        nonlocal n
        for ev in _events(sessions, base_ns, columns=True):
            if not isinstance(ev, (bytes, dict)):  # a run of events encoded from columns
                n += ev.spans
                yield ev.data
                continue
            data = ev if isinstance(ev, bytes) else _dumps(ev)
            if data.startswith((b'{"ph":"B"', b'{"ph":"X"')):  # one per span
                n += 1
            yield data

    with atomic_file(path) as tmp, open_output(tmp) as fh:
        fh.write(b'{"displayTimeUnit":"ns","traceEvents":[')
        write_members(fh, events())
        fh.write(b"]}")
    return n
