"""Chrome trace-event JSON (what ui.perfetto.dev, chrome://tracing and speedscope open).

One process per (session, rank), one track per thread; spans are complete events (``ph: X``)
with microsecond ``ts``/``dur`` relative to the earliest span (the absolute start is kept in a
final metadata event ``cirron_base_ns``); numeric marks are counter tracks (``ph: C``), other
marks instant events (``ph: i``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence

import orjson

from cirron.export._common import atomic_file
from cirron.export._otlp import _getter
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session

__all__ = ["iter_trace_events", "to_trace_events", "write_perfetto"]


def iter_trace_events(sessions: Iterable[Session], base_ns: int | None = None) -> Iterator[dict]:
    """The trace events of ``sessions``, one at a time (metadata events come before their use).

    ``base_ns`` is the time every ``ts`` counts from; without it, the earliest start of the
    sessions (which are then held in memory to find it).
    """
    if base_ns is None:
        sessions = list(sessions)
        starts = [x for sess in sessions for x in (sess.started_ns,) if type(x) is int]
        for sess in sessions:
            if sess.root is None:
                starts.extend(s.get("start_ns") for s in sess.spans if type(s.get("start_ns")) is int)
        base_ns = min(starts) if starts else 0
    base = base_ns
    pid_of: dict[tuple[str, object], int] = {}
    threads: set[tuple[int, int]] = set()

    for sess in sessions:
        last = sess.last_ns or base
        span_pid: dict[str, int] = {}
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
            sid = g("id")
            span_pid[sid] = pid
            tid = g("thread_id")
            if type(tid) is not int:
                tid = 0
            if (pid, tid) not in threads:
                threads.add((pid, tid))
                yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"thread {tid}"}}
            start = g("start_ns")
            if type(start) is not int:
                start = base
            end = g("end_ns")
            attrs = g("attrs")
            args = dict(attrs) if type(attrs) is dict else {}
            args["span_id"] = sid
            if type(end) is not int:
                end = max(start, last)
                args["cirron.open"] = True
            name = g("name")
            idx = g("index")
            label = name if type(name) is str else str(name)
            if type(idx) is int:
                label = f"{label}[{idx}]"
            yield {"ph": "X", "name": label, "cat": "cirron", "pid": pid, "tid": tid, "ts": (start - base) / 1000.0,
                   "dur": max(end - start, 0) / 1000.0, "args": args}
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


def to_trace_events(sessions: Sequence[Session]) -> dict:
    return {"traceEvents": list(iter_trace_events(sessions)), "displayTimeUnit": "ns"}


def _dumps(ev: dict) -> bytes:
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
            if ev["ph"] == "X":
                n += 1
            yield _dumps(ev)

    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b'{"displayTimeUnit":"ns","traceEvents":[')
        _write_chunked(fh, events())
        fh.write(b"]}")
    return n
