"""cirron._format: the one place labels, durations, values and both span line shapes are made."""

from __future__ import annotations

import math

import pytest

from cirron._format import (
    format_duration_ns,
    format_duration_short,
    format_float,
    format_view_value,
    label_of,
    span_label,
    trace_line,
    view_mark_line,
    view_span_line,
)


def test_labels() -> None:
    assert span_label("epoch", 0) == "epoch[0]"
    assert span_label("step", None) == "step"
    assert span_label(None, None) == "?"
    assert span_label("flag", True) == "flag"  # a bool is not an index
    assert label_of({"name": "batch", "index": 3}) == "batch[3]"


@pytest.mark.parametrize("ns,view,trace", [
    (973, "973ns", "973ns"),
    (142_499, "142.5us", "142us"),
    (42_100_000, "42.1ms", "42.1ms"),
    (1_500_000_000, "1.5s", "1.50s"),
    (None, "?", "(open)"),
])
def test_the_two_duration_shapes(ns: int | None, view: str, trace: str) -> None:
    assert format_duration_ns(ns) == view
    assert format_duration_short(ns) == trace


def test_non_finite_floats_read_as_the_spool_writes_them() -> None:
    assert [format_float(x) for x in (math.nan, math.inf, -math.inf, 0.25)] == ["NaN", "Infinity", "-Infinity", "0.25"]
    assert format_view_value(math.nan) == "NaN"


def test_view_values_use_json_spellings_and_are_cut() -> None:
    assert [format_view_value(v) for v in (True, None, 3, "bare", "two words")] == [
        "true", "null", "3", "bare", '"two words"']
    assert format_view_value("x" * 200).endswith("…") and len(format_view_value("x" * 200)) == 80


def test_trace_line_is_seed_001_shape() -> None:
    line = trace_line(1, "epoch[0]", 142_000, {"lr": 0.1}, {"loss": 0.25, "acc": math.nan})
    assert line == "  epoch[0] - 142us lr=0.1 {loss=0.25, acc=NaN}"
    assert trace_line(0, "step", None, None, None) == "step - (open)"


def test_view_lines_are_seed_000_shape() -> None:
    assert view_span_line(1, "epoch[0]", "42.1ms", "lr=0.1") == "  epoch[0] — 42.1ms lr=0.1"
    assert view_span_line(0, "step", "(live)") == "step — (live)"
    assert view_mark_line(2, "loss", "0.25", summary=True) == "    ci.mark loss=0.25 (summary)"
    painted = view_span_line(0, "a", "1ms", "k=v", paint=lambda text, role: f"<{role}>{text}")
    assert painted == "<label>a — <duration>1ms <attrs>k=v"
