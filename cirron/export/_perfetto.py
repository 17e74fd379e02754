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

from cirron.export._common import atomic_file
from cirron.export._otlp import _getter
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session

__all__ = ["iter_trace_events", "to_trace_events", "write_perfetto"]


def iter_trace_events(sessions: Iterable[Session], base_ns: int | None = None) -> Iterator[dict[str, Any]]:
    """The trace events of ``sessions``, one at a time (metadata events come before their use).

    ``base_ns`` is the time every ``ts`` counts from; without it, the earliest start of the
    sessions (which are then held in memory to find it).
    """
    if base_ns is None:
        sessions = list(sessions)
        starts = [x for sess in sessions for x in (sess.started_ns,) if type(x) is int]
        for sess in sessions:
            if sess.root is None:
                starts.extend(s["start_ns"] for s in sess.spans if type(s.get("start_ns")) is int)
        base_ns = min(starts) if starts else 0
    base = base_ns
    pid_of: dict[tuple[str, object], int] = {}
    threads: set[tuple[int, int]] = set()

    for sess in sessions:
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
                label = f"session {sess.id[:8]} rank {rank}"
                yield {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}}
                yield {"ph": "M", "name": "process_labels", "pid": pid, "tid": 0,
                       "args": {"labels": f"writer {sess.writer} {sess.sdk_version or 'unknown'}"}}
            sid = g("id")
            span_pid[sid] = pid
            tid = g("thread_id")
            if type(tid) is not int:
                tid = 0
            start = g("start_ns")
            if type(start) is not int:
                start = base
            end = g("end_ns")
            attrs = g("attrs")
            args = dict(attrs) if type(attrs) is dict else {}
            idx = g("index")
            if type(idx) is int:
                args["index"] = idx
            args["span_id"] = sid
            if type(end) is not int:
                end = max(start, last)
                args["cirron.open"] = True
            name = g("name")
            span = {"name": name if type(name) is str else str(name), "args": args, "id": sid, "parent": g("parent_id")}
            tracks.setdefault((pid, tid), []).append((start, max(end, start), span))
        for (pid, tid), spans in tracks.items():
            yield from _track_events(pid, tid, spans, base, threads)
        default_pid = next(iter(span_pid.values()), None)
        for m in sess.marks:
            g = _getter(m)
            ts = g("ts_ns")
            if type(ts) is not int:
                continue
            pid = span_pid.get(g("span_id"), default_pid)
            if pid is None:
                continue
            v = g("value")
            name = g("name")
            name = name if type(name) is str else str(name)
            t = type(v)
            if (t is int or t is bool) or (t is float and math.isfinite(v)):
                yield {"ph": "C", "name": name, "pid": pid, "ts": (ts - base) / 1000.0, "args": {name: float(v)}}
            else:
                tid = g("thread_id")
                shown = v if isinstance(v, str) else repr(v)
                yield {"ph": "i", "s": "t", "name": f"{name}={shown}", "pid": pid,
                       "tid": tid if type(tid) is int else 0, "ts": (ts - base) / 1000.0}
    yield {"ph": "M", "name": "cirron_base_ns", "pid": 0, "tid": 0, "args": {"base_ns": str(base)}}


def _track_events(pid: int, tid: int, spans: list[tuple[int, int, dict[str, Any]]], base: int,
                  threads: set[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    """B/E events of one thread's spans, properly nested per track (overlaps go to extra tracks)."""
    spans.sort(key=lambda x: (x[0], -x[1]))
    lanes: list[list[tuple[int, dict[str, Any]]]] = []  # per track: the stack of open (end, event) pairs
    lane_tids: list[int] = []
    lane_of: dict[str, int] = {}
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


def write_perfetto(sessions: Iterable[Session], path: str | os.PathLike[str], base_ns: int | None = None) -> int:
    """Write the trace-event JSON to ``path`` atomically, streamed; returns the number of span events.

    With ``base_ns`` (see :func:`iter_trace_events`) sessions are read and written one at a time."""
    from cirron.export import _write_chunked

    n = 0

    def events() -> Iterator[bytes]:
        nonlocal n
        for ev in iter_trace_events(sessions, base_ns):
            if ev["ph"] in ("B", "X"):  # one per span
                n += 1
            yield _dumps(ev)

    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b'{"displayTimeUnit":"ns","traceEvents":[')
        _write_chunked(fh, events())
        fh.write(b"]}")
    return n
