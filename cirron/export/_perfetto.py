"""Chrome trace-event JSON (what ui.perfetto.dev, chrome://tracing and speedscope open).

One process per (session, rank), one track per thread; spans are complete events (``ph: X``)
with microsecond ``ts``/``dur`` relative to the earliest span; numeric marks are counter tracks
(``ph: C``), other marks instant events (``ph: i``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import orjson

from cirron.export._common import atomic_file
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session

__all__ = ["to_trace_events", "write_perfetto"]


def _label(span: dict) -> str:
    name = str(span.get("name") or "span")
    idx = span.get("index")
    return f"{name}[{idx}]" if type(idx) is int else name


def to_trace_events(sessions: Sequence[Session]) -> dict:
    starts = [s["start_ns"] for sess in sessions for s in sess.spans if type(s.get("start_ns")) is int]
    base = min(starts) if starts else 0
    events: list[dict] = []
    pid_of: dict[tuple[str, object], int] = {}
    threads: set[tuple[int, int]] = set()

    def us(ns: int) -> float:
        return (ns - base) / 1000.0

    for sess in sessions:
        last = sess.last_ns or base
        span_pid: dict[str, int] = {}
        for s in sess.spans:
            rank = s.get("rank") if type(s.get("rank")) is int else 0
            key = (sess.id, rank)
            if key not in pid_of:
                pid_of[key] = len(pid_of) + 1
                label = f"session {sess.id[:8]} rank {rank}"
                events.append({"ph": "M", "name": "process_name", "pid": pid_of[key], "tid": 0, "args": {"name": label}})
            pid = pid_of[key]
            span_pid[s["id"]] = pid
            tid = s.get("thread_id") if type(s.get("thread_id")) is int else 0
            if (pid, tid) not in threads:
                threads.add((pid, tid))
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"thread {tid}"}})
            start = s.get("start_ns") if type(s.get("start_ns")) is int else base
            end = s.get("end_ns")
            args = {"span_id": s["id"], "session_id": sess.id}
            if isinstance(s.get("attrs"), dict):
                args.update(_limit_depth(s["attrs"], 16))
            if type(end) is not int:
                end = max(start, last)
                args["cirron.open"] = True
            events.append({"ph": "X", "name": _label(s), "cat": "cirron", "pid": pid, "tid": tid, "ts": us(start),
                           "dur": max(end - start, 0) / 1000.0, "args": args})
        default_pid = next(iter(span_pid.values()), None)
        for m in sess.marks:
            ts = m.get("ts_ns")
            if type(ts) is not int:
                continue
            pid = span_pid.get(m.get("span_id"), default_pid)
            if pid is None:
                continue
            v = m.get("value")
            name = str(m.get("name") or "mark")
            if type(v) in (int, float, bool) and (type(v) is not float or math.isfinite(v)):
                events.append({"ph": "C", "name": name, "pid": pid, "ts": us(ts), "args": {name: float(v)}})
            else:
                tid = m.get("thread_id") if type(m.get("thread_id")) is int else 0
                shown = v if isinstance(v, str) else repr(v)
                events.append({"ph": "i", "s": "t", "name": f"{name}={shown}", "pid": pid, "tid": tid, "ts": us(ts)})
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"cirron_base_ns": str(base)}}


def write_perfetto(sessions: Sequence[Session], path: str | os.PathLike[str]) -> int:
    doc = to_trace_events(sessions)
    with atomic_file(path) as tmp:
        tmp.write_bytes(orjson.dumps(doc))
    return sum(1 for e in doc["traceEvents"] if e["ph"] == "X")
