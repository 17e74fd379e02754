"""The trace events of a session too big for whole columns, encoded piece by piece.

The order of a session's span events and the track each span is drawn on come from the whole
session (a thread's spans sorted by start, swept or checked to nest), but only from a few numbers
per span; the text of an event needs the span's name, ids and attrs. So:

1. the pieces of :func:`cirron.spool.pieces.iter_pieces` are read once: per span its rank,
   thread, start, end, whether it is open and its parent go to files (about 40 bytes a span),
   each piece's span columns the events are written from (id, name, index, attrs) to an Arrow
   IPC file of its own, its marks' to a temporary Arrow IPC file, and what could stop the
   column encoder (attrs it cannot read, times out of range) is found before anything is written;
2. the order and tracks are computed on those numbers as for the whole session
   (:func:`cirron.export._perfetto_native.span_events`, the compiled sweep, or its pure-Python
   twin :func:`cirron.export._perfetto_columns._span_order`);
3. the events are cut in runs of :data:`RUN_EVENTS`; each run's spans are read from the pieces'
   files by memory mapping (a range of a piece's rows, as when spans were written in order, is
   a slice of the file; scattered rows are taken) and its events encoded by the column encoder
   (compiled or not), its slices' text reusing the heap (:func:`cirron._memory.reused_heap`);
4. then each piece's marks (their process is their span's, found by the exact key of its id,
   :func:`~cirron.export._piecewise.exact_keys`, when the session has several processes).

The bytes are those of :func:`cirron.export._perfetto_columns.session_events` for the whole
session. Memory: about 70 bytes per span while the order is computed by the compiled sweep (the
pure-Python twin's nesting check needs about twice that), then about 40, plus one run's spans.
Disk: the pieces' span and mark columns the events need, besides the spill of
:func:`~cirron.spool.pieces.iter_pieces` while it runs; removed when the export ends or fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._memory import returned_memory, reused_heap, trim
from cirron.export._json import _json_strings
from cirron.export._otlp_columns import _Columns, _np
from cirron.export._perfetto import rank_processes
from cirron.export._perfetto_columns import (
    _TEXT,
    Encoded,
    _check_range,
    _cperfetto,
    _encode_events,
    _mark_events,
    _SessionEvents,
    _span_order,
    _ts,
)
from cirron.export._perfetto_native import Job, encoded_ahead
from cirron.export._piecewise import SpanIndex, Spill, exact_keys
from cirron.spool.catalog import SessionInfo

__all__ = ["RUN_EVENTS", "session_events_in_pieces"]

#: Events converted at a time.
_LOOKUP_ROWS = 1 << 20

#: Events encoded from one run's spans (a multiple of both encoders' slices).
RUN_EVENTS = 1 << 17

#: The per-span numbers step 1 writes (name → dtype).
_NUMBERS = {"rank": np.int64, "tid": np.int64, "start": np.int64, "end": np.int64, "open": np.bool_,
            "parent": np.int64}


def session_events_in_pieces(info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
                             threads: set[tuple[int, int]]) -> Iterator[bytes | Encoded] | None:
    """:func:`cirron.export._perfetto_columns.session_events` for a session read piece by piece
    (see the module docstring); ``None`` when the pieces cannot carry it or the column encoder
    cannot encode it (then it is read the reference way). ``pid_of`` and ``threads`` are only
    updated once events come."""
    from cirron.export._otlp_columns import CannotEncode
    from cirron.spool.pieces import iter_pieces

    pieces = iter_pieces(info, session_parents=True)
    if pieces is None:
        return None
    events = _events(info, pieces, base, pid_of, threads)
    try:
        first = next(events)
    except StopIteration:
        return iter(())
    except CannotEncode:
        return None

    def chained() -> Iterator[bytes | Encoded]:
        yield first
        yield from events

    return chained()


def _events(info: SessionInfo, pieces: Iterator[Any], base: int, pid_of: dict[tuple[str, object], int],
            threads: set[tuple[int, int]]) -> Generator[bytes | Encoded, None, None]:
    with tempfile.TemporaryDirectory(prefix="cirron-perfetto-") as tmp:
        try:
            with reused_heap():  # each piece's arrays, freed and allocated again
                plan = _read_pieces(info, pieces, Path(tmp), base)
        finally:
            cast(Generator[Any, None, None], pieces).close()  # its spill goes now
        yield from _session_events(plan, info, base, pid_of, threads)


#: The span and mark columns the events are encoded from (the other numbers go to files).
_SPAN_TEXT = ("id", "name", "index", "attrs")
_MARK_COLUMNS = ("span_id", "name", "ts_ns", "thread_id", "value")


class _Plan:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.marks = Spill(directory, "marks")
        self.numbers = {k: open(directory / f"{k}.bin", "wb") for k in _NUMBERS}  # noqa: SIM115
        #: the session row of each piece's first span, then the number of spans
        self.piece_start = [0]
        self.n_marks = 0
        self.span_schema: Any = None
        self.mark_schema: Any = None

    @property
    def n_pieces(self) -> int:
        return len(self.piece_start) - 1

    @property
    def n_spans(self) -> int:
        return self.piece_start[-1]

    def add(self, name: str, values: np.ndarray) -> None:
        np.ascontiguousarray(values, dtype=_NUMBERS[name]).tofile(self.numbers[name])

    def load(self, name: str) -> np.ndarray:
        return np.fromfile(self.dir / f"{name}.bin", dtype=_NUMBERS[name])

    def _spans_path(self, k: int) -> str:
        return str(self.dir / f"spans-{k}.arrow")

    def add_spans(self, spans: pa.Table) -> None:
        """The next piece's span columns, to a file of its own."""
        with pa.ipc.new_file(self._spans_path(self.n_pieces), spans.schema) as out:
            out.write_table(spans)
        self.span_schema = spans.schema
        self.piece_start.append(self.n_spans + spans.num_rows)

    def piece_spans(self, k: int) -> pa.Table:
        """Piece ``k``'s span columns, memory-mapped."""
        return pa.ipc.open_file(pa.memory_map(self._spans_path(k))).read_all()

    def spans(self, rows: np.ndarray) -> pa.Table:
        """The span columns of session ``rows`` (ascending, distinct), read from the pieces'
        files by memory mapping: a range of a piece's rows is a slice of its file, the others
        are taken; only the pages of those rows are read."""
        if not len(rows):
            return self.span_schema.empty_table()
        starts = np.asarray(self.piece_start, dtype=np.int64)
        piece = np.searchsorted(starts, rows, side="right") - 1
        cuts = (np.flatnonzero(np.diff(piece)) + 1).tolist()
        parts = []
        for a, z in zip([0, *cuts], [*cuts, len(rows)]):
            k = int(piece[a])
            table = self.piece_spans(k)
            local = rows[a:z] - starts[k]
            first = int(local[0])
            if int(local[-1]) - first + 1 == z - a:
                parts.append(table.slice(first, z - a))
            else:
                parts.append(table.take(pa.array(local)))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _read_pieces(info: SessionInfo, pieces: Iterator[Any], directory: Path, base: int) -> _Plan:
    """Step 1 (see the module docstring); raises :class:`CannotEncode` for what the column
    encoder could not encode."""
    plan = _Plan(directory)
    last = info.last_ns or base
    for k, piece in enumerate(pieces):
        spans = piece.spans
        _SessionEvents(piece, base)  # reads every distinct attrs text: raises now for one it cannot
        start = _np(spans["start_ns"], base)
        is_open = pc.is_null(spans["end_ns"])
        is_open = (is_open.combine_chunks() if isinstance(is_open, pa.ChunkedArray) else is_open
                   ).to_numpy(zero_copy_only=False)
        end = np.maximum(np.where(is_open, np.maximum(start, last), _np(spans["end_ns"], 0)), start)
        _check_range(start, base)
        _check_range(end, base)
        _check_range(_np(piece.marks["ts_ns"], base), base)
        plan.add("rank", _np(spans["rank"], 0))
        plan.add("tid", _np(spans["thread_id"], 0))
        plan.add("start", start)
        plan.add("end", end)
        plan.add("open", is_open)
        plan.add("parent", piece.span_parent)
        del start, end, is_open
        plan.add_spans(spans.select(_SPAN_TEXT))
        marks = piece.marks.select(_MARK_COLUMNS)
        plan.mark_schema = marks.schema
        plan.marks.append(k, marks, piece.mark_values)
        plan.n_marks += marks.num_rows
        del spans, marks, piece
    for fh in plan.numbers.values():
        fh.close()
    plan.marks.close()
    return plan


def _session_events(plan: _Plan, info: SessionInfo, base: int, pid_of: dict[tuple[str, object], int],
                    threads: set[tuple[int, int]]) -> Iterator[bytes | Encoded]:
    pa.default_memory_pool().release_unused()  # what the pieces left, before the order's peak
    trim()
    tid = plan.load("tid")
    if _cperfetto is not None:
        from cirron.export import _perfetto_native

        _perfetto_native.check(tid)  # raises before anything is written
    pid, new_processes = rank_processes(info, plan.load("rank"), pid_of)
    yield from new_processes
    if plan.n_spans:
        start, end = plan.load("start"), plan.load("end")
        kinds, rows, texts, track_tid = _order(plan, pid, tid, start, end, threads)
        del tid
        is_open = plan.load("open")

        def runs() -> Iterator[Job]:
            for r in range(0, len(kinds), RUN_EVENTS):
                yield from _run_events(plan, kinds[r:r + RUN_EVENTS], rows[r:r + RUN_EVENTS], texts,
                                       pid, track_tid, start, end, is_open, base)
                pa.default_memory_pool().release_unused()

        with reused_heap():  # each slice's text, freed and allocated again
            yield from encoded_ahead(runs())
        del kinds, rows, track_tid, start, end, is_open
    with reused_heap():
        yield from encoded_ahead(_marks(plan, pid, base))


def _order(plan: _Plan, pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray,
           threads: set[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, list[bytes], np.ndarray]:
    """Step 2: the kind and row of every span event in output order (for a thread's name: its
    place in the texts), the texts, and each span's track id."""
    n = plan.n_spans
    if _cperfetto is not None:
        from cirron.export._perfetto_native import span_events_apart

        with returned_memory():
            events, places, texts, track_tid = span_events_apart(pid, tid, start, end, plan.load("parent"), threads)
        # the thread names' events are put in as the events are converted (no second int64 copy of
        # every event): each name goes before the event of its place
        at = np.asarray(places, dtype=np.int64)
        if len(at) > 1 and bool((at[1:] < at[:-1]).any()):  # (the sweep opens tracks in event order)
            events = np.insert(events, at, np.arange(len(at), dtype=np.int64) * 4 + _TEXT)
            at = at[:0]
        kinds = np.empty(len(events) + len(at), dtype=np.int8)
        rows = np.empty(len(kinds), dtype=np.int32 if n < 2**31 - 1 else np.int64)
        for a in range(0, len(events), _LOOKUP_ROWS):  # (no int64 temporary of every event)
            part = events[a:a + _LOOKUP_ROWS]
            place = np.arange(a, a + len(part), dtype=np.int64)
            place += np.searchsorted(at, place, side="right")
            kinds[place] = part & 3
            rows[place] = part >> 2
        del events
        names = at + np.arange(len(at))
        kinds[names] = _TEXT
        rows[names] = np.arange(len(at))
        return kinds, rows, texts, track_tid
    parent = SimpleNamespace(cols=SimpleNamespace(span_parent=plan.load("parent")))
    with returned_memory():
        kinds, rows, texts, track_tid = _span_order(parent, pid, tid, start, end, threads)  # type: ignore[arg-type]
    return kinds, rows.astype(np.int32) if n < 2**31 - 1 else rows, texts, track_tid


def _run_events(plan: _Plan, kinds: np.ndarray, rows: np.ndarray, texts: list[bytes], pid: np.ndarray,
                track_tid: np.ndarray, start: np.ndarray, end: np.ndarray, is_open: np.ndarray,
                base: int) -> Iterator[Job]:
    """The events of a run (its ``kinds`` and ``rows``), from the pieces' spans they are of: the
    compiled encoder's slices to encode (see :func:`~cirron.export._perfetto_native.encoded_ahead`),
    or the events encoded."""
    is_text = kinds == _TEXT
    if is_text.all():  # thread names alone
        yield Encoded(b",".join(texts[r] for r in rows.tolist()), 0)
        return
    held, local = _rows_held(rows, is_text)
    spans = plan.spans(held)
    enc = _SessionEvents(SimpleNamespace(spans=spans, marks=plan.mark_schema.empty_table()), base)
    if _cperfetto is not None:
        from cirron.export._perfetto_native import span_columns, span_jobs

        cols = span_columns(enc, pid[held], track_tid[held], start[held], end[held], is_open[held], base)
        yield from span_jobs(cols, local * 4 + kinds, texts)
        return
    names = _json_strings(pc.fill_null(enc.s["name"], "None"))
    yield from _encode_events(enc, kinds, local, texts, pid[held], track_tid[held], _ts(start[held], base),
                              _ts(end[held], base), names, is_open[held])


def _rows_held(rows: np.ndarray, is_text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct span rows of a run's events (ascending) and each event's place among them
    (a text event keeps its row: its place in the texts). Marked in a map of the rows' range
    (a run's rows are mostly a few neighbouring ranges) rather than sorted."""
    span_rows = rows[~is_text]
    lo, hi = int(span_rows.min()), int(span_rows.max())
    if hi - lo > 64 * len(span_rows):  # scattered far apart: a sort is cheaper than the map
        held = np.unique(span_rows)
        return held, np.where(is_text, rows, np.searchsorted(held, rows)).astype(np.int64)
    place = np.zeros(hi - lo + 1, dtype=np.int32)
    place[span_rows - lo] = 1
    held = np.flatnonzero(place) + lo
    place[held - lo] = np.arange(len(held), dtype=np.int32)
    return held, np.where(is_text, rows, place[np.clip(rows - lo, 0, hi - lo)]).astype(np.int64)


def _marks(plan: _Plan, pid: np.ndarray, base: int) -> Iterator[Job]:
    """Step 4: the mark events, each piece's (the process of a mark is its span's when the session
    has several)."""
    if not plan.n_marks or not len(pid):
        return
    encode: Any = _mark_events
    if _cperfetto is not None:
        from cirron.export import _perfetto_native

        encode = _perfetto_native.mark_jobs
    index = None
    if (pid != pid[0]).any():
        index = SpanIndex()  # keyed only here: a session of one process needs no keys
        for k in range(plan.n_pieces):
            hi, lo, _valid = exact_keys(plan.piece_spans(k)["id"])
            index.add(hi, lo)
        index.seal()
    for k in range(plan.n_pieces):
        marks, values = plan.marks.read(k, plan.mark_schema)
        if not marks.num_rows:
            continue
        span_pid = pid[:1]
        span_ids: Any = pa.array([None], pa.string())
        if index is not None:
            # a stand-in for the session's spans: each distinct span id the marks name, with the
            # process of the span it names (the first: none, the default)
            hi, lo, valid = exact_keys(marks["span_id"])
            row = index.lookup(hi, lo, valid)
            del hi, lo, valid
            named, first = np.unique(row, return_index=True)
            first = first[named >= 0]
            span_ids = pa.concat_arrays([span_ids, marks["span_id"].take(pa.array(first)).combine_chunks()])
            span_pid = np.concatenate([pid[:1], pid[row[first]]])
        cols = SimpleNamespace(spans=pa.table({"id": span_ids}), marks=marks, mark_values=values)
        enc = SimpleNamespace(s=_Columns(cols.spans), m=_Columns(marks), cols=cols)
        yield from encode(enc, span_pid, base)
        del marks, values, enc, cols
