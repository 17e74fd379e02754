"""The trace events of one session's columns written by the compiled encoder
(``cirron/export/_cperfetto.c``): the fast twin of the Arrow-kernel path of
:mod:`cirron.export._perfetto_columns`, byte for byte the same (the tests compare them, and both
with the per-record encoder).

What stays in Python is what is made once per session or per distinct value: the float texts of
each time and value column (one ``orjson`` call each), the args text of each distinct attrs, the
thread names, and the per-record text of the rare spans and marks the columns cannot write.

The entry points also serve a session encoded piece by piece:

* :func:`span_events` is the light pass over a whole session: from its int columns alone
  (process, thread, start, end, parent row) it gives every span event in output order and each
  span's track id;
* :func:`span_columns` makes the compiled encoder's columns of a run of the session's span rows;
  their ``encode(events, texts, row_base)`` writes a run of those events whose spans are among
  them (``row_base``: the session row of the columns' first span).

The encoders let the GIL go while they write a slice, so :func:`encoded_ahead` has a worker
thread write each slice while the one before is written out and the next run is made ready.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cirron.export import _perfetto_columns
from cirron.export._otlp_columns import CannotEncode
from cirron.export._perfetto_columns import (
    Encoded,
    _marks,
    _release,
    _SessionEvents,
    thread_name,
    track_order,
)

__all__ = ["Job", "check", "encoded_ahead", "mark_events", "mark_jobs", "session_events", "span_columns",
           "span_events", "span_jobs"]

#: The compiled module (this one runs only where it was built).
_cperfetto: Any = _perfetto_columns._cperfetto

#: Events encoded at a time (about 8 MB of text).
SLICE_EVENTS = 1 << 16

#: A thread id whose overlap tracks' ids (``-(|tid| * 64 + lane)``) an int64 holds.
_TID_LIMIT = 2**56

_TEXT = 3

#: A slice to encode (its events, or ``None`` for none), or events already encoded.
Job = Callable[[], Encoded | None] | Encoded | bytes


def encoded_ahead(jobs: Iterable[Job]) -> Iterator[bytes | Encoded]:
    """The events of ``jobs`` in order, each callable run in a worker thread one ahead: while the
    caller writes a slice, the next is encoded (the compiled encoders let the GIL go) and the
    jobs after it are made ready. At most two slices are held; the worker is joined on return,
    error or close."""
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: deque[Any] = deque()

    def handed_over(keep: int) -> Iterator[bytes | Encoded]:
        """The events of the pending jobs, oldest first, until ``keep`` are left."""
        while len(pending) > keep:
            head = pending.popleft()
            done = head.result() if isinstance(head, Future) else head
            if done is not None:
                yield done

    with ThreadPoolExecutor(1, thread_name_prefix="cirron-perfetto") as pool:
        try:
            for job in jobs:
                pending.append(pool.submit(job) if callable(job) else job)
                yield from handed_over(1)
            yield from handed_over(0)
        finally:
            for left in pending:
                if isinstance(left, Future):
                    left.cancel()


def span_jobs(spans: Any, events: np.ndarray, texts: list[bytes]) -> Iterator[Callable[[], Encoded]]:
    """The slices of ``events`` to encode from the compiled columns ``spans`` (see :func:`span_columns`)."""
    def job(part: np.ndarray) -> Callable[[], Encoded]:
        return lambda: Encoded(*spans.encode(part, texts, 0))

    for a in range(0, len(events), SLICE_EVENTS):
        yield job(events[a:a + SLICE_EVENTS])


def check(tid: np.ndarray) -> None:
    """Refuse thread ids whose overlap tracks' ids an int64 cannot hold (before anything is written)."""
    if len(tid) and (int(tid.max()) > _TID_LIMIT or int(tid.min()) < -_TID_LIMIT):
        raise CannotEncode("thread id out of range")


def float_list(values: np.ndarray) -> bytes:
    """The floats as a JSON list, each as ``orjson`` writes it (the compiled encoder splits it)."""
    return orjson.dumps(np.ascontiguousarray(values, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY)


#: Below this many nanoseconds from the base, the compiled encoder writes a time itself (see
#: ``TIME_INT_LIMIT`` in _cperfetto.c: the exact decimal of the microseconds is orjson's text).
TIME_INT_LIMIT = 1000 << 43


def _times(ns: np.ndarray, base: int) -> bytes | np.ndarray:
    """``(ns - base) / 1000.0`` (what the per-record encoder computes) for the compiled encoder:
    ``ns - base`` where it writes them all itself, else the floats' JSON list."""
    since = ns - np.int64(base)  # the range was checked: no overflow
    if not len(since) or (int(since.max()) < TIME_INT_LIMIT and int(since.min()) > -TIME_INT_LIMIT):
        return np.ascontiguousarray(since, dtype=np.int64)
    return float_list(since.astype(np.float64) / 1000.0)


def text_buffers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, Any]:
    """A string array's int64 offsets and its data buffer."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    if len(arr) == 0 or bufs[1] is None:
        return np.zeros(len(arr) + 1, dtype=np.int64), b""
    offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    return offsets, bufs[2] if bufs[2] is not None else b""


def span_events(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray, parent: np.ndarray,
                threads: set[tuple[int, int]]) -> tuple[np.ndarray, list[bytes], np.ndarray]:
    """Every span event of a session in output order, as ``row * 4 + kind`` (B 0, E 1, X 2; 3: the
    thread-name text of that number in the returned list), and each span's track id. ``parent``
    is each span's parent row (-1: none); ``threads`` (the tracks the export has named) is updated."""
    events, places, texts, track_tid = span_events_apart(pid, tid, start, end, parent, threads)
    if places:
        events = np.insert(events, places, np.arange(len(texts), dtype=np.int64) * 4 + _TEXT)
    return events, texts, track_tid


def span_events_apart(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray, parent: np.ndarray,
                      threads: set[tuple[int, int]]) -> tuple[np.ndarray, list[int], list[bytes], np.ndarray]:
    """:func:`span_events` with the thread names' events left out: each text goes before the
    event of the given place (ascending, ``np.insert``'s indices), for a caller that puts them in
    while it converts the events (without a second copy of every event)."""
    track, order, bounds = track_order(pid, tid, start, end)
    events_b, lanes_b, opened = _cperfetto.sweep(order.astype(np.int64, copy=False), track.astype(np.int32, copy=False),
                                                 start, end, parent, bounds.astype(np.int64, copy=False))
    del track
    firsts = order[bounds[:-1]]  # each track's first span
    del order  # (as the buffers below: let go before the copies, a big session's peak is here)
    lanes = np.frombuffer(lanes_b, dtype=np.int32)
    del lanes_b
    track_tid = tid.copy()
    over = lanes > 0
    track_tid[over] = -(np.abs(tid[over]) * 64 + lanes[over])
    del over, lanes
    texts: list[bytes] = []
    places: list[int] = []
    for place, t, lane in opened:  # each track's name, before its first event
        first = int(firsts[t])
        named = thread_name(int(pid[first]), int(tid[first]), lane, threads)
        if named is not None:
            places.append(place)
            texts.append(named)
    events = np.frombuffer(events_b, dtype=np.int64)
    del events_b
    return events, places, texts, track_tid


def span_columns(enc: _SessionEvents, pid: np.ndarray, track_tid: np.ndarray, start: np.ndarray, end: np.ndarray,
                 is_open: np.ndarray, base: int) -> Any:
    """The compiled encoder's columns of ``enc``'s spans (rows as in ``enc``): their
    ``encode(events, texts, row_base)`` writes events (see :func:`span_events`) whose spans are
    among them, the first of them being the session's row ``row_base``, and gives the text and
    how many spans the events begin."""
    s = enc.s
    inner = [(t or "").encode() for t in enc.attr_inner]
    inner_off = np.zeros(len(inner) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in inner], out=inner_off[1:])
    slow = np.array([t is None for t in enc.attr_inner], dtype=np.uint8)
    attr = np.ascontiguousarray(enc.attr, dtype=np.int32)
    name_off, names = text_buffers(pc.fill_null(s["name"], "None"))
    id_off, ids = text_buffers(s["id"])
    return _cperfetto.Spans(
        name_off=name_off, names=names,
        pid=np.ascontiguousarray(pid, dtype=np.int32), tid=np.ascontiguousarray(track_tid, dtype=np.int64),
        starts=_times(start, base), ends=_times(end, base),
        attr=attr, args_off=inner_off, args=b"".join(inner), slow=slow,
        index=np.ascontiguousarray(pc.fill_null(s["index"], 0).to_numpy(zero_copy_only=False), dtype=np.int64),
        has_index=pc.is_valid(s["index"]).to_numpy(zero_copy_only=False).view(np.uint8),
        id_off=id_off, ids=ids, has_id=pc.is_valid(s["id"]).to_numpy(zero_copy_only=False).view(np.uint8),
        open=np.ascontiguousarray(is_open).view(np.uint8),
        exact={int(i): enc.exact_args(int(i), bool(is_open[i])) for i in np.flatnonzero(slow[attr])})


def session_events(enc: _SessionEvents, base: int, pid: np.ndarray, tid: np.ndarray, start: np.ndarray,
                   end: np.ndarray, is_open: np.ndarray, new_processes: list[bytes],
                   threads: set[tuple[int, int]]) -> Iterator[bytes | Encoded]:
    """:func:`cirron.export._perfetto_columns.session_events` by the compiled encoder."""
    yield from new_processes
    if len(pid):
        parent = np.ascontiguousarray(enc.cols.span_parent, dtype=np.int64)
        events, texts, track_tid = span_events(pid, tid, start, end, parent, threads)
        del parent
        spans = span_columns(enc, pid, track_tid, start, end, is_open, base)
        del track_tid, start, end, is_open
        yield from encoded_ahead(span_jobs(spans, events, texts))
        del spans, events
    yield from encoded_ahead(mark_jobs(enc, pid, base))


def mark_events(enc: _SessionEvents, pid: np.ndarray, base: int) -> Iterator[Encoded]:
    """The events of ``enc``'s marks (``pid``: the process of each of ``enc``'s spans, a mark's is
    its span's), by the compiled encoder; the spans' combined columns are let go."""
    for job in mark_jobs(enc, pid, base):
        done = job()
        if done is not None:
            yield done


def mark_jobs(enc: _SessionEvents, pid: np.ndarray, base: int) -> Iterator[Callable[[], Encoded | None]]:
    """:func:`mark_events` as slices to encode (``None``: a slice without events)."""
    marks = _marks(enc, pid, base)
    if marks is None:
        return
    n = len(marks.pid)
    exact = {int(i): marks.exact(enc, int(i), base) for i in np.flatnonzero(~marks.plain & marks.has_ts)}
    name_off, names = text_buffers(pc.fill_null(enc.m["name"], "None"))
    cols = _cperfetto.Marks(name_off=name_off, names=names, pid=np.ascontiguousarray(marks.pid, dtype=np.int32),
                            ts=_times(marks.ts, base), values=float_list(marks.values),
                            plain=marks.plain.view(np.uint8), exact=exact)
    del marks, name_off, names

    def job(a: int, b: int) -> Callable[[], Encoded | None]:
        def encode() -> Encoded | None:
            data = cols.encode(a, b)
            return Encoded(data, 0) if data else None
        return encode

    for a in range(0, n, SLICE_EVENTS):
        yield job(a, min(n, a + SLICE_EVENTS))
    _release()
