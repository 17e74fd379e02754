"""The compiled recorder and its pure-Python twin keep one contract.

Every test here runs twice in the same session: against ``Cirron()`` (the compiled scope and mark
where they were built) and against ``Cirron(_pure_python=True)`` (the pure-Python reference).
A behaviour that one twin has and the other lacks fails here.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cirron import Cirron, CirronMarkTypeError
from cirron._record import span as span_mod

IMPLS = ["compiled", "pure"]


@pytest.fixture(params=IMPLS)
def c(request: pytest.FixtureRequest) -> Iterator[Cirron]:
    if request.param == "compiled" and not span_mod.COMPILED:
        pytest.skip("the compiled scope was not built (or CIRRON_PURE_PYTHON is set)")
    prof = Cirron(output="none", _pure_python=request.param == "pure")
    expected = span_mod.PyScope if request.param == "pure" else span_mod.Scope
    assert prof._rec.scope_type is expected
    yield prof
    prof.shutdown()


def tree(c: Cirron) -> list[Any]:
    """The recorded trees without ids and timings: (name, index, attrs, marks, children)."""
    def strip(n: dict[str, Any]) -> tuple[Any, ...]:
        marks = [(m["name"], m["value"], m["kind"]) for m in n["marks"]]
        return n["name"], n["index"], n["attrs"], marks, [strip(ch) for ch in n["children"]]

    return [strip(r) for r in c.trace(format="dict")["roots"]]


def test_nesting_attrs_and_marks(c: Cirron) -> None:
    with c.scope("outer", index=2, lr=0.1) as outer:
        c.mark("loss", 0.5)
        with c.scope("inner") as inner:
            assert inner.parent is outer and c.current_span() is inner
            inner.set(step=3)
            c.mark("done", True, kind="summary", phase="eval")
        assert c.current_span() is outer
    assert c.current_span() is None
    assert tree(c) == [("outer", 2, {"lr": 0.1}, [("loss", 0.5, "point")],
                        [("inner", None, {"step": 3}, [("done", True, "summary")], [])])]
    assert outer.end_ns is not None and outer.end_ns >= outer.start_ns and outer.cpu_ns is not None
    assert len(outer.id_hex) == 32 and repr(outer) == "<scope 'outer' closed>"


def test_keywords_named_like_parameters_are_attributes(c: Cirron) -> None:
    with c.scope("a", name="b", value=1):
        c.mark("x", 1.0, name="y", value="z")
    assert tree(c) == [("a", None, {"name": "b", "value": 1}, [("x", 1.0, "point")], [])]


@pytest.mark.parametrize("call", [
    lambda c: c.scope(),
    lambda c: c.scope("a", "b"),
    lambda c: c.scope(name="a"),
    lambda c: c.mark("x"),
    lambda c: c.mark("x", 1, 2),
    lambda c: c.mark(name="x", value=1),
])
def test_bad_calls_are_type_errors(c: Cirron, call: Any) -> None:
    with pytest.raises(TypeError):
        call(c)


def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults (the C text signature carries no annotations)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_match() -> None:
    compiled, pure = Cirron(output="none"), Cirron(output="none", _pure_python=True)
    assert _shape(compiled.scope) == _shape(pure.scope)
    assert _shape(compiled.mark) == _shape(pure.mark)
    assert [p[0] for p in _shape(pure.mark)] == ["name", "value", "kind", "attrs"]
    assert _shape(compiled._rec.start_span) == _shape(span_mod.PyRecorderBase.start_span)[1:]


def test_mark_values_are_coerced_alike(c: Cirron) -> None:
    with c.scope("s"):
        c.mark("np", np.float32(0.25))
        c.mark("int", np.int64(3))
        c.mark("zero_d", np.array(2.5))
        c.mark("text", "é" * 300)
        c.mark("nan", math.nan)
    marks = tree(c)[0][3]
    assert marks[:3] == [("np", 0.25, "point"), ("int", 3, "point"), ("zero_d", 2.5, "point")]
    assert marks[3][1] == "é" * 128  # 256 UTF-8 bytes
    assert math.isnan(marks[4][1])


@pytest.mark.parametrize("value,kind", [(np.zeros(3), "point"), (object(), "point"), (1.0, "total")])
def test_bad_marks_raise_the_same_error(c: Cirron, value: Any, kind: str) -> None:
    with pytest.raises(CirronMarkTypeError):
        c.mark("m", value, kind=kind)


def test_exceptions_are_recorded_and_propagate(c: Cirron) -> None:
    with pytest.raises(ValueError), c.scope("fails"):
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), c.scope("stopped"):
        raise KeyboardInterrupt
    (fails, stopped) = tree(c)
    assert fails[2] == {"error": "ValueError: boom"} and stopped[2] == {"interrupted": "KeyboardInterrupt"}


def test_a_scope_object_entered_twice_records_two_spans(c: Cirron) -> None:
    s = c.scope("again")
    with s:
        with s:
            pass
    assert tree(c) == [("again", None, {}, [], [("again", None, {}, [], [])])]


def test_decorators_keep_results_and_record_each_call(c: Cirron) -> None:
    @c.scope("f", kind="sync")
    def f(x: int) -> int:
        return x + 1

    @c.scope("g")
    def g(n: int) -> Iterator[int]:
        yield from range(n)

    @c.scope("h")
    async def h() -> str:
        return "ok"

    assert f(1) == 2 and f.__name__ == "f"
    assert list(g(3)) == [0, 1, 2]
    assert asyncio.run(h()) == "ok"
    assert [(n, a) for n, _i, a, _m, _ch in tree(c)] == [("f", {"kind": "sync"}), ("g", {}), ("h", {})]


def test_start_span_opens_without_becoming_current(c: Cirron) -> None:
    span = c._rec.start_span("hook", {"k": 1}, 4)
    assert c.current_span() is None and span.id in c._rec.open
    span.finish()
    assert span.id not in c._rec.open
    assert tree(c) == [("hook", 4, {"k": 1}, [], [])]


def test_full_mark_ring_drops_the_oldest_and_counts(c: Cirron) -> None:
    small = Cirron(output="none", mark_buffer_capacity=4, _pure_python=isinstance(c._rec, span_mod.PyRecorder))
    for i in range(10):
        small.mark("m", i)
    tb = small._rec.local.tb
    assert [m[2] for m in tb.marks] == [6, 7, 8, 9] and tb.marks_dropped == 6
