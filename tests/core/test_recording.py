"""ci.scope / ci.mark / ci.epochs / ci.batches as spec section 2 describes them."""

from __future__ import annotations

import asyncio
import math
import re
import threading
from pathlib import Path

import pytest

import cirron
from cirron import Cirron, CirronMarkTypeError
from core.helpers import by_name, read_spool


@pytest.fixture
def c(spool_dir: Path):
    inst = Cirron(spool_dir=spool_dir, flush_interval=60)
    inst.profile()
    yield inst
    inst.shutdown()


def test_scopes_nest_and_close_with_cpu_time(c: Cirron, spool_dir: Path) -> None:
    with c.scope("outer", phase="train"):
        with c.scope("inner"):
            sum(range(20000))
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    (root,) = by_name(spans, "cirron.session")
    (outer,) = by_name(spans, "outer")
    (inner,) = by_name(spans, "inner")
    assert root["parent_id"] is None and root["end_ns"] is not None
    assert outer["parent_id"] == root["id"]
    assert inner["parent_id"] == outer["id"]
    assert outer["attrs"] == {"phase": "train"}
    assert inner["cpu_ns"] > 0 and inner["end_ns"] >= inner["start_ns"]
    assert outer["start_ns"] <= inner["start_ns"] and inner["end_ns"] <= outer["end_ns"]
    for s in spans.values():
        assert len(s["id"]) == 32 and all(ch in "0123456789abcdef" for ch in s["id"])


def test_exception_closes_span_sets_error_and_propagates_same_object(c: Cirron, spool_dir: Path) -> None:
    err = ValueError("bad batch")
    with pytest.raises(ValueError) as info:
        with c.scope("step"):
            raise err
    assert info.value is err
    kb = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info2:
        with c.scope("interrupted"):
            raise kb
    assert info2.value is kb
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    (step,) = by_name(spans, "step")
    assert step["end_ns"] is not None
    assert step["attrs"]["error"] == "ValueError: bad batch"
    (intr,) = by_name(spans, "interrupted")
    assert intr["end_ns"] is not None and "error" not in intr["attrs"]


def test_scope_as_decorator_sync_and_async(c: Cirron, spool_dir: Path) -> None:
    @c.scope("double")
    def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    @c.scope("adouble")
    async def adouble(x: int) -> int:
        return 2 * x

    assert double(3) == 6 and double.__name__ == "double" and double.__doc__ == "Doubles."
    assert asyncio.run(adouble(4)) == 8
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    assert len(by_name(spans, "double")) == 1 and len(by_name(spans, "adouble")) == 1


def test_async_scope_and_task_inheritance(c: Cirron, spool_dir: Path) -> None:
    async def child(n: int) -> None:
        with c.scope(f"child{n}"):
            await asyncio.sleep(0)

    async def main() -> None:
        async with c.scope("parent"):
            await asyncio.gather(*(asyncio.create_task(child(i)) for i in range(3)))
        # tasks created outside any scope get the session root
        await asyncio.create_task(child(9))

    asyncio.run(main())
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    (parent,) = by_name(spans, "parent")
    for i in range(3):
        assert by_name(spans, f"child{i}")[0]["parent_id"] == parent["id"]
    (root,) = by_name(spans, "cirron.session")
    assert by_name(spans, "child9")[0]["parent_id"] == root["id"]


def test_threads_see_their_own_innermost_scope(c: Cirron, spool_dir: Path) -> None:
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        with c.scope(f"t{n}"):
            barrier.wait(timeout=5)
            c.mark("who", n)
            barrier.wait(timeout=5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c.shutdown()
    data = read_spool(spool_dir)
    for i in range(4):
        (span,) = by_name(data["spans"], f"t{i}")
        marks = [m for m in data["marks"].values() if m["span_id"] == span["id"]]
        assert [m["value"] for m in marks] == [i]


def test_mark_coercion_types_and_cap(c: Cirron, spool_dir: Path) -> None:
    np = pytest.importorskip("numpy")
    with c.scope("s"):
        c.mark("b", True)
        c.mark("i", 7)
        c.mark("f", 0.25)
        c.mark("np", np.float32(1.5))
        c.mark("np0d", np.array(2.5))
        c.mark("npint", np.int64(3))
        c.mark("nan", float("nan"))
        c.mark("inf", -math.inf)
        c.mark("long", "é" * 300)
        c.mark("summary", 1.0, kind="summary", step=3)
    with pytest.raises(CirronMarkTypeError, match=r"ndarray.*snapshots"):
        c.mark("arr", np.zeros(3))
    with pytest.raises(TypeError):
        c.mark("obj", object())
    c.shutdown()
    marks = {m["name"]: m for m in read_spool(spool_dir)["marks"].values()}
    assert (marks["b"]["value"], marks["b"]["value_type"]) == (True, "bool")
    assert (marks["i"]["value"], marks["i"]["value_type"]) == (7, "int")
    assert (marks["np"]["value"], marks["np"]["value_type"]) == (1.5, "float")
    assert marks["np0d"]["value"] == 2.5 and marks["npint"]["value"] == 3
    assert (marks["nan"]["value"], marks["nan"]["value_type"]) == ("NaN", "float")
    assert marks["inf"]["value"] == "-Infinity"
    assert marks["long"]["value_type"] == "str"
    assert len(marks["long"]["value"].encode()) <= 256 and marks["long"]["value"] == "é" * 128
    assert marks["summary"]["kind"] == "summary" and marks["summary"]["attrs"] == {"step": 3}


def test_batch_files_are_strict_json(c: Cirron, spool_dir: Path) -> None:
    import json

    with c.scope("s", ratio=float("inf")):
        c.mark("nan", float("nan"))
    c.flush()
    for path in spool_dir.glob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name, path=path: pytest.fail(f"bare {name} in {path}"))


def test_mark_attaches_to_innermost_then_session_then_root_sentinel(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.mark("before", 1)  # no session yet: the "root" sentinel
    c.profile()
    c.mark("session_level", 2)
    with c.scope("s"):
        c.mark("inner", 3)
    c.shutdown()
    data = read_spool(spool_dir)
    marks = {m["name"]: m for m in data["marks"].values()}
    (root,) = by_name(data["spans"], "cirron.session")
    (s,) = by_name(data["spans"], "s")
    assert marks["before"]["span_id"] == "root"
    assert marks["session_level"]["span_id"] == root["id"]
    assert marks["inner"]["span_id"] == s["id"]


def test_epochs_and_batches(c: Cirron, spool_dir: Path) -> None:
    seen = []
    for epoch in c.epochs(["a", "b"]):
        for batch in c.batches(iter([10, 20, 30])):
            seen.append((epoch, batch))
            c.mark("loss", 0.1)
    assert seen == [(e, b) for e in "ab" for b in (10, 20, 30)]
    c.shutdown()
    data = read_spool(spool_dir)
    epochs = by_name(data["spans"], "epoch")
    assert [e["index"] for e in epochs] == [0, 1]
    batches = by_name(data["spans"], "batch")
    assert sorted(b["index"] for b in batches) == [0, 0, 1, 1, 2, 2]
    loads = by_name(data["spans"], "data_load")
    assert len(loads) == 6
    batch_ids = {b["id"] for b in batches}
    assert all(ld["parent_id"] in batch_ids for ld in loads)
    assert all(isinstance(b["attrs"]["data_load_ns"], int) for b in batches)
    assert all(b["parent_id"] in {e["id"] for e in epochs} for b in batches)
    loss_parents = {m["span_id"] for m in data["marks"].values() if m["name"] == "loss"}
    assert loss_parents == batch_ids


def test_breaking_out_of_epochs_closes_the_span(c: Cirron, spool_dir: Path) -> None:
    for i in c.epochs(range(100)):
        if i == 2:
            break
    with c.scope("after"):
        pass
    c.shutdown()
    data = read_spool(spool_dir)
    epochs = by_name(data["spans"], "epoch")
    assert len(epochs) == 3 and all(e["end_ns"] is not None for e in epochs)
    (root,) = by_name(data["spans"], "cirron.session")
    assert by_name(data["spans"], "after")[0]["parent_id"] == root["id"]


def test_mark_ring_drops_oldest_and_counts(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, mark_buffer_capacity=100, flush_interval=60)
    for i in range(250):
        c.mark("m", i)
    h = c.health()
    assert h["mark_drop_count"] == 150 and h["marks_buffered"] == 100
    c.profile()
    c.shutdown()
    values = sorted(m["value"] for m in read_spool(spool_dir)["marks"].values())
    assert values == list(range(150, 250))


def test_ids_unique_across_processes(spool_dir: Path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    q = ctx.Queue()

    def child() -> None:
        with c.scope("child"):
            pass
        span = c._rec.current.get()
        q.put(span)
        c.flush()

    p = ctx.Process(target=child)
    with c.scope("parent"):
        pass
    p.start()
    p.join(30)
    assert p.exitcode == 0
    c.shutdown()
    data = read_spool(spool_dir)
    ids = [s["id"] for s in data["spans"].values()]
    assert len(ids) == len(set(ids))
    (child,) = by_name(data["spans"], "child")
    assert child["pid"] != by_name(data["spans"], "parent")[0]["pid"]


def test_module_level_api_uses_default_instance() -> None:
    assert cirron.mark.__self__ is cirron.default()._rec
    assert cirron.scope("x")._rec is cirron.default()._rec


def test_cancellation_and_system_exit_pass_through_unchanged(c: Cirron, spool_dir: Path) -> None:
    async def main() -> None:
        async def victim() -> None:
            async with c.scope("cancelled"):
                await asyncio.sleep(30)

        task = asyncio.create_task(victim())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    exit_exc = SystemExit(3)
    with pytest.raises(SystemExit) as info:
        with c.scope("exiting"):
            raise exit_exc
    assert info.value is exit_exc
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    assert by_name(spans, "cancelled")[0]["attrs"] == {"interrupted": "CancelledError"}
    assert by_name(spans, "exiting")[0]["attrs"] == {"interrupted": "SystemExit"}


def test_stdout_and_log_sinks_print_one_line_per_span(spool_dir: Path, capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    c = Cirron(spool_dir=spool_dir, output=["stdout", "log"], flush_interval=60)
    c.profile()
    with caplog.at_level("INFO", logger="cirron"):
        with c.scope("outer", k="v"):
            with c.scope("inner"):
                c.mark("loss", 0.5)
        c.mark("top", 1)
        c.flush()
    out = capsys.readouterr().out.splitlines()
    # Each line carries its path, in the order things happened: mark, inner, outer, top-level mark.
    assert [line.split(" — ")[0] for line in out] == ["outer/inner: ci.mark loss=0.5", "outer/inner", "outer",
                                                      "ci.mark top=1"], out
    assert out[2].endswith(" k=v") and re.fullmatch(r"outer/inner — [0-9.]+(ns|us|ms|s)", out[1])
    logged = [r.getMessage() for r in caplog.records if r.name == "cirron"]
    assert logged == out
    c.shutdown()
    assert not spool_dir.exists()  # no spool sink was asked for


def test_stdout_sink_names_open_ancestors_as_the_run_goes(spool_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    c = Cirron(spool_dir=spool_dir, output="stdout", flush_interval=60)
    c.profile()

    @c.inference(name="chat")
    def chat() -> dict:
        return {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}

    for _e in c.epochs(range(1)):
        for _b in c.batches(range(3)):
            with c.scope("forward"):
                pass
        c.flush()  # mid-epoch: the epoch is still open, its batches are printed under its name
        mid = capsys.readouterr().out.splitlines()
        assert [m.split(" — ")[0] for m in mid if "/forward" in m] == [f"epoch[0]/batch[{i}]/forward" for i in range(3)]
        assert not any(m.startswith("epoch[0] — ") for m in mid)
    chat()
    c.shutdown()
    out = capsys.readouterr().out
    assert "request chat — " in out and "request chat: ci.mark prompt_tokens=3 (summary)" in out
    assert "endpoint=" not in out
    assert out.rstrip().splitlines()[-1].startswith("cirron.session — ")


def test_stale_temporaries_of_dead_writers_are_removed(spool_dir: Path) -> None:
    spool_dir.mkdir(parents=True)
    stale = spool_dir / (".tmp-999999999-1-" + "0" * 32 + ".json")
    stale.write_text("{")
    c = Cirron(spool_dir=spool_dir)
    c.profile()
    c.shutdown()
    assert not stale.exists()


def test_consecutive_ids_differ_in_their_first_characters() -> None:
    from cirron._ids import IDS, hex_id

    ids = [hex_id(IDS.next_id()) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({i[:8] for i in ids}) == 1000  # short prefixes identify spans and sessions
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)


def test_gpu_and_memory_figures_set_on_an_open_scope_are_written(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    with c.scope("forward") as s:
        assert s.gpu_ns is None and s.memory_peak_bytes is None
        s.gpu_ns = 1234
        s.memory_peak_bytes = 5 << 20
    with c.scope("plain"):
        pass
    assert (s.gpu_ns, s.memory_peak_bytes) == (1234, 5 << 20)
    c.shutdown()
    spans = read_spool(spool_dir)["spans"]
    (fwd,) = by_name(spans, "forward")
    (plain,) = by_name(spans, "plain")
    assert (fwd["gpu_ns"], fwd["memory_peak_bytes"]) == (1234, 5 << 20)
    assert (plain["gpu_ns"], plain["memory_peak_bytes"]) == (None, None)


def test_text_that_is_not_valid_utf8_is_written_escaped_not_lost(c: Cirron, spool_dir: Path) -> None:
    """A lone surrogate (os.fsdecode of an undecodable file name) cannot go into JSON as it is:
    it is written as its escape, and the rest of the batch with it."""
    with c.scope("load \udcff.bin", path="x\ud800y"):
        c.mark("file \udcfe", "v\ud801")
    with c.scope("good"):
        pass
    assert c.flush()
    h = c.health()
    assert (h["spans_written"], h["marks_written"], h["last_error"]) == (2, 1, None)
    spans = read_spool(spool_dir)["spans"]
    bad = by_name(spans, "load \\udcff.bin")
    assert len(bad) == 1 and bad[0]["attrs"] == {"path": "x\\ud800y"}
    assert len(by_name(spans, "good")) == 1
    [mark] = read_spool(spool_dir)["marks"].values()
    assert (mark["name"], mark["value"]) == ("file \\udcfe", "v\\ud801")
