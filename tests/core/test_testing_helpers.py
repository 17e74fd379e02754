"""cirron.testing: what a user's test sees of their instrumented code."""

from __future__ import annotations

import cirron as ci
from cirron._ids import hex_id
from cirron.testing import Capture, ManualClock, capture


def test_capture_with_a_manual_clock_is_exact() -> None:
    clock = ManualClock(start_ns=1_000)
    with capture(clock=clock) as rec:
        for _ in ci.epochs(range(2)):
            with ci.scope("step", batch=32):
                clock.advance(5_000, cpu_ns=4_000)
                ci.mark("loss", 0.25)
                ci.mark("loss", 0.125)
            clock.advance(1_000)
    labels = [(s.label, s.depth, s.duration_ns, s.cpu_ns) for s in rec.spans]
    assert labels == [("epoch[0]", 0, 6_000, 5_000), ("step", 1, 5_000, 4_000),
                      ("epoch[1]", 0, 6_000, 5_000), ("step", 1, 5_000, 4_000)]
    first_step = rec.spans[1]
    assert first_step.attrs == {"batch": 32} and first_step.parent_id == rec.spans[0].id
    assert [m.value for m in first_step.marks] == [0.25, 0.125] and first_step.marks[0].ts_ns == 1_000 + 5_000
    assert rec.tree().splitlines()[:2] == ["epoch[0] - 6us", "  step - 5us batch=32 {loss=0.125}"]


def test_ids_are_deterministic_and_the_module_api_comes_back() -> None:
    scope_before = ci.scope
    with capture(first_id=1) as rec:
        with ci.scope("a"):
            with ci.scope("b"):
                pass
    assert [s.id for s in rec.spans] == [hex_id(1), hex_id(2)]
    assert ci.scope is scope_before
    with capture() as again:
        with ci.scope("a"):
            pass
    assert again.spans[0].id == hex_id(1)
    assert again.marks_of("a") == {}


def test_span_lookup_says_what_there_is() -> None:
    with capture() as rec:
        with ci.scope("x"):
            pass
    try:
        rec.span("missing")
    except AssertionError as exc:
        assert "found 0" in str(exc) and "'x'" in str(exc)
    else:
        raise AssertionError("span() found a span that was not recorded")


def test_the_pytest_fixture(cirron_capture: Capture) -> None:
    with ci.scope("inside", k=1):
        ci.mark("m", 1)
    assert cirron_capture.span("inside").attrs == {"k": 1}
    assert cirron_capture.marks_of("inside") == {"m": [1]}
