"""Test helpers for code instrumented with cirron: assert on what it records.

::

    import cirron as ci
    from cirron.testing import ManualClock, capture

    def test_training_step_records_its_loss() -> None:
        clock = ManualClock()
        with capture(clock=clock) as rec:
            with ci.scope("step", batch=32):
                clock.advance(5_000_000)
                ci.mark("loss", 0.25)
        (step,) = rec.spans
        assert (step.name, step.attrs, step.duration_ns) == ("step", {"batch": 32}, 5_000_000)
        assert rec.marks_of("step") == {"loss": [0.25]}

:func:`capture` gives the module API (``ci.scope``, ``ci.mark``, ``ci.epochs``, ``ci.batches``,
``ci.trace``...) to a fresh profiler for the length of the block. Its records stay in memory
(nothing is written to disk, no background thread runs). Each record gets a deterministic id
(1, 2, 3… as 32-hex ids) and, with a :class:`ManualClock`, the times the test sets. The pytest
fixture ``cirron_capture`` is the same as a fixture: add ``pytest_plugins = ["cirron.testing"]``
to your ``conftest.py``. Functions decorated with ``@ci.scope``/``@ci.inference`` before the
block stay bound to the profiler they were decorated with; decorate inside the test (or use
``Capture.profiler``'s methods) to capture them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cirron._cirron import Cirron
from cirron._format import span_label, trace_line
from cirron._ids import IDS, hex_id

__all__ = ["Capture", "CapturedMark", "CapturedSpan", "ManualClock", "capture", "cirron_capture"]

#: The module functions :func:`capture` hands to its profiler (bound methods of a Cirron).
_MODULE_API = ("aflush", "ashutdown", "batches", "epochs", "flush", "health", "mark", "scope", "shutdown", "trace")


class ManualClock:
    """Wall and CPU time that move only when the test says so (both in ns)."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self.wall_ns: int = start_ns
        self.cpu_ns: int = 0

    def advance(self, ns: int, *, cpu_ns: int | None = None) -> None:
        """Move wall time by ``ns`` and CPU time by ``cpu_ns`` (by default the same amount)."""
        if ns < 0 or (cpu_ns is not None and cpu_ns < 0):
            raise ValueError("a clock only moves forward")
        self.wall_ns += ns
        self.cpu_ns += ns if cpu_ns is None else cpu_ns

    def time_ns(self) -> int:
        return self.wall_ns

    def thread_time_ns(self) -> int:
        return self.cpu_ns


@dataclass(frozen=True)
class CapturedMark:
    name: str
    value: Any
    kind: str
    ts_ns: int


@dataclass(frozen=True)
class CapturedSpan:
    """One recorded span; ``duration_ns``/``cpu_ns`` are None while it is open."""

    id: str
    parent_id: str | None
    name: str
    index: int | None
    attrs: dict[str, Any]
    start_ns: int
    duration_ns: int | None
    cpu_ns: int | None
    depth: int
    marks: list[CapturedMark] = field(default_factory=list)

    @property
    def label(self) -> str:
        return span_label(self.name, self.index)


class Capture:
    """What the code under test recorded inside :func:`capture`, read from memory."""

    def __init__(self, profiler: Cirron) -> None:
        #: The profiler the module API pointed at during the block.
        self.profiler = profiler

    @property
    def spans(self) -> list[CapturedSpan]:
        """Every span, parents before their children, siblings in start order."""
        c = self.profiler
        c._collector.drain_to_trace()
        rows, marks = c._trace.snapshot(list(c._rec.open.values()))
        by_parent: dict[int, list[tuple[Any, ...]]] = {}
        ids = {r[0] for r in rows}
        for r in sorted(rows, key=lambda r: (r[4], r[0])):
            by_parent.setdefault(r[1] if r[1] in ids else 0, []).append(r)
        out: list[CapturedSpan] = []
        stack = [(r, 0) for r in reversed(by_parent.get(0, []))]
        while stack:
            r, depth = stack.pop()
            span_marks = [CapturedMark(m[1], m[2], m[3], m[4]) for m in marks.get(r[0], ())]
            out.append(CapturedSpan(
                id=hex_id(r[0]), parent_id=hex_id(r[1]) if r[1] in ids else None, name=r[2], index=r[3],
                attrs=dict(r[10] or {}), start_ns=r[4], duration_ns=None if r[5] is None else r[5] - r[4],
                cpu_ns=r[6], depth=depth, marks=span_marks,
            ))
            stack.extend((ch, depth + 1) for ch in reversed(by_parent.get(r[0], [])))
        return out

    def span(self, label: str) -> CapturedSpan:
        """The one span with this label (``"step"``, ``"epoch[0]"``); an error if none or several."""
        found = [s for s in self.spans if s.label == label]
        if len(found) != 1:
            raise AssertionError(f"expected one span {label!r}, found {len(found)}: {[s.label for s in self.spans]}")
        return found[0]

    def marks_of(self, label: str) -> dict[str, list[Any]]:
        """The values each mark name took in the span with this label, in time order."""
        out: dict[str, list[Any]] = {}
        for m in self.span(label).marks:
            out.setdefault(m.name, []).append(m.value)
        return out

    def tree(self) -> str:
        """The spans as ``ci.trace()`` prints them (deterministic with a :class:`ManualClock`)."""
        lines = []
        for s in self.spans:
            latest = {m.name: m.value for m in s.marks}
            lines.append(trace_line(s.depth, s.label, s.duration_ns, s.attrs, latest))
        return "\n".join(lines)


@contextlib.contextmanager
def capture(*, clock: ManualClock | None = None, first_id: int = 1) -> Iterator[Capture]:
    """Record into memory for the block: the module API points at a fresh profiler, ids count up
    from ``first_id`` and, with ``clock``, every timestamp comes from it. Everything is put back
    on the way out."""
    import cirron
    from cirron._record import span as span_module

    if first_id < 1:
        raise ValueError("ids start at 1 (0 means 'no parent')")
    profiler = Cirron(output="none", _pure_python=True)  # the Python recorder reads the injected clock
    saved_api = {name: getattr(cirron, name) for name in _MODULE_API}
    saved_ids = IDS.ids
    saved_clock = span_module.time_ns, span_module.thread_time_ns
    IDS.ids = itertools.count(first_id)
    if clock is not None:
        span_module.time_ns, span_module.thread_time_ns = clock.time_ns, clock.thread_time_ns
    for name in _MODULE_API:
        setattr(cirron, name, getattr(profiler, name))
    try:
        yield Capture(profiler)
    finally:
        for name, fn in saved_api.items():
            setattr(cirron, name, fn)
        span_module.time_ns, span_module.thread_time_ns = saved_clock
        IDS.ids = saved_ids
        profiler.shutdown()


def _fixture() -> Any:
    import pytest

    @pytest.fixture
    def cirron_capture() -> Iterator[Capture]:
        """``capture()`` as a pytest fixture; ``cirron_capture.profiler`` is the profiler in use."""
        with capture() as rec:
            yield rec

    return cirron_capture


try:
    cirron_capture: Any = _fixture()  # a pytest fixture object
except ImportError:  # pytest is not installed: the fixture is only for pytest users
    pass
