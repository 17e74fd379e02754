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

from cirron._format import label_of, span_label
from cirron._schema import decode_float, encode_float
from cirron.spool import Session, children_index, list_batch_files, walk_tree
from cirron.spool.catalog import Catalog
from cirron.spool.catalog import SessionInfo as CatalogInfo

#: Names of the phases a training step is split into (stacked bars of the step breakdown).
PHASES = ("data_load", "forward", "backward", "optimizer_step")
#: Span names that mark one training step, by preference (``ci.batches`` writes ``batch``).
STEP_NAMES = ("batch", "step")
#: Span name ``@ci.inference`` gives each request.
REQUEST_SPAN = "request"
#: At most this many single spans in one timeline answer; the rest are aggregated.
MAX_WINDOW_SPANS = 4000
#: At most this many points per mark series, per step-breakdown chart, per tick row.
MAX_POINTS = 2000
#: How many sessions' views stay in memory.
CACHED_SESSIONS = 3


class UnknownSession(LookupError):
    """No session with that id in the spools being viewed."""


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
            "host": s.host, "pid": s.resource.get("pid"),
        }


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
    recs: list[Any]
    index_of: dict[Any, int]
    parent: NDArray[np.int64]
    duration_ns: int
    # Marks: every tick in time order, its series (index into ``mark_tick_names``) and value.
    mark_ts: NDArray[np.int64]
    mark_tick_names: list[str]
    mark_tick_name: NDArray[np.int32]
    mark_tick_value: NDArray[np.float64]
    # Steps: the span row of each step, and the time of each phase within it.
    step_rows: NDArray[np.int64]
    phase_ns: NDArray[np.int64]
    request_rows: NDArray[np.int64]

    def __init__(self, info: SessionInfo, session: Session) -> None:
        self.info = info
        self._build_spans(session)
        self._build_marks(session)
        self._build_steps()
        self._build_requests()
        self._build_snapshots(session)

    # ---------------------------------------------------------------- spans / timeline

    def _build_spans(self, session: Session) -> None:
        root_ids = [session.root["id"]] if session.root is not None else []
        top, children = children_index(session.spans, root_ids)
        recs: list[Any] = []
        depths: list[int] = []
        for span, depth in walk_tree(top, children):
            recs.append(span)
            depths.append(depth)
        starts = np.array([s.get("start_ns") if type(s.get("start_ns")) is int else -1 for s in recs], dtype=np.int64)
        ends = np.array([s.get("end_ns") if type(s.get("end_ns")) is int else -1 for s in recs], dtype=np.int64)
        known = starts[starts >= 0]
        t0 = int(known.min()) if known.size else 0
        if session.started_ns is not None:
            t0 = min(t0, session.started_ns) if known.size else session.started_ns
        last = int(max(ends.max(initial=-1), starts.max(initial=-1)))
        for m in session.marks:
            ts = m.get("ts_ns")
            if type(ts) is int and ts > last:
                last = ts
        self.t0_ns = t0
        self.open = ends < 0
        starts[starts < 0] = t0
        ends[self.open] = max(last, t0)
        ends = np.maximum(ends, starts)
        order = np.argsort(starts, kind="stable")
        self.start = starts[order] - t0
        self.end = ends[order] - t0
        self.open = self.open[order]
        self.depth = np.array(depths, dtype=np.int32)[order]
        names: dict[str, int] = {}
        codes = [names.setdefault(s.get("name") if isinstance(s.get("name"), str) else str(s.get("name")), len(names))
                 for s in recs]
        self.names = list(names)
        self.name = np.array(codes, dtype=np.int32)[order]
        self.recs = [recs[i] for i in order.tolist()]
        self.index_of = {s["id"]: i for i, s in enumerate(self.recs)}
        self.parent = np.array([self.index_of.get(s.get("parent_id"), -1) for s in self.recs], dtype=np.int64)
        self.duration_ns = int(self.end.max(initial=0))

    def _span_json(self, i: int) -> dict[str, Any]:
        s = self.recs[i]
        attrs = s.get("attrs")
        return {
            "i": i, "parent": int(self.parent[i]), "label": label_of(s), "name": self.names[self.name[i]],
            "depth": int(self.depth[i]),
            "start": int(self.start[i]), "end": int(self.end[i]), "open": bool(self.open[i]),
            "cpu_ns": s.get("cpu_ns"), "gpu_ns": s.get("gpu_ns"), "memory_peak_bytes": s.get("memory_peak_bytes"),
            "attrs": _short_json(attrs) if isinstance(attrs, dict) and attrs else "",
        }

    def timeline(self, t0: int | None, t1: int | None, px: int) -> dict[str, Any]:
        """The spans visible in ``[t0, t1)`` (ns since the session start) at ``px`` pixels wide.

        Spans of at least a pixel come one by one (the :data:`MAX_WINDOW_SPANS` longest when
        more); smaller ones are merged per depth into blocks of a few pixels each, carrying
        their count and summed wall time.
        """
        lo = 0 if t0 is None else max(0, int(t0))
        hi = self.duration_ns if t1 is None else int(t1)
        if hi <= lo:
            hi = lo + 1
        px = max(50, min(int(px), 10_000))
        ns_per_px = (hi - lo) / px
        vis = np.nonzero((self.end >= lo) & (self.start <= hi))[0]
        dur = self.end[vis] - self.start[vis]
        big_mask = dur >= ns_per_px
        big = vis[big_mask]
        if big.size > MAX_WINDOW_SPANS:
            keep = np.argsort(-(self.end[big] - self.start[big]), kind="stable")[:MAX_WINDOW_SPANS]
            keep_mask = np.zeros(big.size, dtype=bool)
            keep_mask[keep] = True
            small = np.concatenate([vis[~big_mask], big[~keep_mask]])
            big = np.sort(big[keep_mask])
        else:
            small = vis[~big_mask]
        spans = [self._span_json(int(i)) for i in big]
        blocks = self._aggregate(small, lo, hi, px)
        marks = self._mark_ticks(lo, hi, px)
        return {"t0": lo, "t1": hi, "px": px, "session_start_ns": self.t0_ns, "duration_ns": self.duration_ns,
                "max_depth": int(self.depth.max(initial=0)), "names": self.names, "spans": spans,
                "blocks": blocks, "marks": marks, "visible": int(vis.size)}

    def _aggregate(self, idx: np.ndarray, lo: int, hi: int, px: int) -> list[dict[str, Any]]:
        if idx.size == 0:
            return []
        n_buckets = max(1, px // 4)
        width = (hi - lo) / n_buckets
        bucket = np.clip(((self.start[idx] - lo) / width).astype(np.int64), 0, n_buckets - 1)
        key = self.depth[idx].astype(np.int64) * n_buckets + bucket
        order = np.argsort(key, kind="stable")
        key, idx = key[order], idx[order]
        cut = np.flatnonzero(np.diff(key)) + 1
        first = np.concatenate([[0], cut])
        count = np.diff(np.concatenate([first, [key.size]]))
        x0 = np.minimum.reduceat(self.start[idx], first)
        x1 = np.maximum.reduceat(self.end[idx], first)
        total = np.add.reduceat(self.end[idx] - self.start[idx], first)
        # the most common name in each block colours it
        top_name = self.name[idx[first]]
        return [{"depth": int(key[f] // n_buckets), "start": int(a), "end": int(b), "count": int(c),
                 "total_ns": int(t), "name": self.names[int(nm)]}
                for f, a, b, c, t, nm in zip(first.tolist(), x0, x1, count, total, top_name)]

    # ---------------------------------------------------------------- marks

    def _build_marks(self, session: Session) -> None:
        points: dict[str, list[tuple[int, float]]] = {}
        self.summary_marks: list[dict[str, Any]] = []
        span_labels = {s["id"]: label_of(s) for s in self.recs}
        for m in session.marks:
            name = m.get("name")
            name = name if isinstance(name, str) else str(name)
            ts = m.get("ts_ns")
            ts = ts - self.t0_ns if type(ts) is int else 0
            value = m.get("value")
            if m.get("kind") == "summary":
                shown = encode_float(value) if isinstance(value, float) else value
                self.summary_marks.append({
                    "name": name, "value": shown, "span": span_labels.get(m.get("span_id"), "(session)"),
                    "span_id": m.get("span_id"), "t": ts})
                continue
            v = _num(value)
            if v is not None:
                points.setdefault(name, []).append((ts, v))
        self.mark_series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, pts in points.items():
            pts.sort(key=lambda p: p[0])
            self.mark_series[name] = (np.array([p[0] for p in pts], dtype=np.int64),
                                      np.array([p[1] for p in pts], dtype=np.float64))
        self.summary_marks.sort(key=lambda r: (r["name"], r["t"]))
        all_ts = [ts for ts, _ in self.mark_series.values()]
        self.mark_ts = np.sort(np.concatenate(all_ts)) if all_ts else np.zeros(0, dtype=np.int64)
        tick_names = [np.full(ts.size, i, dtype=np.int32) for i, ts in enumerate(all_ts)]
        self.mark_tick_names = list(self.mark_series)
        if all_ts:
            ts_all = np.concatenate(all_ts)
            order = np.argsort(ts_all, kind="stable")
            self.mark_ts = ts_all[order]
            self.mark_tick_name = np.concatenate(tick_names)[order]
            self.mark_tick_value = np.concatenate([v for _, v in self.mark_series.values()])[order]
        else:
            self.mark_tick_name = np.zeros(0, dtype=np.int32)
            self.mark_tick_value = np.zeros(0)

    def _mark_ticks(self, lo: int, hi: int, px: int) -> list[dict[str, Any]]:
        a, b = np.searchsorted(self.mark_ts, [lo, hi + 1])
        sel = np.arange(a, b)
        if sel.size > MAX_POINTS:  # one tick per pixel column is all that can be seen
            col = ((self.mark_ts[sel] - lo) * px // max(1, hi - lo))
            sel = sel[np.concatenate([[True], np.diff(col) != 0])]
        return [{"t": int(self.mark_ts[i]), "name": self.mark_tick_names[int(self.mark_tick_name[i])],
                 "value": _json_float(float(self.mark_tick_value[i]))} for i in sel]

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

    def _build_steps(self) -> None:
        step_code = next((self.names.index(n) for n in STEP_NAMES if n in self.names), None)
        self.step_rows = np.zeros(0, dtype=np.int64)
        self.phase_ns = np.zeros((len(PHASES), 0), dtype=np.int64)
        if step_code is None:
            return
        steps = np.flatnonzero(self.name == step_code)
        row_of = np.full(len(self.recs), -1, dtype=np.int64)
        row_of[steps] = np.arange(steps.size)
        phase_codes = {self.names.index(p): k for k, p in enumerate(PHASES) if p in self.names}
        phase_ns = np.zeros((len(PHASES), steps.size), dtype=np.int64)
        is_phase = np.isin(self.name, list(phase_codes))
        for i in np.flatnonzero(is_phase).tolist():
            # the nearest step above it, unless another phase span comes first (no double count)
            p = int(self.parent[i])
            while p >= 0 and row_of[p] < 0 and self.name[p] not in phase_codes:
                p = int(self.parent[p])
            if p >= 0 and row_of[p] >= 0:
                phase_ns[phase_codes[int(self.name[i])], row_of[p]] += self.end[i] - self.start[i]
        self.step_rows = steps
        self.phase_ns = phase_ns

    def _epoch_of(self, i: int) -> int | None:
        p = int(self.parent[i])
        while p >= 0:
            if self.names[self.name[p]] == "epoch":
                idx = self.recs[p].get("index")
                return idx if type(idx) is int else None
            p = int(self.parent[p])
        return None

    def steps(self, slowest: int = 20) -> dict[str, Any]:
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
            sums = np.add.reduceat(a, edges)
            counts = np.diff(np.concatenate([edges, [n]]))
            return (sums / counts).tolist()

        bars = {p: per_bar(self.phase_ns[k]) for k, p in enumerate(PHASES)}
        bars["other"] = per_bar(other)
        labels = [self._step_label(int(rows[e])) for e in edges.tolist()] if n else []
        worst = np.argsort(-wall, kind="stable")[:slowest] if n else np.zeros(0, dtype=np.int64)
        slow = []
        for k in worst.tolist():
            i = int(rows[k])
            slow.append({"step": k, "label": self._step_label(i), "start": int(self.start[i]),
                         "end": int(self.end[i]), "wall_ns": int(wall[k]),
                         **{p: int(self.phase_ns[j, k]) for j, p in enumerate(PHASES)}, "other": int(other[k])})
        totals = {p: int(self.phase_ns[k].sum()) for k, p in enumerate(PHASES)}
        totals["other"] = int(other.sum())
        return {"session": self.info.id, "step_name": self.names[self.name[rows[0]]] if n else None,
                "steps": int(n), "group": group, "x": edges.tolist(), "labels": labels, "bars": bars,
                "slowest": slow, "totals": totals,
                "p50_ns": float(np.median(wall)) if n else None}

    def _step_label(self, i: int) -> str:
        ep = self._epoch_of(i)
        core = label_of(self.recs[i])
        return f"{span_label('epoch', ep)} {core}" if ep is not None else core

    # ---------------------------------------------------------------- requests

    def _build_requests(self) -> None:
        code = self.names.index(REQUEST_SPAN) if REQUEST_SPAN in self.names else None
        self.request_rows = np.flatnonzero(self.name == code) if code is not None else np.zeros(0, dtype=np.int64)
        wanted = {"ttft_ns", "tokens_per_s", "tokens"}
        self.request_marks: dict[str, dict[str, float]] = {}
        ids = {self.recs[i]["id"] for i in self.request_rows.tolist()}
        for m in self.summary_marks:
            if m["name"] in wanted and m["span_id"] in ids:
                v = _num(m["value"])
                if v is not None:
                    self.request_marks.setdefault(m["span_id"], {})[m["name"]] = v

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
        for i in rows.tolist():
            extra = self.request_marks.get(self.recs[i]["id"], {})
            if "ttft_ns" in extra:
                ttft.append(extra["ttft_ns"])
            if "tokens_per_s" in extra:
                tps.append(extra["tokens_per_s"])
        slow = []
        for k in (np.argsort(-lat, kind="stable")[:slowest].tolist() if n else []):
            i = int(rows[k])
            rec = self.recs[i]
            attrs = rec.get("attrs") if isinstance(rec.get("attrs"), dict) else {}
            extra = self.request_marks.get(rec["id"], {})
            slow.append({"request_id": attrs.get("request_id"), "start": int(self.start[i]), "end": int(self.end[i]),
                         "latency_ns": int(lat[k]), "ttft_ns": extra.get("ttft_ns"), "tokens": extra.get("tokens"),
                         "tokens_per_s": extra.get("tokens_per_s"), "error": attrs.get("error"),
                         "stream_end": attrs.get("stream_end")})
        overall = dict(zip(("p50", "p95", "p99"), np.percentile(lat, [50, 95, 99]).tolist())) if n else {}
        return {"session": self.info.id, "requests": int(n), "windows": windows, "overall": overall,
                "ttft_ns": [_json_float(v) for v in ttft], "tokens_per_s": [_json_float(v) for v in tps],
                "slowest": slow}

    # ---------------------------------------------------------------- snapshots

    def _build_snapshots(self, session: Session) -> None:
        by_tensor: dict[tuple[str, str], list[Any]] = {}
        for sn in session.snapshots:
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
                i = self.index_of.get(r.get("span_id"))
                idx = self.recs[i].get("index") if i is not None else None
                xs.append(idx if type(idx) is int else k)
                labels.append(label_of(self.recs[i]) if i is not None else f"#{k}")
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
                    sp.catalog = Catalog([sp.dir], sp.warn)
                    sp.sessions = [SessionInfo(s) for s in sp.catalog.sessions]
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

    # ---------------------------------------------------------------- one session

    def session(self, session_id: str) -> SessionData:
        """The views of one session, built on first use and rebuilt when its files change."""
        info = self.info(session_id)
        key = (info.summary.files, info.status)
        with self._lock:
            hit = self._views.get(session_id)
            if hit is not None and hit[0] == key:
                self._views.move_to_end(session_id)
                return hit[1]
            self._views.pop(session_id, None)
            while len(self._views) >= self._cached:  # free before building the next one
                self._views.popitem(last=False)
            catalog = next(sp.catalog for sp in self.spools if sp.dir == info.summary.spool and sp.catalog)
            assert catalog is not None  # sessions() opened it
            data = SessionData(info, catalog.load(info.summary))
            self._views[session_id] = (key, data)
            return data

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
