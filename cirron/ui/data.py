"""The viewer's data layer: spool → compact, query-ready views of sessions.

The only module of :mod:`cirron.ui` that reads the spool, and it reads it only through the
read API of :mod:`cirron.spool` (:class:`cirron.spool.catalog.Catalog`: session summaries,
runs, one session loaded at a time); the web layer (:mod:`cirron.ui.app`) asks it for plain
JSON-ready dicts.

* **Sessions** come from a catalog of each spool, opened again only when that spool's batch
  files change (new, grown or removed files: a live run keeps adding them).
* **One session's views** (:class:`SessionData`) are built from a full read of the batch files
  holding that session, then kept as numpy columns (spans sorted by start, with depth and name
  codes), so a timeline window, the step table and the mark series are array operations, not
  walks over records. The few most recently viewed sessions stay cached; a session whose batch
  files changed is rebuilt on its next request.
* **Ranks**: sessions of one run (same ``run_id`` on their root span) compared step by step.

The rank comparison is :mod:`cirron.spool.ranks`' (what ``cirron traces ranks`` prints).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cirron._format import REQUEST_SPAN, span_label
from cirron._schema import BATCH_SPAN_NAME, DATA_LOAD_SPAN_NAME, EPOCH_SPAN_NAME, decode_float, encode_float
from cirron.spool import Session, list_batch_files
from cirron.spool.arrays import MAX_DEPTH, enclosing_steps
from cirron.spool.catalog import Catalog
from cirron.spool.catalog import SessionInfo as CatalogInfo
from cirron.ui.window import CHUNK as WINDOW_CHUNK
from cirron.ui.window import DepthIndex, merge_blocks

#: Names of the phases a training step is split into (stacked bars of the step breakdown).
PHASES = (DATA_LOAD_SPAN_NAME, "forward", "backward", "optimizer_step")
#: Span names that mark one training step, by preference (``ci.batches`` writes ``batch``).
STEP_NAMES = (BATCH_SPAN_NAME, "step")
#: At most this many single spans in one timeline answer; the rest are aggregated.
MAX_WINDOW_SPANS = 4000
#: At most this many points per mark series, per step-breakdown chart, per tick row.
MAX_POINTS = 2000
#: How many sessions' views stay in memory (a session read piece by piece stays alone).
CACHED_SESSIONS = 3
#: Spans whose step is looked up at a time while the step table is built.
_STEP_CHUNK = 1 << 18
#: A session over the columnar reader's limit is read piece by piece (:mod:`cirron.ui._bigsession`)
#: when its batch files hold nothing else; one whose records share batch files with other
#: sessions' can only be rebuilt whole, so beyond this many bytes of batch JSON it is not viewed
#: (the server would take gigabytes). Their pages say so and name the tools that read any size
#: in bounded memory.
MAX_VIEW_BYTES = 256 << 20


class UnknownSession(LookupError):
    """No session with that id in the spools being viewed."""


class SessionTooBig(Exception):
    """A session over :data:`MAX_VIEW_BYTES`; the message says its size, the limit and what to use."""


def _mb(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MB"


def too_big(info: SessionInfo) -> str | None:
    """Why ``info`` cannot be viewed (one line), or ``None`` when it can."""
    if info.summary.bytes <= MAX_VIEW_BYTES or info.streamable:
        return None
    return refusal_text(info)


def refusal_text(info: SessionInfo) -> str:
    """The one line that refuses ``info``'s session: its size, the limit, what reads it instead."""
    size = info.summary.bytes
    return (f"session {info.id} holds {_mb(size)} of batch JSON, over the viewer's limit of "
            f"{_mb(MAX_VIEW_BYTES)}: read it with `cirron traces view --session {info.id[:12]}` "
            f"or `cirron traces export --format parquet --session {info.id[:12]}`")


def _num(v: Any) -> float | None:
    """A mark value or stat as a float (the non-finite strings included); else None."""
    v = decode_float(v)
    t = type(v)
    if t is float or t is int:
        return float(v)
    if t is bool:
        return 1.0 if v else 0.0
    return None


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _short_json(v: Any, limit: int = 200) -> str:
    import orjson

    try:
        text = orjson.dumps(v, default=str).decode()
    except TypeError:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ============================================================================ session views


@dataclass(frozen=True)
class SessionInfo:
    """One row of the sessions table (the catalog's summary of a session)."""

    summary: CatalogInfo
    #: Whether its batch files can be read one at a time (:meth:`cirron.spool.catalog.Catalog.streamable`):
    #: then a session of any size is viewed (piece by piece when big).
    streamable: bool = False

    @property
    def id(self) -> str:
        return self.summary.id

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def started_ns(self) -> int | None:
        return self.summary.started_ns

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        dur = s.ended_ns - s.started_ns if s.ended_ns is not None and s.started_ns is not None else None
        return {
            "id": s.id, "spool": str(s.spool), "started_ns": s.started_ns, "ended_ns": s.ended_ns,
            "duration_ns": dur, "status": s.status, "live": s.live, "spans": s.spans, "marks": s.marks,
            "snapshots": s.snapshots, "bytes": s.bytes, "run_id": s.run_id, "rank": s.rank,
            "host": s.host, "pid": s.resource.get("pid"), "too_big": too_big(self),
        }


@dataclass
class SessionRecords:
    """One session's records as columns: what :class:`SessionData` is built from.

    Made from the fast columnar reader's answer (:func:`records_of_columns`) or, for a session it
    cannot read, from the session rebuilt record by record (:func:`records_of_session`)."""

    started_ns: int | None
    span_id: Any  # pyarrow string arrays / int64 arrays (nullable), one entry per span
    span_parent: np.ndarray  # row of each span's parent among the spans, -1 for none
    span_name: Any
    span_index: Any
    span_start: Any
    span_end: Any
    span_cpu: Any
    span_gpu: Any
    span_memory: Any
    span_attrs: Any  # JSON text
    mark_span: Any
    mark_name: Any
    mark_kind: Any
    mark_ts: Any
    #: Each mark's value as a number (NaN: not a number), what the point charts take.
    mark_number: np.ndarray
    #: The values as read, for the summary table; ``None`` when every value is the float in ``mark_number``.
    mark_values: list[Any] | None
    snapshots: list[Any]

    def mark_value(self, i: int) -> Any:
        """Mark ``i``'s value as read."""
        return float(self.mark_number[i]) if self.mark_values is None else self.mark_values[i]


def records_of_columns(cols: Any) -> SessionRecords:
    """From :class:`cirron.spool.columnar.SessionColumns`."""
    s, m = cols.spans, cols.marks
    return SessionRecords(
        started_ns=cols.session.started_ns, span_id=s["id"], span_parent=cols.span_parent, span_name=s["name"],
        span_index=s["index"], span_start=s["start_ns"], span_end=s["end_ns"], span_cpu=s["cpu_ns"],
        span_gpu=s["gpu_ns"], span_memory=s["memory_peak_bytes"], span_attrs=s["attrs"], mark_span=m["span_id"],
        mark_name=m["name"], mark_kind=m["kind"], mark_ts=m["ts_ns"],
        mark_number=_numbers(cols.mark_values) if cols.mark_values is not None else _np(m["value"], math.nan),
        mark_values=cols.mark_values, snapshots=cols.snapshots)


def _numbers(values: list[Any]) -> np.ndarray:
    return np.array([math.nan if (v := _num(x)) is None else v for x in values], dtype=np.float64)


def _text(v: Any) -> str:
    return v if isinstance(v, str) else str(v)


def records_of_session(session: Session) -> SessionRecords:
    """From a session rebuilt record by record (:meth:`cirron.spool.catalog.Catalog.load`)."""
    import pyarrow as pa

    from cirron.export._common import attrs_text

    spans, marks = session.spans, session.marks
    values = [mk.get("value") for mk in marks]
    ids = [sp["id"] for sp in spans]
    row = {sid: i for i, sid in enumerate(ids)}
    i64, st = pa.int64(), pa.string()

    def ints(recs: list[Any], key: str) -> Any:
        return pa.array([v if type(v := r.get(key)) is int else None for r in recs], i64)

    def texts(recs: list[Any], key: str) -> Any:
        return pa.array([None if (v := r.get(key)) is None else _text(v) for r in recs], st)

    return SessionRecords(
        started_ns=session.started_ns, span_id=pa.array(ids, st),
        span_parent=np.array([row.get(sp.get("parent_id"), -1) for sp in spans], dtype=np.int64),
        span_name=pa.array([_text(sp.get("name")) for sp in spans], st), span_index=ints(spans, "index"),
        span_start=ints(spans, "start_ns"), span_end=ints(spans, "end_ns"), span_cpu=ints(spans, "cpu_ns"),
        span_gpu=ints(spans, "gpu_ns"), span_memory=ints(spans, "memory_peak_bytes"),
        span_attrs=pa.array([attrs_text(sp.get("attrs")) for sp in spans], st), mark_span=texts(marks, "span_id"),
        mark_name=pa.array([_text(mk.get("name")) for mk in marks], st), mark_kind=texts(marks, "kind"),
        mark_ts=ints(marks, "ts_ns"), mark_number=_numbers(values), mark_values=values,
        snapshots=list(session.snapshots))


def _np(arr: Any, fill: Any) -> np.ndarray:
    import pyarrow.compute as pc

    arr = pc.fill_null(arr, fill)
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)




def _depths(parent: np.ndarray) -> np.ndarray:
    depth = np.zeros(parent.size, dtype=np.int32)
    ptr = parent.copy()
    for _ in range(MAX_DEPTH):
        live = np.flatnonzero(ptr >= 0)
        if not live.size:
            break
        depth[live] += 1
        ptr[live] = parent[ptr[live]]
    return depth


def _place_spans(starts: np.ndarray, ends: np.ndarray, started_ns: int | None,
                 mark_last: int | None) -> tuple[int, np.ndarray]:
    """Put spans with unknown (-1) times on the timeline, in place: the session's time origin is
    its first known span start (or its start when earlier) and an unknown start becomes it; an
    open span ends at the last time anything happened (span or mark); no span ends before it
    starts. Returns the origin and which spans are open."""
    known = starts[starts >= 0]
    t0 = int(known.min()) if known.size else 0
    if started_ns is not None:
        t0 = min(t0, started_ns) if known.size else started_ns
    del known
    last = int(max(ends.max(initial=-1), starts.max(initial=-1)))
    if mark_last is not None and mark_last > last:
        last = mark_last
    is_open = ends < 0
    starts[starts < 0] = t0
    ends[is_open] = max(last, t0)
    np.maximum(ends, starts, out=ends)
    return t0, is_open


def _by_first_use(codes: np.ndarray, n_names: int) -> tuple[np.ndarray, np.ndarray]:
    """Names numbered in order of first appearance on the timeline (their colours follow it):
    the codes in that order, and the new number of each code."""
    used, first = np.unique(codes, return_index=True)
    by_first = used[np.argsort(first)]
    renumber = np.zeros(n_names, dtype=np.int32)
    renumber[by_first] = np.arange(by_first.size, dtype=np.int32)
    return by_first, renumber


def _decode_attrs(text: str | None) -> Any:
    if not text or text == "{}":
        return {}
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


class SessionData:
    """Everything the pages of one session show, as arrays built once from its records."""

    # Built by the _build_* methods below; one entry per span (in start order) unless noted.
    info: SessionInfo
    t0_ns: int
    start: NDArray[np.int64]
    end: NDArray[np.int64]
    open: NDArray[np.bool_]
    depth: NDArray[np.int32]
    #: Span names; ``name`` holds each span's index into it.
    names: list[str]
    name: NDArray[np.int32]
    #: Row of each span's parent (-1: none).
    parent: NDArray[np.int64]
    #: Row of each span in the records it was built from (Arrow columns kept in that order).
    _src: NDArray[np.int64]
    duration_ns: int
    # Marks: every tick in time order, its series (index into ``mark_tick_names``) and value.
    mark_ts: NDArray[np.int64]
    mark_tick_names: list[str]
    mark_tick_name: NDArray[np.int32]
    mark_tick_value: NDArray[np.float64]
    # Steps: the span row of each step, the index of its epoch (-1: none), and the time of each
    # phase within it.
    step_rows: NDArray[np.int64]
    step_epoch: NDArray[np.int64]
    phase_ns: NDArray[np.int64]
    request_rows: NDArray[np.int64]
    _by_depth: DepthIndex | None = None
    #: Whether these views are cached only alone (a big session read piece by piece: two would
    #: pass the server's memory bound).
    cached_alone = False

    def __init__(self, info: SessionInfo, records: SessionRecords | Session) -> None:
        if isinstance(records, Session):
            records = records_of_session(records)
        self.info = info
        self._build_spans(records)
        self._build_marks(records)
        self._build_requests()
        self._build_snapshots(records)
        del self._build_ids, self._build_new_row

    def close(self) -> None:
        """Let go of what the views hold outside memory (nothing here; see :mod:`cirron.ui._bigsession`)."""

    # ---------------------------------------------------------------- spans / timeline

    def _build_spans(self, r: SessionRecords) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        starts = _np(r.span_start, -1).astype(np.int64)
        ends = _np(r.span_end, -1).astype(np.int64)
        depth = _depths(r.span_parent)
        mark_last = pc.max(r.mark_ts).as_py() if len(r.mark_ts) else None
        t0, is_open = _place_spans(starts, ends, r.started_ns, mark_last)
        self.t0_ns = t0
        # by start; a parent before the spans that start with it; then by id (as the tree's pre-order)
        take = pc.sort_indices(pa.table({"s": starts, "d": depth, "id": r.span_id}),
                               sort_keys=[("s", "ascending"), ("d", "ascending"), ("id", "ascending")])
        order = take.to_numpy()
        self.start = starts[order] - t0
        self.end = ends[order] - t0
        self.open = is_open[order]
        self.depth = depth[order]
        del take, starts, ends, depth, is_open
        enc = pc.dictionary_encode(pc.fill_null(r.span_name, "None"))
        if hasattr(enc, "combine_chunks"):
            enc = enc.combine_chunks()
        codes = enc.indices.to_numpy(zero_copy_only=False)[order]
        by_first, renumber = _by_first_use(codes, len(enc.dictionary))
        dictionary = enc.dictionary.to_pylist()
        self.names = [dictionary[c] for c in by_first.tolist()]
        self.name = renumber[codes]
        del enc, codes
        new_row = np.empty(order.size, dtype=np.int64)
        new_row[order] = np.arange(order.size)
        p = r.span_parent[order]
        self.parent = np.where(p >= 0, new_row[np.maximum(p, 0)], -1)
        del p
        self._index_np = _np(r.span_index, np.iinfo(np.int64).min)[order]
        # The columns only shown for a few spans at a time stay in read order: ``_src`` maps a
        # span row to its row there (no sorted copies of them are made).
        self._src = order
        self._cpu, self._gpu, self._memory = r.span_cpu, r.span_gpu, r.span_memory
        self._attrs = r.span_attrs
        # ids are only needed while the views are built (marks and snapshots name their span by id)
        self._build_ids = r.span_id.combine_chunks() if hasattr(r.span_id, "combine_chunks") else r.span_id
        self._build_new_row = new_row
        self.duration_ns = int(self.end.max(initial=0))

    def _index_of(self, i: int) -> int | None:
        v = int(self._index_np[i])
        return None if v == np.iinfo(np.int64).min else v

    def _attrs_of(self, i: int) -> Any:
        return _decode_attrs(self._attrs[int(self._src[i])].as_py())

    def _label(self, i: int, attrs: Any = None) -> str:
        if attrs is None and self.names[self.name[i]] == REQUEST_SPAN:
            attrs = self._attrs_of(i)
        return span_label(self.names[self.name[i]], self._index_of(i), attrs)

    def _rows_of(self, span_ids: Iterable[Any]) -> dict[Any, int]:
        """Rows of the spans with these ids (those that exist); only while the views are built."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = [s for s in set(span_ids) if isinstance(s, str)]
        if not wanted:
            return {}
        rows = pc.index_in(pa.array(wanted, pa.string()), value_set=self._build_ids).to_pylist()
        return {s: int(self._build_new_row[r]) for s, r in zip(wanted, rows) if r is not None}

    def _details(self, rows: np.ndarray) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """cpu_ns, gpu_ns, memory_peak_bytes and attrs (JSON text) of the spans at ``rows``."""
        import pyarrow as pa

        take = pa.array(self._src[rows])
        return (self._cpu.take(take).to_pylist(), self._gpu.take(take).to_pylist(),
                self._memory.take(take).to_pylist(), self._attrs.take(take).to_pylist())

    def _spans_json(self, rows: np.ndarray) -> list[dict[str, Any]]:
        cpu, gpu, memory, attrs = self._details(rows)
        out = []
        for k, i in enumerate(rows.tolist()):
            a = _decode_attrs(attrs[k])
            out.append({
                "i": i, "parent": int(self.parent[i]), "label": self._label(i, a), "name": self.names[self.name[i]],
                "depth": int(self.depth[i]),
                "start": int(self.start[i]), "end": int(self.end[i]), "open": bool(self.open[i]),
                "cpu_ns": cpu[k], "gpu_ns": gpu[k], "memory_peak_bytes": memory[k],
                "attrs": _short_json(a) if isinstance(a, dict) and a else "",
            })
        return out

    def timeline(self, t0: int | None, t1: int | None, px: int, fit: bool = False) -> dict[str, Any]:
        """The spans visible in ``[t0, t1)`` (ns since the session start) at ``px`` pixels wide.

        Spans of at least a pixel come one by one (the :data:`MAX_WINDOW_SPANS` longest when
        more); smaller ones are merged per depth into blocks of a few pixels each, carrying
        their count and summed wall time. With ``fit`` and no window given (the page's first
        view), the window is the spans below the session root, padded, when they fill less than
        half of the session (a short loop after a long import); ``fitted`` says so.
        """
        fitted = False
        if fit and t0 is None and t1 is None:
            window = self._fit_window()
            if window is not None:
                (t0, t1), fitted = window, True
        lo = 0 if t0 is None else max(0, int(t0))
        hi = self.duration_ns if t1 is None else int(t1)
        if hi <= lo:
            hi = lo + 1
        px = max(50, min(int(px), 10_000))
        ns_per_px = (hi - lo) / px
        parts = self._depth_index().visible(self.start, self.end, lo, hi)
        big_parts, small_parts = [], []
        for d, rows in parts:
            long = np.zeros(rows.size, dtype=bool)
            for c in range(0, rows.size, WINDOW_CHUNK):  # bounded temporaries on millions of spans
                part = rows[c:c + WINDOW_CHUNK]
                long[c:c + WINDOW_CHUNK] = (self.end[part] - self.start[part]) >= ns_per_px
            big_parts.append(rows[long])
            small_parts.append((d, rows[~long]))
        big = np.sort(np.concatenate(big_parts)) if big_parts else np.zeros(0, dtype=np.int64)
        late = big[:0]
        if big.size > MAX_WINDOW_SPANS:  # the longest come alone, the others join the blocks
            keep = np.argsort(-(self.end[big] - self.start[big]), kind="stable")[:MAX_WINDOW_SPANS]
            keep_mask = np.zeros(big.size, dtype=bool)
            keep_mask[keep] = True
            late = big[~keep_mask]
            big = big[keep_mask]
            late_depth = self.depth[late]
            small_parts = [(d, np.sort(np.concatenate([rows, late[late_depth == d]]))) for d, rows in small_parts]
        spans = self._spans_json(big)
        blocks = merge_blocks(small_parts, late, self.start, self.end, self.name, self.names, lo, hi, px)
        marks = self._mark_ticks(lo, hi, px)
        return {"t0": lo, "t1": hi, "px": px, "session_start_ns": self.t0_ns, "duration_ns": self.duration_ns,
                "max_depth": int(self.depth.max(initial=0)), "names": self.names, "spans": spans,
                "blocks": blocks, "marks": marks, "visible": sum(int(rows.size) for _d, rows in parts),
                "fitted": fitted}

    def _depth_index(self) -> DepthIndex:
        """The spans by depth (:class:`cirron.ui.window.DepthIndex`), made on the first timeline request."""
        if self._by_depth is None:
            self._by_depth = DepthIndex(self.end, self.depth)
        return self._by_depth

    def _fit_window(self) -> tuple[int, int] | None:
        below = self.depth > 0
        if not below.any():
            return None
        a, b = int(self.start[below].min()), int(self.end[below].max())
        if b - a >= 0.5 * self.duration_ns:
            return None
        pad = max(1000, (b - a) * 0.03)
        return max(0, math.floor(a - pad)), min(self.duration_ns, math.ceil(b + pad))

    # ---------------------------------------------------------------- marks

    def _build_marks(self, r: SessionRecords) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(r.mark_number)
        ts_all = _np(pc.subtract(r.mark_ts, self.t0_ns), 0).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
        summary = _np(pc.equal(r.mark_kind, "summary"), False).astype(bool) if n else np.zeros(0, dtype=bool)
        names_all = pc.fill_null(r.mark_name, "None")
        # summary marks: a table (few)
        self.summary_marks: list[dict[str, Any]] = []
        srows = np.flatnonzero(summary)
        if srows.size:
            take = pa.array(srows)
            s_names = names_all.take(take).to_pylist()
            s_spans = r.mark_span.take(take).to_pylist()
            span_rows = self._rows_of(s_spans)
            for k, i in enumerate(srows.tolist()):
                value = r.mark_value(i)
                shown = encode_float(value) if isinstance(value, float) else value
                row = span_rows.get(s_spans[k])
                self.summary_marks.append({
                    "name": s_names[k], "value": shown, "span": self._label(row) if row is not None else "(session)",
                    "span_id": s_spans[k], "t": int(ts_all[i])})
        self.summary_marks.sort(key=lambda m: (m["name"], m["t"]))
        # point marks: one series per name, by time
        values = r.mark_number
        if r.mark_values is None:
            numeric = np.ones(n, dtype=bool)
        else:  # a NaN that was read as a number ("NaN", float("nan")) is a point; a string is not
            numeric = np.array([_num(v) is not None for v in r.mark_values], dtype=bool)
        rows = np.flatnonzero(numeric & ~summary)
        self.mark_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if rows.size:
            enc = pc.dictionary_encode(names_all.take(pa.array(rows)))
            if hasattr(enc, "combine_chunks"):
                enc = enc.combine_chunks()
            codes = enc.indices.to_numpy(zero_copy_only=False)
            ts, vals = ts_all[rows], values[rows]
            order = np.lexsort((np.arange(rows.size), ts, codes))
            codes, ts, vals = codes[order], ts[order], vals[order]
            cuts = np.flatnonzero(np.diff(codes)) + 1
            for a, b in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [codes.size]]).tolist()):
                self.mark_series[enc.dictionary[int(codes[a])].as_py()] = (ts[a:b], vals[a:b])
        all_ts = [t for t, _ in self.mark_series.values()]
        self.mark_tick_names = list(self.mark_series)
        if all_ts:
            ts_cat = np.concatenate(all_ts)
            order = np.argsort(ts_cat, kind="stable")
            self.mark_ts = ts_cat[order]
            self.mark_tick_name = np.concatenate([np.full(t.size, i, dtype=np.int32)
                                                  for i, t in enumerate(all_ts)])[order]
            self.mark_tick_value = np.concatenate([v for _, v in self.mark_series.values()])[order]
        else:
            self.mark_ts = np.zeros(0, dtype=np.int64)
            self.mark_tick_name = np.zeros(0, dtype=np.int32)
            self.mark_tick_value = np.zeros(0)

    def _mark_ticks(self, lo: int, hi: int, px: int) -> list[dict[str, Any]]:
        all_ts = self.mark_ts
        a, b = np.searchsorted(all_ts, [lo, hi + 1]).tolist()
        ts = all_ts[a:b]
        if ts.size > MAX_POINTS:  # one tick per pixel column is all that can be seen
            col = ((ts - lo) * px // max(1, hi - lo))
            keep = np.flatnonzero(np.concatenate([[True], np.diff(col) != 0]))
            del col
        else:
            keep = np.arange(ts.size)
        names, values = self.mark_tick_name[a + keep], self.mark_tick_value[a + keep]
        return [{"t": t, "name": self.mark_tick_names[c], "value": _json_float(v)}
                for t, c, v in zip(ts[keep].tolist(), names.tolist(), values.tolist())]

    def marks(self, x: str) -> dict[str, Any]:
        """Point-mark series (``x``: ``step`` = n-th value of that name, ``time`` = ns since start)."""
        series = {}
        for name, (ts, vals) in self.mark_series.items():
            xs = np.arange(ts.size) if x == "step" else ts
            keep = _decimate(vals, MAX_POINTS)
            series[name] = {"x": xs[keep].tolist(), "y": [_json_float(v) for v in vals[keep].tolist()],
                            "count": int(ts.size)}
        return {"session": self.info.id, "series": series, "summary": self.summary_marks}

    # ---------------------------------------------------------------- steps

    #: Held while the step table is built on first use (it is not built with the session's other views).
    _steps_lock = threading.Lock()

    def _ensure_steps(self) -> None:
        """Build the step table on the first request for it: the first view, the timeline, does
        not need it (on a 250,000-span session it takes as long as the timeline's answer)."""
        if "step_rows" in self.__dict__:
            return
        with self._steps_lock:
            if "step_rows" not in self.__dict__:  # built by another request meanwhile
                self._build_steps()

    def _build_steps(self) -> None:
        """``step_epoch``, ``phase_ns``, then ``step_rows`` (last: set, the table is whole)."""
        step_code = next((self.names.index(n) for n in STEP_NAMES if n in self.names), None)
        if step_code is None:
            self.step_epoch = np.zeros(0, dtype=np.int64)
            self.phase_ns = np.zeros((len(PHASES), 0), dtype=np.int64)
            self.step_rows = np.zeros(0, dtype=np.int64)
            return
        steps = np.flatnonzero(self.name == step_code)
        step_epoch = self._epochs()[steps]
        # per span: its step number (-1: not a step) and phase (-1: none), as small as they fit
        row_of: NDArray[np.signedinteger[Any]] = np.full(self.name.size, -1,
                                                         dtype=np.int32 if steps.size < 2**31 - 1 else np.int64)
        row_of[steps] = np.arange(steps.size)
        phase_of_code = np.full(len(self.names), -1, dtype=np.int8)
        for k, p in enumerate(PHASES):
            if p in self.names:
                phase_of_code[self.names.index(p)] = k
        phase = phase_of_code[self.name]
        phase_ns = np.zeros((len(PHASES), steps.size), dtype=np.int64)
        for a in range(0, phase.size, _STEP_CHUNK):  # a slice of the spans at a time: bounded temporaries
            rows = a + np.flatnonzero(phase[a:a + _STEP_CHUNK] >= 0)
            # the nearest step above each phase span, unless another phase span comes first (no double count)
            up = self.parent[rows]
            for _ in range(MAX_DEPTH):
                climb = np.flatnonzero(up >= 0)
                climb = climb[(row_of[up[climb]] < 0) & (phase[up[climb]] < 0)]
                if not climb.size:
                    break
                up[climb] = self.parent[up[climb]]
            hit = up >= 0
            hit[hit] = row_of[up[hit]] >= 0
            r = rows[hit]
            np.add.at(phase_ns, (phase[r], row_of[up[hit]]), self.end[r] - self.start[r])
        self.step_epoch = step_epoch
        self.phase_ns = phase_ns
        self.step_rows = steps

    def _epochs(self) -> np.ndarray:
        """The index of each span's enclosing epoch (-1: none), by the spool's shared rule
        (:func:`cirron.spool.arrays.enclosing_steps`: parent links followed at most
        :data:`~cirron.spool.arrays.MAX_DEPTH` deep, so a parent_id cycle cannot hang)."""
        has_index = self._index_np != np.iinfo(np.int64).min
        is_epoch = has_index & (self.name == self.names.index(EPOCH_SPAN_NAME)) if EPOCH_SPAN_NAME in self.names \
            else np.zeros(self.name.size, dtype=bool)
        index = np.where(has_index, self._index_np, -1)
        epoch, _batch = enclosing_steps(self.parent, is_epoch, np.zeros(self.name.size, dtype=bool), index)
        return epoch

    def steps(self, slowest: int = 20) -> dict[str, Any]:
        self._ensure_steps()
        rows = self.step_rows
        wall = self.end[rows] - self.start[rows]
        other = np.maximum(wall - self.phase_ns.sum(axis=0), 0)
        n = rows.size
        # long runs: one bar per group of consecutive steps (their mean), at most MAX_POINTS bars
        group = max(1, math.ceil(n / MAX_POINTS)) if n else 1
        edges = np.arange(0, n, group)

        def per_bar(a: np.ndarray) -> list[float]:
            if n == 0:
                return []
            sums = np.add.reduceat(a, edges, dtype=np.int64)
            counts = np.diff(np.concatenate([edges, [n]]))
            return (sums / counts).tolist()

        bars = {p: per_bar(self.phase_ns[k]) for k, p in enumerate(PHASES)}
        bars["other"] = per_bar(other)
        labels = [self._step_label(e) for e in edges.tolist()] if n else []
        worst = np.argsort(-wall, kind="stable")[:slowest] if n else np.zeros(0, dtype=np.int64)
        slow = []
        for k in worst.tolist():
            i = int(rows[k])
            slow.append({"step": k, "label": self._step_label(k), "start": int(self.start[i]),
                         "end": int(self.end[i]), "wall_ns": int(wall[k]),
                         **{p: int(self.phase_ns[j, k]) for j, p in enumerate(PHASES)}, "other": int(other[k])})
        totals = {p: int(self.phase_ns[k].sum()) for k, p in enumerate(PHASES)}
        totals["other"] = int(other.sum())
        return {"session": self.info.id, "step_name": self.names[self.name[rows[0]]] if n else None,
                "steps": int(n), "group": group, "x": edges.tolist(), "labels": labels, "bars": bars,
                "slowest": slow, "totals": totals,
                "p50_ns": float(np.median(wall)) if n else None}

    def _step_label(self, k: int) -> str:
        """The label of the ``k``-th step, with its epoch's when it has one."""
        ep = int(self.step_epoch[k])
        core = self._label(int(self.step_rows[k]))
        return f"{span_label(EPOCH_SPAN_NAME, ep)} {core}" if ep >= 0 else core

    # ---------------------------------------------------------------- requests

    def _build_requests(self) -> None:
        code = self.names.index(REQUEST_SPAN) if REQUEST_SPAN in self.names else None
        self.request_rows = np.flatnonzero(self.name == code) if code is not None else np.zeros(0, dtype=np.int64)
        wanted = {"ttft_ns", "tokens_per_s", "tokens"}
        #: The request numbers of each request span row (from the summary marks on it).
        self.request_marks: dict[int, dict[str, float]] = {}
        if not self.request_rows.size:
            return
        picked = [m for m in self.summary_marks if m["name"] in wanted]
        rows = self._rows_of(m["span_id"] for m in picked)
        is_request = np.zeros(self.name.size, dtype=bool)
        is_request[self.request_rows] = True
        for m in picked:
            row = rows.get(m["span_id"])
            if row is not None and is_request[row] and (v := _num(m["value"])) is not None:
                self.request_marks.setdefault(row, {})[m["name"]] = v

    def requests(self, slowest: int = 20) -> dict[str, Any]:
        rows = self.request_rows
        n = rows.size
        lat = (self.end[rows] - self.start[rows]).astype(np.float64)
        starts = self.start[rows]
        windows = []
        if n:
            n_win = int(min(60, max(1, n // 10)))
            edges = np.linspace(int(starts.min()), int(starts.max()) + 1, n_win + 1)
            which = np.clip(np.searchsorted(edges, starts, side="right") - 1, 0, n_win - 1)
            for w in range(n_win):
                vals = lat[which == w]
                if vals.size:
                    p50, p95, p99 = np.percentile(vals, [50, 95, 99]).tolist()
                    windows.append({"t": float((edges[w] + edges[w + 1]) / 2), "count": int(vals.size),
                                    "p50": p50, "p95": p95, "p99": p99})
        ttft, tps = [], []
        for row in rows.tolist():
            extra = self.request_marks.get(row, {})
            if "ttft_ns" in extra:
                ttft.append(extra["ttft_ns"])
            if "tokens_per_s" in extra:
                tps.append(extra["tokens_per_s"])
        slow = []
        for k in (np.argsort(-lat, kind="stable")[:slowest].tolist() if n else []):
            i = int(rows[k])
            decoded = self._attrs_of(i)
            attrs = decoded if isinstance(decoded, dict) else {}
            extra = self.request_marks.get(i, {})
            slow.append({"request_id": attrs.get("request_id"), "start": int(self.start[i]), "end": int(self.end[i]),
                         "latency_ns": int(lat[k]), "ttft_ns": extra.get("ttft_ns"), "tokens": extra.get("tokens"),
                         "tokens_per_s": extra.get("tokens_per_s"), "error": attrs.get("error"),
                         "stream_end": attrs.get("stream_end")})
        overall = dict(zip(("p50", "p95", "p99"), np.percentile(lat, [50, 95, 99]).tolist())) if n else {}
        return {"session": self.info.id, "requests": int(n), "windows": windows, "overall": overall,
                "ttft_ns": [_json_float(v) for v in ttft], "tokens_per_s": [_json_float(v) for v in tps],
                "slowest": slow}

    # ---------------------------------------------------------------- snapshots

    def _build_snapshots(self, records: SessionRecords) -> None:
        by_tensor: dict[tuple[str, str], list[Any]] = {}
        self._snapshot_rows = self._rows_of(sn.get("span_id") for sn in records.snapshots)
        for sn in records.snapshots:
            tensor = sn.get("tensor")
            if not isinstance(tensor, str) or not isinstance(sn.get("stats"), dict):
                continue
            role = r if isinstance(r := sn.get("role"), str) else ""
            by_tensor.setdefault((tensor, role), []).append(sn)
        self.snapshot_groups = by_tensor

    def snapshots(self, bins: int = 48) -> dict[str, Any]:
        out = []
        for (tensor, role), recs in sorted(self.snapshot_groups.items()):
            recs = sorted(recs, key=lambda r: r.get("ts_ns") if type(r.get("ts_ns")) is int else 0)
            xs, labels = [], []
            stats: dict[str, list[Any]] = {"mean": [], "std": [], "norm": [], "min": [], "max": []}
            hists = []
            for k, r in enumerate(recs):
                i = self._snapshot_rows.get(r.get("span_id"))
                idx = self._index_of(i) if i is not None else None
                xs.append(idx if type(idx) is int else k)
                labels.append(self._label(i) if i is not None else f"#{k}")
                st = r["stats"]
                for key, column in stats.items():
                    v = _num(st.get(key))
                    column.append(_json_float(v) if v is not None else None)
                h = st.get("histogram")
                hists.append(h if isinstance(h, dict) else None)
            grid, z = _rebin_histograms(hists, bins)
            out.append({"tensor": tensor, "role": role, "shape": recs[-1].get("shape"), "x": xs, "labels": labels,
                        **stats, "hist_edges": grid, "hist_z": z})
        return {"session": self.info.id, "tensors": out}


def _decimate(values: np.ndarray, limit: int) -> np.ndarray:
    """Indices keeping at most ~``limit`` points: the first, min and max of each bucket, so the
    shape of a long curve (spikes included) survives."""
    n = values.size
    if n <= limit:
        return np.arange(n)
    buckets = limit // 3
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = [edges[:-1]]
    safe = np.where(np.isnan(values), np.inf, values)
    for b in range(buckets):
        a, z = int(edges[b]), int(edges[b + 1])
        if z > a:
            seg = safe[a:z]
            keep.append(np.array([a + int(seg.argmin()), a + int(np.where(np.isinf(seg), -np.inf, seg).argmax())]))
    return np.unique(np.concatenate(keep))


def _rebin_histograms(hists: list[dict[str, Any] | None], bins: int) -> tuple[list[float], list[list[float]]]:
    """Put each snapshot's histogram (its own min..max) on one common grid: ``z[bin][snapshot]``,
    each column normalised to fractions so epochs of different sizes compare."""
    ranges = []
    for h in hists:
        if h is None:
            continue
        lo, hi = _num(h.get("min")), _num(h.get("max"))
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            ranges.append((lo, hi))
    if not ranges:
        return [], []
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    if hi <= lo:
        hi = lo + 1e-12
    edges = np.linspace(lo, hi, bins + 1)
    z = np.zeros((bins, len(hists)))
    for col, h in enumerate(hists):
        if h is None:
            continue
        counts = np.asarray([c if type(c) in (int, float) else 0 for c in (h.get("counts") or [])], dtype=np.float64)
        hlo, hhi = _num(h.get("min")), _num(h.get("max"))
        if counts.size == 0 or hlo is None or hhi is None or not (math.isfinite(hlo) and math.isfinite(hhi)):
            continue
        centres = hlo + (np.arange(counts.size) + 0.5) * (hhi - hlo) / counts.size
        target = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, bins - 1)
        np.add.at(z[:, col], target, counts)
        total = z[:, col].sum()
        if total > 0:
            z[:, col] /= total
    return ((edges[:-1] + edges[1:]) / 2).tolist(), z.tolist()


def _views_of(info: SessionInfo, catalog: Catalog) -> SessionData:
    """``info``'s views: read whole (:func:`_read_records`) when the columnar reader takes it, else
    piece by piece when its files hold only its records (:mod:`cirron.ui._bigsession`); a session
    that neither reads (records the columns cannot carry) is rebuilt whole up to :data:`MAX_VIEW_BYTES`."""
    if _read_in_pieces(info):
        from cirron.ui._bigsession import read_big_session

        big = read_big_session(info)
        if big is not None:
            return big
        if info.summary.bytes > MAX_VIEW_BYTES:
            raise SessionTooBig(refusal_text(info))
    return SessionData(info, _read_records(info, catalog))


def _read_in_pieces(info: SessionInfo) -> bool:
    """Whether ``info`` is too big for the columnar reader and can be read piece by piece."""
    from cirron.spool.columnar import can_read

    return info.streamable and not can_read(info.summary)


def _read_records(info: SessionInfo, catalog: Catalog) -> SessionRecords:
    """A session's records: from the columnar reader when it can read it, else rebuilt record by record."""
    from cirron.spool.columnar import can_read, read_columns

    cols = read_columns(info.summary) if can_read(info.summary) else None
    if cols is None:
        return records_of_session(catalog.load(info.summary))
    records = records_of_columns(cols)
    del cols  # with it, the columns the views do not use
    _give_back_memory()
    return records


def _give_back_memory() -> None:
    """Return the memory a session's read freed to the system, so that building its views reuses
    less of the process's peak (the C allocator's pool trims the heap; see cirron.ui.server)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ============================================================================ spools


@dataclass
class _SpoolState:
    dir: Path
    fingerprint: tuple[Any, ...] = ()
    catalog: Catalog | None = None
    sessions: list[SessionInfo] = field(default_factory=list)
    #: What the reader skipped in this spool (a corrupt or truncated batch file...), each once.
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


class SpoolData:
    """The sessions of one or more spool directories, and cached views of those being looked at.

    Thread-safe (the web server answers from a thread pool); never writes to a spool.
    """

    def __init__(self, spool_dirs: Iterable[str | Path], cached: int = CACHED_SESSIONS) -> None:
        self.spools: list[_SpoolState] = [_SpoolState(Path(d)) for d in spool_dirs]
        self._lock = threading.RLock()
        #: Held while a session's views are built: one at a time (two would double the peak
        #: memory), and without holding ``_lock``, so the other pages answer meanwhile.
        self._build_lock = threading.Lock()
        self._views: OrderedDict[str, tuple[tuple[Any, ...], SessionData]] = OrderedDict()
        self._cached = cached

    # ---------------------------------------------------------------- sessions

    def sessions(self) -> list[SessionInfo]:
        """Every session of every spool, newest first (re-read when a spool's files change)."""
        with self._lock:
            out: list[SessionInfo] = []
            for sp in self.spools:
                files = list_batch_files(sp.dir, lambda _m: None)
                fp = tuple((f.path.name, f.size) for f in files)
                if sp.catalog is None or fp != sp.fingerprint or any(s.status == "live" for s in sp.sessions):
                    sp.warnings = []
                    catalog = Catalog([sp.dir], sp.warn)
                    sp.sessions = [SessionInfo(s, catalog.streamable(s)) for s in catalog.sessions]
                    sp.catalog = catalog  # last: whoever sees the catalog sees its sessions
                    sp.fingerprint = fp
                out.extend(sp.sessions)
            out.sort(key=lambda s: (s.started_ns or 0, s.id), reverse=True)
            return out

    def warnings(self) -> list[str]:
        """What reading the spools skipped so far (each message once)."""
        with self._lock:
            return [w for sp in self.spools for w in sp.warnings]

    def info(self, session_id: str) -> SessionInfo:
        for s in self.sessions():
            if s.id == session_id:
                return s
        raise UnknownSession(session_id)

    def refusal(self, session_id: str) -> str | None:
        """Why ``session_id`` cannot be viewed (see :func:`too_big`); ``None`` when it can or is unknown."""
        try:
            return too_big(self.info(session_id))
        except UnknownSession:
            return None

    # ---------------------------------------------------------------- one session

    def session(self, session_id: str) -> SessionData:
        """The views of one session, built on first use and rebuilt when its files change."""
        info = self.info(session_id)
        refused = too_big(info)
        if refused is not None:
            raise SessionTooBig(refused)
        key = (info.summary.files, info.status)
        hit = self._cached_view(session_id, key)
        if hit is not None:
            return hit
        with self._build_lock:
            hit = self._cached_view(session_id, key)  # built by another request meanwhile
            if hit is not None:
                return hit
            with self._lock:
                stale = self._views.pop(session_id, None)
                if stale is not None:
                    stale[1].close()
                alone = _read_in_pieces(info) or any(v.cached_alone for _k, v in self._views.values())
                while self._views and (alone or len(self._views) >= self._cached):  # free before building
                    self._views.popitem(last=False)[1][1].close()
                catalog = next(sp.catalog for sp in self.spools if sp.dir == info.summary.spool and sp.catalog)
            assert catalog is not None  # sessions() opened it
            data = _views_of(info, catalog)
            _give_back_memory()
            with self._lock:
                self._views[session_id] = (key, data)
            return data

    def close(self) -> None:
        """Drop the cached views and their temporary files (the server stops)."""
        with self._lock:
            while self._views:
                self._views.popitem()[1][1].close()

    def _cached_view(self, session_id: str, key: tuple[Any, ...]) -> SessionData | None:
        with self._lock:
            hit = self._views.get(session_id)
            if hit is None or hit[0] != key:
                return None
            self._views.move_to_end(session_id)
            return hit[1]

    def prepare(self) -> None:
        """Get ready for the first page in the background: list the sessions and load the
        columnar reader (pyarrow takes a few hundred ms to import, better spent before the user
        opens a session than after)."""
        def run() -> None:
            try:
                import cirron.spool.columnar  # noqa: F401
                self.sessions()
            except Exception:  # noqa: BLE001 - the pages report what is wrong when they ask
                pass

        threading.Thread(target=run, name="cirron-ui-prepare", daemon=True).start()

    def warm(self, session_id: str) -> None:
        """Start building ``session_id``'s views in the background (a page of it is being
        loaded: its data request will find them ready, or wait for this build); nothing for a
        session too big to view."""
        if self.refusal(session_id) is not None:
            return

        def build() -> None:
            try:
                self.session(session_id)
            except Exception:  # noqa: BLE001 - the page's own data request reports what is wrong
                pass

        threading.Thread(target=build, name=f"cirron-ui-warm-{session_id[:12]}", daemon=True).start()

    # ---------------------------------------------------------------- across sessions

    def marks(self, session_ids: Sequence[str], x: str = "step") -> dict[str, Any]:
        return {"x": x, "sessions": [self.session(sid).marks(x) for sid in session_ids]}

    def ranks(self, run_id: str) -> dict[str, Any]:
        """The rank comparison of ``cirron traces ranks`` (:func:`cirron.spool.ranks.compare_ranks`)
        for one run, whose ranks may sit in different spools."""
        from cirron.spool.ranks import compare_ranks

        self.sessions()  # the spools' catalogs, fresh
        catalog = Catalog([sp.dir for sp in self.spools], lambda _m: None)
        run = next((r for r in catalog.runs() if r.id == run_id), None)
        if run is None:
            raise UnknownSession(run_id)
        report = compare_ranks(catalog, run)
        rows = []
        for r in report.ranks:
            st = report.step and r.steps.get(report.step)
            rows.append({"rank": r.rank, "session": r.session.id, "steps": st.count if st else 0,
                         "p50_ns": r.step_p50, "p95_ns": st.wall_p95 if st else None,
                         "max_ns": st.wall_max if st else None, "data_load_share": r.data_load_share,
                         "vs_median": None if r.vs_median is None else 1 + r.vs_median, "straggler": r.straggler})
        return {"run_id": run_id, "step": report.step, "threshold": report.threshold,
                "median_p50_ns": report.median_step_ns, "ranks": rows}
