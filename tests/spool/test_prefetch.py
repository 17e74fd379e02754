"""Batch files parsed early (cirron.spool.prefetch) while an export imports pyarrow: the reader
takes each early parse once, and only of the file as it still is; whatever is not parsed early
(a big session, a file the reader reached first, a file changed since, what the compiled parser
declines) is read as always, so every answer is the one a reader without it gives."""

from __future__ import annotations

import os
import threading

import pytest

pytest.importorskip("pyarrow")
from cli_helpers import run_cli  # noqa: E402
from spool_factory import BASE_NS, SpoolFactory  # noqa: E402

from cirron.spool import columnar, open_catalog, prefetch  # noqa: E402
from cirron.spool.parallel import THREADS_ENV  # noqa: E402

pytestmark = pytest.mark.skipif(prefetch._cbatch is None, reason="the C batch parser was not built")


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    prefetch.stop()
    yield
    prefetch.stop()


def _wait_parsed() -> None:
    for t in threading.enumerate():
        if t.name == "cirron-prefetch":
            t.join(timeout=60)
            assert not t.is_alive()


def _sessions(factory: SpoolFactory, n: int = 3):
    for i in range(n):
        factory.session(start_ns=BASE_NS + i * 10**12, split=True)
    return open_catalog([factory.spool_dir], lambda _m: None).sessions


def _columns(info) -> dict:
    cols = columnar.read_columns(info)
    assert cols is not None
    return {"spans": cols.spans, "marks": cols.marks, "parent": cols.span_parent.tolist(),
            "epoch": cols.span_epoch.tolist(), "mark_epoch": cols.mark_epoch.tolist()}


def _same(a: dict, b: dict) -> bool:
    return a["spans"].equals(b["spans"]) and a["marks"].equals(b["marks"]) and all(
        a[k] == b[k] for k in ("parent", "epoch", "mark_epoch"))


def test_each_early_parse_is_taken_once_and_reads_as_the_file(factory: SpoolFactory, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    sessions = _sessions(factory)
    expected = [_columns(info) for info in sessions]
    prefetch.start(sessions, with_marks=True)
    _wait_parsed()
    files = [bf.path for info in sessions for bf in info.files]
    assert set(prefetch._early) == {(p, True) for p in files}
    assert prefetch.take(files[0], False) is None  # parsed with the marks: not for a spans-only read
    got = [_columns(info) for info in sessions]
    assert not prefetch._early  # every parse was taken by the reads
    assert all(_same(g, e) for g, e in zip(got, expected))
    assert prefetch.take(files[0], True) is None  # once


def test_a_file_changed_since_its_early_parse_is_read_again(factory: SpoolFactory, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    sessions = _sessions(factory, 1)
    prefetch.start(sessions, with_marks=True)
    _wait_parsed()
    changed = next(bf.path for bf in sessions[0].files if b'"forward"' in bf.path.read_bytes())
    st = changed.stat()
    changed.write_bytes(changed.read_bytes().replace(b'"forward"', b'"FORWARD"'))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the ctime still moved
    assert prefetch.take(changed, True) is None
    prefetch.stop()
    names = columnar.read_columns(sessions[0]).spans["name"].to_pylist()
    assert "FORWARD" in names


def test_a_file_the_reader_reaches_first_is_read_by_the_reader(factory: SpoolFactory, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    sessions = _sessions(factory, 2)
    gate = threading.Event()
    real_run = prefetch._Early.run

    def held_run(self):
        assert gate.wait(30)
        real_run(self)

    monkeypatch.setattr(prefetch._Early, "run", held_run)
    prefetch.start(sessions, with_marks=True)
    first, *rest = [bf.path for info in sessions for bf in info.files]
    # the thread holds the first file: the others have not started and go to the reader
    assert all(prefetch.take(p, True) is None for p in rest)
    gate.set()
    assert prefetch.take(first, True) is not None
    _wait_parsed()
    assert not prefetch._early


def test_only_whole_small_sessions_are_parsed_early(factory: SpoolFactory, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "2")
    sessions = _sessions(factory, 3)
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", sessions[0].bytes + sessions[1].bytes)
    prefetch.start(sessions, with_marks=False)
    assert {p for p, _m in prefetch._early} == {bf.path for info in sessions[:2] for bf in info.files}
    prefetch.stop()
    _wait_parsed()
    monkeypatch.setattr(prefetch, "PREFETCH_BYTES", sessions[0].bytes - 1)
    prefetch.start(sessions, with_marks=True)  # the first session alone is too big: nothing early
    assert not prefetch._early
    monkeypatch.setenv(THREADS_ENV, "1")
    prefetch.start(sessions, with_marks=True)  # one read thread: nothing beside it
    assert not prefetch._early


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "otel", "perfetto"])
def test_exports_with_early_parses_equal_those_without(factory: SpoolFactory, tmp_path, monkeypatch, fmt):
    _sessions(factory)
    taken = []
    real_take = prefetch.take
    monkeypatch.setattr(prefetch, "take", lambda p, m: taken.append(r := real_take(p, m)) or r)
    outs = []
    for threads in ("2", "1"):  # with one read thread nothing is parsed early
        monkeypatch.setenv(THREADS_ENV, threads)
        out = tmp_path / f"{threads}.{fmt}"
        r = run_cli("traces", "export", "--format", fmt, "--output", str(out), "--spool", str(factory.spool_dir))
        assert r.exit_code == 0, r.output
        outs.append(out)
        if threads == "2":
            assert any(t is not None for t in taken)  # the reader did take early parses
            assert not prefetch._early  # and nothing is left behind
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for name in ("spans.parquet", "marks.parquet", "snapshots.parquet"):
            assert pq.read_table(outs[0] / name).equals(pq.read_table(outs[1] / name))
    else:
        assert outs[0].read_bytes() == outs[1].read_bytes()
