"""Compare the ranks of one run: per rank and step name, counts and wall/CPU percentiles, the share
of data loading, and the stragglers.

The *step* that ranks are compared on is ``batch`` when the run has batch spans, else ``epoch``,
else the most frequent name among the spans right below the session roots. A rank is a straggler
when its median step wall time exceeds the median rank's by more than ``threshold`` (10% by
default). Each rank's data-loading share is the wall time of its ``data_load`` spans over that of
its steps (over its session when it has no steps), so a straggler whose share is well above the
others' is slow because of its input pipeline.

A session's batch files are read one at a time and each span leaves a few numbers in numpy
columns (about 38 bytes a span, :class:`_SpanTimes`), so p50/p95/max are exact and memory is
bounded by the biggest session, not the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cirron._schema import BATCH_SPAN_NAME, DATA_LOAD_SPAN_NAME, EPOCH_SPAN_NAME
from cirron.spool.catalog import Catalog, Run, SessionInfo

__all__ = ["STEP_NAMES", "RankReport", "RankStats", "StepStats", "compare_ranks"]

#: The span names cirron's training helpers record, compared whatever their depth.
STEP_NAMES = (EPOCH_SPAN_NAME, BATCH_SPAN_NAME, DATA_LOAD_SPAN_NAME, "forward", "backward", "optimizer_step")
DEFAULT_THRESHOLD = 0.10
#: A straggler whose data-loading share exceeds the median rank's by more than this waits on input.
DATA_LOAD_MARGIN = 0.05


@dataclass
class StepStats:
    """Count and wall/CPU percentiles (ns) of one span name on one rank."""

    count: int
    wall_p50: int | None
    wall_p95: int | None
    wall_max: int | None
    wall_total: int
    cpu_p50: int | None
    cpu_p95: int | None
    cpu_max: int | None


@dataclass
class RankStats:
    rank: int | None
    session: SessionInfo
    steps: dict[str, StepStats] = field(default_factory=dict)
    #: Wall time of ``data_load`` spans over that of the compared steps (or of the session).
    data_load_share: float | None = None
    #: Median wall time (ns) of the compared step.
    step_p50: int | None = None
    #: ``step_p50`` over the median rank's, minus 1 (0.25: 25% slower).
    vs_median: float | None = None
    straggler: bool = False


@dataclass
class RankReport:
    run: Run
    #: The span name ranks are compared on (None when no rank has any).
    step: str | None
    ranks: list[RankStats]
    median_step_ns: int | None
    threshold: float

    @property
    def stragglers(self) -> list[RankStats]:
        return [r for r in self.ranks if r.straggler]

    @property
    def median_data_load_share(self) -> float | None:
        """The median rank's data-loading share (the upper one of an even count); None when no rank has one."""
        shares = sorted(r.data_load_share for r in self.ranks if r.data_load_share is not None)
        return shares[len(shares) // 2] if shares else None

    def waits_on_input(self, r: RankStats) -> bool | None:
        """Whether rank ``r`` is slow because of its input pipeline: its data-loading share is more
        than :data:`DATA_LOAD_MARGIN` above the median rank's. None when either share is unknown."""
        median = self.median_data_load_share
        if r.data_load_share is None or median is None:
            return None
        return r.data_load_share > median + DATA_LOAD_MARGIN


def _pct(a: Any, q: float) -> int | None:
    import numpy as np

    return int(np.percentile(a, q, method="nearest")) if len(a) else None


def _stats(w: Any, c: Any) -> StepStats:
    """Stats of one name's wall and CPU times (int64 arrays)."""
    return StepStats(count=len(w), wall_p50=_pct(w, 50), wall_p95=_pct(w, 95),
                     wall_max=int(w.max()) if len(w) else None, wall_total=int(w.sum()),
                     cpu_p50=_pct(c, 50), cpu_p95=_pct(c, 95), cpu_max=int(c.max()) if len(c) else None)


def _collect(cat: Catalog, info: SessionInfo) -> tuple[dict[str, StepStats], dict[str, int]]:
    """Per span name (the step names and the names right below the root): stats; and the count
    of spans right below the root per name."""
    from cirron._memory import returned_memory
    from cirron.spool.reconstruct import paused_gc

    with returned_memory(), paused_gc():
        cols = _SpanTimes()
        if cat.streamable(info):
            cols.read_files(info)
        else:
            cols.add(cat.load(info, "summary").spans, info.id)
        return cols.stats()


#: "No time" in the int64 columns of :class:`_SpanTimes` (:func:`cirron.spool.outline.time_column`'s).
_NONE = -(1 << 63)


class _SpanTimes:
    """Per span record of one session: its 128-bit id key and whether it is closed (for the
    dedupe), a code of its name (-1: not a string), whether it hangs right below the root, its
    wall time and CPU time (:data:`_NONE`: unknown). About 38 bytes a span."""

    def __init__(self) -> None:
        import numpy as np

        from cirron.spool.arrays import Column

        self.names: dict[str, int] = {}
        self.cols = {k: Column(t) for k, t in (("hi", np.uint64), ("lo", np.uint64), ("closed", bool),
                                               ("code", np.int32), ("top", bool), ("wall", np.int64),
                                               ("cpu", np.int64))}

    def read_files(self, info: SessionInfo) -> None:
        """Add the spans of ``info``'s batch files, one file at a time (they hold its records only)."""
        from cirron.spool.reader import read_batch

        quiet = lambda _m: None  # noqa: E731 - the summary already reported every file
        for bf in info.files:
            batch = read_batch(bf, quiet, "keys")
            if batch is not None:
                self.add(batch["spans"], info.id)
            del batch

    def add(self, spans: list[Any], root_id: str) -> None:
        import numpy as np

        from cirron.spool.arrays import id_keys
        from cirron.spool.outline import time_column

        n = len(spans)
        c = self.cols
        field = _fields(spans)
        hi, lo = id_keys(field("id"))
        c["hi"].append(hi)
        c["lo"].append(lo)
        names = self.names
        codes = (names.setdefault(x, len(names)) if type(x) is str else -1 for x in field("name"))
        c["code"].append(np.fromiter(codes, dtype=np.int32, count=n))
        c["top"].append(np.fromiter((p == root_id for p in field("parent_id")), dtype=bool, count=n))
        ends = field("end_ns")
        c["closed"].append(np.fromiter((e is not None for e in ends), dtype=bool, count=n))
        start, end = time_column(field("start_ns")), time_column(ends)
        c["wall"].append(np.where((start != _NONE) & (end != _NONE), end - start, _NONE))
        c["cpu"].append(time_column(field("cpu_ns")))

    def stats(self) -> tuple[dict[str, StepStats], dict[str, int]]:
        import numpy as np

        from cirron.spool.arrays import last_of_each

        c = self.cols
        win = last_of_each(c["hi"].take(), c["lo"].take(), c["closed"].take())
        code = c["code"].take()
        top = c["top"].take()
        wall = c["wall"].take()
        cpu = c["cpu"].take()
        by_code = {v: k for k, v in self.names.items()}
        top_counts = np.bincount(code[win & top & (code >= 0)], minlength=len(by_code))
        below = {by_code[i]: int(k) for i, k in enumerate(top_counts.tolist()) if k}
        steps = {self.names[n] for n in STEP_NAMES if n in self.names}
        wanted = np.zeros(len(by_code) + 1, dtype=bool)  # the last slot: code -1
        wanted[list(steps)] = True
        keep = win & (code >= 0) & (wanted[code] | top) & (wall != _NONE)
        del win, top
        rows = np.flatnonzero(keep)
        del keep
        code, wall, cpu = code[rows], wall[rows], cpu[rows]
        del rows
        order = np.argsort(code, kind="stable")
        code, wall, cpu = code[order], wall[order], cpu[order]
        del order
        out: dict[str, StepStats] = {}
        bounds = np.flatnonzero(np.diff(code)) + 1
        for lo_, hi_ in zip([0, *bounds.tolist()], [*bounds.tolist(), len(code)]):
            if lo_ == hi_:
                continue
            w, cp = wall[lo_:hi_], cpu[lo_:hi_]
            out[by_code[int(code[lo_])]] = _stats(w, cp[cp != _NONE])
        return out, below


def _fields(spans: list[Any]) -> Any:
    """``field(name)``: that field of every span (record structs or the dicts of a rebuilt session)."""
    if spans and all(isinstance(s, dict) for s in spans):
        return lambda name: [s.get(name) for s in spans]
    return lambda name: [getattr(s, name, None) for s in spans]


def _pick_step(per_rank: Iterable[tuple[dict[str, StepStats], dict[str, int]]]) -> str | None:
    names: dict[str, int] = {}
    top: dict[str, int] = {}
    for steps, below in per_rank:
        for n, st in steps.items():
            names[n] = names.get(n, 0) + st.count
        for n, c in below.items():
            top[n] = top.get(n, 0) + c
    for preferred in (BATCH_SPAN_NAME, EPOCH_SPAN_NAME):
        if names.get(preferred):
            return preferred
    return max(top, key=lambda n: (top[n], n)) if top else None


def compare_ranks(cat: Catalog, run: Run, threshold: float = DEFAULT_THRESHOLD) -> RankReport:
    """The :class:`RankReport` of ``run`` (see the module docstring)."""
    collected = [(info, *_collect(cat, info)) for info in run.sessions]
    step = _pick_step((steps, top) for _i, steps, top in collected)
    ranks: list[RankStats] = []
    for info, steps, _top in collected:
        rs = RankStats(rank=info.rank, session=info, steps=steps)
        st = steps.get(step) if step else None
        if st is not None:
            rs.step_p50 = st.wall_p50
        load = steps.get(DATA_LOAD_SPAN_NAME)
        if load is not None:
            base = st.wall_total if st is not None and step != DATA_LOAD_SPAN_NAME else None
            if base is None and info.ended_ns is not None and info.started_ns is not None:
                base = info.ended_ns - info.started_ns
            rs.data_load_share = load.wall_total / base if base else None
        ranks.append(rs)
    p50s = sorted(r.step_p50 for r in ranks if r.step_p50 is not None)
    mid = len(p50s) // 2
    median = (p50s[mid] if len(p50s) % 2 else (p50s[mid - 1] + p50s[mid]) // 2) if p50s else None
    for r in ranks:
        if r.step_p50 is not None and median:
            r.vs_median = r.step_p50 / median - 1
            r.straggler = len(p50s) > 1 and r.vs_median > threshold
    return RankReport(run, step, ranks, median, threshold)
