"""Batch files are parsed on a few threads (cirron.spool.parallel, CIRRON_READ_THREADS): every
answer is the one a single thread gives, byte for byte, on spools of many files with files the
compiled parser declines and files cut off mid-record; a worker's exception surfaces where the
single-threaded loop would raise it, and no thread outlives a read."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
from cli_helpers import run_cli  # noqa: E402
from spool_factory import SpoolFactory, new_id  # noqa: E402

from cirron.spool import columnar, open_catalog, pieces  # noqa: E402
from cirron.spool.parallel import MAX_THREADS, THREADS_ENV, ordered_map, read_threads  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cirron-read")]


def test_thread_setting(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    default = read_threads()
    assert 1 <= default <= 2
    for raw, want in (("1", 1), ("3", 3), (" 2 ", 2), ("999", MAX_THREADS), ("0", default), ("-2", default),
                      ("two", default), ("", default)):
        monkeypatch.setenv(THREADS_ENV, raw)
        assert read_threads() == want, raw


def test_ordered_map_keeps_the_input_order_when_later_items_finish_first():
    first_may_finish = threading.Event()

    def work(i: int) -> int:
        if i == 0:  # the first item ends only once a later one has ended
            assert first_may_finish.wait(10)
        elif i == 1:
            first_may_finish.set()
        return i * i

    assert list(ordered_map(work, range(40), threads=2)) == [i * i for i in range(40)]
    assert not _reader_threads()


def test_ordered_map_keeps_few_items_in_flight():
    started: list[int] = []
    gate = threading.Event()

    def work(i: int) -> int:
        started.append(i)
        assert gate.wait(10)
        return i

    results = ordered_map(work, range(100), threads=2)
    with closing(results):
        waiter = threading.Timer(0.2, gate.set)
        waiter.start()
        assert next(results) == 0
        waiter.join()
        assert len(started) <= 4  # the first three items, then one more for the one taken
    assert not _reader_threads()


def test_a_worker_exception_surfaces_in_order_and_stops_the_threads():
    def work(i: int) -> int:
        if i == 5:
            raise ValueError("bad item")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item"):
        for v in ordered_map(work, range(50), threads=2):
            got.append(v)
    assert got == [0, 1, 2, 3, 4]
    assert not _reader_threads()


def test_stopping_early_leaves_no_thread():
    results = ordered_map(lambda i: i, range(1000), threads=3)
    assert [next(results), next(results)] == [0, 1]
    results.close()
    assert not _reader_threads()


def test_one_thread_works_on_the_calling_thread():
    names = list(ordered_map(lambda _i: threading.current_thread().name, range(5), threads=1))
    assert names == [threading.current_thread().name] * 5
    # a lone item (a session of one batch file) starts no thread either
    assert list(ordered_map(lambda _i: threading.current_thread().name, [0], threads=2)) == [
        threading.current_thread().name]
    names = list(ordered_map(lambda _i: threading.current_thread().name, [0, 1], threads=2))
    assert all(name.startswith("cirron-read") for name in names)


def test_the_compiled_parser_lets_other_threads_run():
    """While one thread parses a big batch file, another keeps running (the parse holds no GIL)."""
    if columnar._cbatch is None:
        pytest.skip("compiled batch parser not built")
    sid = new_id()
    spans = [{"id": new_id(), "parent_id": None, "name": f"s{i}", "start_ns": i, "end_ns": i + 5, "attrs": {"k": i}}
             for i in range(40_000)]
    data = json.dumps({"session_id": sid, "spans": spans * 8, "marks": []}).encode()
    inside = threading.Event()
    done = threading.Event()
    took: list[float] = []

    def parse() -> None:
        inside.set()
        t0 = time.perf_counter()
        assert columnar._cbatch.parse(data, True) is not None
        took.append(time.perf_counter() - t0)
        done.set()

    worker = threading.Thread(target=parse)
    worker.start()
    assert inside.wait(10)
    stamps = []
    while not done.is_set():
        stamps.append(time.perf_counter())
    worker.join(10)
    # with the GIL held through the parse this thread could only have run before it began
    # (one switch interval at most) and after it ended
    assert len(stamps) > 1 and stamps[-1] - stamps[0] > 0.5 * took[0]


def _odd_bench_spool(tmp_path: Path) -> Path:
    """The bench's spool (2 sessions, 40 files) plus, in its first session, a file of another
    writer (quoted integers: the compiled parser declines it) and a file cut off mid-record."""
    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 8_000, 8_000, 40, n_sessions=2)
    factory = SpoolFactory(tmp_path)
    try:
        sid = open_catalog([spool], lambda _m: None).sessions[0].id
        root = sid
        quoted = factory.span("forward", parent_id=root, attrs={"q": 1})
        quoted["start_ns"] = str(quoted["start_ns"])
        path = factory.write_batch([quoted], [factory.mark(root, "odd", 3)], session_id=sid)
        assert columnar._cbatch is None or columnar._cbatch.parse(path.read_bytes(), True) is None
        whole = json.dumps({"schema_version": 1, "session_id": sid, "spans": [factory.span("cut", parent_id=root)]})
        factory.write_raw(factory.batch_name(), whole.encode()[: len(whole) // 2])
    finally:
        factory.close()
    return spool


def _cli_outputs(spool: Path, out: Path) -> dict[str, bytes]:
    out.mkdir()
    got = {}
    for fmt, name in (("parquet", "pq"), ("csv", "t.csv"), ("json", "t.json"), ("otel", "t.otlp.json"),
                      ("perfetto", "t.pf.json")):
        r = run_cli("traces", "export", "--format", fmt, "--output", str(out / name), "--spool", str(spool))
        assert r.exit_code == 0, r.output
    for p in sorted(out.rglob("*")):
        if p.is_file():
            got[str(p.relative_to(out))] = p.read_bytes()
    for args in (("traces", "list"), ("traces", "view", "--depth", "2"), ("spool", "list")):
        r = run_cli(*args, "--spool", str(spool))
        assert r.exit_code == 0, r.output
        got[" ".join(args)] = r.output.encode()
    return got


@pytest.mark.parametrize("in_pieces", [False, True], ids=["whole", "pieces"])
def test_exports_and_views_are_identical_on_one_and_two_threads(tmp_path, monkeypatch, in_pieces):
    spool = _odd_bench_spool(tmp_path)
    if in_pieces:  # every session read piece by piece, through the spill
        monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 10)
        monkeypatch.setattr(pieces, "PIECE_ROWS", 500)
    runs = {}
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        (spool / ".index.msgpack").unlink(missing_ok=True)
        runs[threads] = _cli_outputs(spool, tmp_path / f"out{threads}")
    assert runs["1"].keys() == runs["2"].keys() and len(runs["1"]) > 8
    for name, data in runs["1"].items():
        assert runs["2"][name] == data, name
    assert not _reader_threads()


def test_a_worker_that_finds_a_file_unsupported_sends_the_session_the_careful_way(tmp_path, monkeypatch):
    spool = _odd_bench_spool(tmp_path)
    monkeypatch.setenv(THREADS_ENV, "2")
    info = open_catalog([spool], lambda _m: None).sessions[0]
    assert columnar.read_columns(info) is not None
    calls = []
    real = columnar.read_file

    def failing(bf, with_marks=True):
        calls.append(threading.current_thread().name)
        if len(calls) == 7:
            raise columnar.Unsupported("name")
        return real(bf, with_marks)

    monkeypatch.setattr(columnar, "read_file", failing)
    assert columnar.read_columns(info) is None  # the caller then reads the session the reference way
    assert all(name.startswith("cirron-read") for name in calls)
    calls.clear()
    assert pieces.iter_pieces(info) is None
    assert not _reader_threads()
