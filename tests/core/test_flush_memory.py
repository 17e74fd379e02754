"""How the flush service holds and lets go of records: bounded lists, freed in slices, and
never a batch that a sink still needs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cirron import Cirron
from cirron._flush.batch import RELEASE_STEP, GilBudget, release
from cirron._record.buffer import DRAIN_CHUNK, BufferRegistry
from cirron.spool.writer import SpoolWriter
from core.helpers import by_name, read_spool


def test_release_empties_a_list_in_slices() -> None:
    records = [(i, "step") for i in range(3 * RELEASE_STEP + 5)]
    release(records, GilBudget())
    assert records == []


def test_drain_hands_out_lists_no_longer_than_the_chunk() -> None:
    reg = BufferRegistry(mark_capacity=16)
    tb = reg.new_thread_buffer()
    n = 2 * DRAIN_CHUNK + 7
    tb.spans.extend((i,) for i in range(n))
    span_lists, _marks = reg.drain()
    assert [len(s) for s in span_lists] == [DRAIN_CHUNK, DRAIN_CHUNK, 7]
    assert [sp[0] for spans in span_lists for sp in spans] == list(range(n))  # order kept
    assert tb.spans_drained == n and not tb.spans


def test_big_flush_writes_everything_and_trace_keeps_the_newest(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60, trace_buffer_max_spans=5000)
    c.profile()
    n = 3 * DRAIN_CHUNK + 100
    for i in range(n):
        with c.scope("step", i=i):
            pass
    batches = c._flush_sync()
    # Every sink is sync and none kept them: their records were freed after writing.
    assert batches and all(b.span_lists == [] and b.mark_rows == [] and b.closed_spans for b in batches)
    kept = c.trace(format="dict")
    c.shutdown()
    written = by_name(read_spool(spool_dir)["spans"], "step")
    assert sorted(s["attrs"]["i"] for s in written) == list(range(n))

    def steps(node: dict) -> list[int]:
        own = [node["attrs"]["i"]] if node["name"] == "step" else []
        return own + [i for child in node.get("children", []) for i in steps(child)]

    assert kept["span_count"] == 5000
    seen = sorted(i for root in kept["roots"] for i in steps(root))
    assert seen == list(range(n - 5000, n))


def test_batch_kept_for_retry_is_written_once_the_disk_recovers(spool_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = SpoolWriter.write_batch
    failing = threading.Event()
    failing.set()

    def flaky(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if failing.is_set():
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(SpoolWriter, "write_batch", flaky)
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    for i in range(100):
        with c.scope("step", i=i):
            pass
    batches = c._flush_sync()
    assert batches and all(b.kept and b.span_count and b.span_lists for b in batches)  # retained, not freed
    failing.clear()
    for i in range(100, 150):
        with c.scope("step", i=i):
            pass
    c.shutdown()
    written = by_name(read_spool(spool_dir)["spans"], "step")
    assert sorted(s["attrs"]["i"] for s in written) == list(range(150))
    h = c.health()
    assert h["spans_dropped"] == 0 and h["spans_written"] == h["spans_recorded"]
