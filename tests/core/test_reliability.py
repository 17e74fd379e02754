"""Spec/issue reliability promises: crashes, full disks, forks, shutdown bounds, exact accounting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cirron import Cirron
from core.helpers import batch_files, by_name, read_spool


def run_script(code: str, cwd: Path, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_sigkill_after_flush_leaves_only_complete_batches(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import cirron as ci, sys
        ci.profile(flush_interval=0.01)
        for i in range(2000):
            with ci.scope("warm"):
                ci.mark("i", i)
        ci.flush()
        print("flushed", flush=True)
        i = 0
        while True:  # keep recording and flushing until killed
            with ci.scope("step", i=i):
                ci.mark("loss", 1.0 / (i + 1))
            i += 1
    """)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "flushed"
    spool = tmp_path / ".cirron" / "spool"
    deadline = time.monotonic() + 20
    while len(batch_files(spool)) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    files = batch_files(spool)
    assert files
    for path in files:
        batch = json.loads(path.read_text())
        assert batch["schema_version"] == 1 and isinstance(batch["spans"], list)
    data = read_spool(spool)
    assert len(by_name(data["spans"], "warm")) == 2000
    (root,) = by_name(data["spans"], "cirron.session")
    assert root["end_ns"] is None  # crashed: never closed
    from cirron.spool.paths import is_session_live

    assert not is_session_live(spool, root["id"])


def test_unwritable_spool_never_breaks_the_program(tmp_path: Path) -> None:
    # Tests run as root, so file modes prove nothing: cap the file size with RLIMIT_FSIZE.
    result = run_script("""
        import resource, json
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        import cirron as ci
        ci.profile(flush_interval=0.01)
        for i in range(1000):
            with ci.scope("step"):
                ci.mark("loss", 0.5)
        ci.flush()
        h = ci.health()
        ci.shutdown()
        h2 = ci.health()
        print(json.dumps({"during": {k: h[k] for k in ("last_error", "spans_written")},
                          "after": {k: h2[k] for k in ("spans_recorded", "spans_written", "spans_dropped",
                                                          "spans_pending", "marks_dropped", "drops")}}))
        print("END")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "END"
    report = json.loads(lines[-2])
    assert "File too large" in report["during"]["last_error"] or "EFBIG" in report["during"]["last_error"]
    after = report["after"]
    assert after["spans_written"] == 0
    assert after["spans_dropped"] == after["spans_recorded"] == 1001
    assert after["marks_dropped"] == 1000
    assert after["drops"]["spans_write_error"] == 1001


def test_spool_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a directory")
    c = Cirron(spool_dir=tmp_path / "blocker" / "spool", flush_interval=60)
    c.profile()
    with c.scope("s"):
        c.mark("x", 1)
    assert c.flush() is False  # nothing reached the disk: flush() says so
    h = c.health()
    assert h["last_flush_ok"] is False and h["last_flush_problem"].startswith("spool:")
    assert h["last_error"] and ("Not a directory" in h["last_error"] or "File exists" in h["last_error"])
    assert h["spans_written"] == 0 and h["spans_pending"] >= 1  # kept for a retry
    c.shutdown()
    assert (tmp_path / "blocker").read_text() == "not a directory"


def test_recording_after_shutdown_from_many_threads(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    c.shutdown()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(2000):
                with c.scope("late"):
                    c.mark("m", i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert errors == []
    assert c.shutdown() is True and c.flush() is True


def test_forked_child_after_shutdown_and_while_running(tmp_path: Path) -> None:
    result = run_script("""
        import os, cirron as ci
        ci.profile(flush_interval=0.05)
        with ci.scope("parent"):
            pid = os.fork()
            if pid == 0:
                with ci.scope("in_child"):
                    ci.mark("child_mark", 1)
                ci.flush()
                ci.shutdown()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
        ci.shutdown()
        pid = os.fork()
        if pid == 0:
            with ci.scope("after_shutdown"):
                ci.mark("x", 1)
            ci.flush(); ci.shutdown()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        print("OK")
    """, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
    data = read_spool(tmp_path / ".cirron" / "spool")
    (parent,) = by_name(data["spans"], "parent")
    (child,) = by_name(data["spans"], "in_child")
    (process,) = by_name(data["spans"], "cirron.process")  # the child's own root, below "parent"
    assert process["parent_id"] == parent["id"] and process["pid"] != parent["pid"]
    assert process["end_ns"] is not None
    assert child["parent_id"] == process["id"] and child["pid"] == process["pid"]
    assert [m["span_id"] for m in data["marks"].values() if m["name"] == "child_mark"] == [child["id"]]


def test_multiprocessing_child_records_are_not_lost(tmp_path: Path) -> None:
    result = run_script("""
        import multiprocessing as mp, cirron as ci

        def work(n):
            with ci.scope("worker", n=n):
                ci.mark("n", n)

        if __name__ == "__main__":
            ci.profile(flush_interval=60)
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=work, args=(i,)) for i in range(3)]
            for p in procs: p.start()
            for p in procs: p.join()
            ci.shutdown()
            print("OK")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    data = read_spool(tmp_path / ".cirron" / "spool")
    assert sorted(s["attrs"]["n"] for s in by_name(data["spans"], "worker")) == [0, 1, 2]


def test_shutdown_is_bounded_when_a_sink_hangs(tmp_path: Path) -> None:
    result = run_script("""
        import threading, time, cirron as ci
        from cirron.sinks import Sink
        import cirron.sinks as sinks

        class Stuck(Sink):
            name = "stuck"
            def write_sync(self, batch):
                threading.Event().wait()  # never returns

        real = sinks.make_sink
        sinks.make_sink = lambda name, owner: Stuck() if name == "none" else real(name, owner)
        ci.profile(output="none", flush_interval=60)
        with ci.scope("s"):
            pass
        t = time.monotonic()
        ok = ci.shutdown(timeout=1.0)
        print(ok, round(time.monotonic() - t, 2), flush=True)
    """, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    ok, took = result.stdout.split()
    assert ok == "False" and float(took) < 2.5


def test_atexit_flushes_a_script_that_never_calls_shutdown(tmp_path: Path) -> None:
    result = run_script("""
        import cirron as ci, threading
        ci.profile(flush_interval=60)
        pool_done = []
        t = threading.Thread(target=lambda: [ci.mark("from_thread", i) for i in range(10)])
        t.start()
        with ci.scope("last"):
            ci.mark("m", 1)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    data = read_spool(tmp_path / ".cirron" / "spool")
    assert by_name(data["spans"], "last")
    (root,) = by_name(data["spans"], "cirron.session")
    assert root["end_ns"] is not None
    assert sum(1 for m in data["marks"].values() if m["name"] == "from_thread") == 10


def test_accounting_is_exact(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir, flush_interval=60, mark_buffer_capacity=1000)
    for i in range(1500):  # 500 dropped from the ring before any session
        c.mark("early", i)
    c.profile()
    c.flush()  # the ring is full of early marks: write them before recording more

    def check() -> dict:
        h = c.health()
        assert h["spans_recorded"] == h["spans_written"] + h["spans_dropped"] + h["spans_pending"], h
        assert h["marks_recorded"] == h["marks_written"] + h["marks_dropped"] + h["marks_pending"], h
        return h

    check()
    with c.scope("open"):
        for i in range(100):
            with c.scope("s"):
                c.mark("m", i)
        check()
        c.flush()
        h = check()
        # Spans count once they close; the session root and "open" are still open.
        assert h["spans_pending"] == 0 and h["spans_open"] == 2
    c.flush()
    c.shutdown()
    h = check()
    assert h["spans_pending"] == 0 and h["marks_pending"] == 0
    assert h["marks_dropped"] == 500 and h["drops"] == {"marks_buffer_full": 500}
    assert h["spans_written"] == 102 and h["marks_written"] == 1100


def test_no_profiler_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cirron(spool_dir=tmp_path / ".cirron" / "spool")
    with c.scope("standalone"):
        c.mark("x", 1)
    assert c.flush() is True
    c.trace()
    assert "standalone - " in capsys.readouterr().out
    assert not (tmp_path / ".cirron").exists()


def test_profile_is_idempotent_and_profiling_context(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir)
    assert c.profile() is c.profile() is c
    sid = c.session_id
    c.shutdown()
    assert c.shutdown() is True
    with c.profiling() as inner:
        assert inner is c and c.running and c.session_id != sid
    assert not c.running
    sessions = by_name(read_spool(spool_dir)["spans"], "cirron.session")
    assert len(sessions) == 2 and all(s["end_ns"] for s in sessions)


def test_async_profiling_runs_inside_the_callers_loop(spool_dir: Path) -> None:
    import asyncio

    async def main() -> set[str]:
        c = Cirron(spool_dir=spool_dir, flush_interval=0.05)
        async with c.profiling():
            threads_before = {t.name for t in threading.enumerate()}
            async with c.scope("req"):
                c.mark("m", 1)
            assert await c.aflush() is True
            assert batch_files(spool_dir)
        return threads_before

    names = asyncio.run(main())
    assert "cirron-flush" not in names
    data = read_spool(spool_dir)
    assert by_name(data["spans"], "req") and by_name(data["spans"], "cirron.session")[0]["end_ns"]


def test_two_instances_are_independent(tmp_path: Path) -> None:
    a = Cirron(spool_dir=tmp_path / "a" / "spool", flush_interval=60)
    b = Cirron(spool_dir=tmp_path / "b" / "spool", flush_interval=60)
    a.profile()
    b.profile()
    with a.scope("only_a"):
        b.mark("only_b", 1)
    a.shutdown()
    b.shutdown()
    da, db = read_spool(tmp_path / "a" / "spool"), read_spool(tmp_path / "b" / "spool")
    assert by_name(da["spans"], "only_a") and not by_name(db["spans"], "only_a")
    assert [m["name"] for m in db["marks"].values()] == ["only_b"] and not da["marks"]


def test_liveness_lock_held_while_running(spool_dir: Path) -> None:
    from cirron.spool.paths import is_session_live

    c = Cirron(spool_dir=spool_dir)
    c.profile()
    assert is_session_live(spool_dir, c.session_id)
    c.shutdown()
    assert not is_session_live(spool_dir, c.session_id)


def test_disk_cap_evicts_oldest_finished_sessions(tmp_path: Path) -> None:
    spool = tmp_path / ".cirron" / "spool"
    for n in range(3):
        c = Cirron(spool_dir=spool, flush_interval=60)
        c.profile()
        for i in range(300):
            with c.scope("old", session=n, i=i):
                pass
        c.shutdown()
    sizes = sum(p.stat().st_size for p in batch_files(spool))
    c = Cirron(spool_dir=spool, flush_interval=60, max_spool_bytes=int(sizes * 0.8))
    c.profile()
    for i in range(300):
        with c.scope("new", i=i):
            pass
    c.shutdown()
    h = c.health()
    assert h["sinks"]["spool"]["evicted_sessions"] >= 1
    data = read_spool(spool)
    assert len(by_name(data["spans"], "new")) == 300
    left = {s["attrs"]["session"] for s in by_name(data["spans"], "old")}
    assert 0 not in left  # the oldest went first
    assert sum(p.stat().st_size for p in spool.rglob("*") if p.is_file()) <= int(sizes * 0.8)


def test_a_cap_smaller_than_one_batch_evicts_nothing(tmp_path: Path) -> None:
    spool = tmp_path / ".cirron" / "spool"
    c = Cirron(spool_dir=spool, flush_interval=60)
    c.profile()
    with c.scope("old"):
        pass
    c.shutdown()
    before = sorted(p.name for p in batch_files(spool))
    c = Cirron(spool_dir=spool, flush_interval=60, max_spool_bytes=64)  # smaller than any batch
    c.profile()
    with c.scope("new"):
        pass
    c.shutdown()
    h = c.health()["sinks"]["spool"]
    assert h["refused_writes"] >= 1 and h["evicted_sessions"] == 0
    assert before and set(before) <= {p.name for p in batch_files(spool)}  # the older session is intact


@pytest.mark.parametrize("value,expected", [("1GB", 10**9), ("1GiB", 2**30), ("512 MiB", 512 * 2**20),
                                            ("1.5k", 1500), ("4096", 4096), (2048, 2048)])
def test_disk_cap_takes_units(monkeypatch: pytest.MonkeyPatch, value: object, expected: int) -> None:
    assert Cirron(max_spool_bytes=value).config.max_spool_bytes == expected
    monkeypatch.setenv("CIRRON_MAX_SPOOL_BYTES", str(value))
    assert Cirron().config.max_spool_bytes == expected


@pytest.mark.parametrize("value", ["0", "-1GB", "lots", "1XB", True])
def test_bad_disk_cap_is_a_config_error(value: object) -> None:
    from cirron import CirronConfigError

    with pytest.raises(CirronConfigError, match="max_spool_bytes"):
        Cirron(max_spool_bytes=value)


@pytest.mark.parametrize("where", ["loop_thread", "other_thread"])
def test_sync_shutdown_inside_async_profiling_ends_cleanly(spool_dir: Path, where: str) -> None:
    import asyncio

    import anyio

    async def main() -> None:
        c = Cirron(spool_dir=spool_dir, flush_interval=0.05)
        with anyio.fail_after(20):
            async with c.profiling():
                with c.scope("work"):
                    pass
                if where == "loop_thread":
                    assert c.shutdown(timeout=2) is True
                else:
                    assert await asyncio.to_thread(c.shutdown, 2) is True
                assert not c.running
        # leaving the block must not hang or raise, and no service task may be left behind
        await asyncio.sleep(0)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []

    asyncio.run(main())
    data = read_spool(spool_dir)
    assert by_name(data["spans"], "work")
    assert by_name(data["spans"], "cirron.session")[0]["end_ns"] is not None
