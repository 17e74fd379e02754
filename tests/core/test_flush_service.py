"""When the flush service wakes: seldom while the buffers are quiet, in time while they fill."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cirron import Cirron
from cirron._flush.service import EARLY_FLUSH_FILL, POLL_MAX_S, POLL_MIN_S, next_look


@pytest.mark.parametrize("fill", [0.0, 0.1, 0.45])
def test_quiet_buffers_are_looked_at_only_every_poll_max(fill: float) -> None:
    assert next_look(fill, 0.0) == POLL_MAX_S


@pytest.mark.parametrize(("fill", "rate"), [(0.0, 3.0), (0.1, 2.5), (0.3, 1.5), (0.2, 2.0)])
def test_a_filling_buffer_is_looked_at_before_it_reaches_the_early_flush_fill(fill: float, rate: float) -> None:
    wait = next_look(fill, rate)
    assert POLL_MIN_S <= wait < POLL_MAX_S
    assert fill + rate * wait < EARLY_FLUSH_FILL  # at this rate, the next look still comes first
    assert wait == pytest.approx((EARLY_FLUSH_FILL - fill) / rate / 2)


def test_a_burst_after_a_quiet_spell_is_seen_before_the_default_mark_ring_overflows(
        spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # From quiet, the first look comes at most POLL_MAX_S after a burst starts: by then the
    # default ring (65,536 marks) must not have filled at the highest rate the flush can write
    # out anyway (about 450,000 marks per second on our 2-core VM).
    monkeypatch.delenv("CIRRON_MARK_BUFFER_CAPACITY", raising=False)
    default_capacity = Cirron(spool_dir=spool_dir).config.mark_buffer_capacity
    assert default_capacity / POLL_MAX_S >= 450_000


def test_a_buffer_filling_too_fast_is_looked_at_as_often_as_allowed() -> None:
    assert next_look(0.0, 100.0) == POLL_MIN_S
    assert next_look(0.49, 1.0) == POLL_MIN_S


def test_a_half_full_buffer_is_written_long_before_the_interval(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=3600, mark_buffer_capacity=1000)
    c.profile()
    try:
        for i in range(int(1000 * EARLY_FLUSH_FILL) + 100):
            c.mark("m", i)
        deadline = time.monotonic() + 20
        while c.health()["marks_written"] < 600 and time.monotonic() < deadline:
            time.sleep(0.01)
        health = c.health()
    finally:
        c.shutdown()
    assert health["marks_written"] == 600, health
    assert health["marks_dropped"] == 0
