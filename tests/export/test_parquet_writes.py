"""``export --format parquet`` writes its tables on threads (cirron.export._parquet._TableWrites),
also while the next chunk is read, with at most WRITE_BEHIND_BYTES of them being written at once (a
table bigger than that alone is written on the calling thread): the files hold what one thread writes, a failed write surfaces as the export's error and leaves no
output, and no writing thread outlives the export. Constant text columns (session_id, run_id) are
made from their buffers and equal pyarrow's own repeat."""

from __future__ import annotations

import re
import threading

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from spool_factory import BASE_NS, SpoolFactory  # noqa: E402

from cirron.export import write_parquet  # noqa: E402
from cirron.export._parquet import PARQUET_FILES, _repeated_text  # noqa: E402
from cirron.spool import open_catalog  # noqa: E402
from cirron.spool.parallel import THREADS_ENV  # noqa: E402
from cirron.spool.stream import iter_chunks  # noqa: E402


def _export(spool_dir, out) -> int:
    cat = open_catalog([spool_dir], lambda _m: None)
    return write_parquet(iter_chunks(cat, cat.sessions, columnar=True), out)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cirron-parquet")]


def test_tables_written_on_threads_equal_those_written_on_one(factory: SpoolFactory, tmp_path, monkeypatch):
    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12, split=True, snapshots=i == 1)
    seen: set[str] = set()
    real = pq.ParquetWriter.write_table

    def spy(self, *a, **k):
        seen.add(threading.current_thread().name)
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    out = {}
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        seen.clear()
        assert _export(factory.spool_dir, tmp_path / threads) > 0
        assert not _writer_threads()
        if threads == "1":
            assert seen == {threading.current_thread().name}
        else:
            assert seen and all(name.startswith("cirron-parquet") for name in seen)
        out[threads] = {name: pq.read_table(tmp_path / threads / name) for name in PARQUET_FILES}
    for name in PARQUET_FILES:
        assert out["2"][name].equals(out["1"][name]), name
        assert out["2"][name].num_rows > 0, name


def test_a_failed_write_on_a_thread_is_the_exports_error(factory: SpoolFactory, tmp_path, monkeypatch):
    for i in range(2):
        factory.session(start_ns=BASE_NS + i * 10**12)
    monkeypatch.setenv(THREADS_ENV, "2")
    real = pq.ParquetWriter.write_table

    def failing(self, table, *a, **k):
        if "mark_id" in table.column_names:
            raise OSError(28, "No space left on device")
        return real(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        _export(factory.spool_dir, out)
    assert not _writer_threads()
    assert not out.exists() or list(out.iterdir()) == []


def _chunks_logging(spool_dir, log: list, asked=None):
    """The spool's chunks; ``("read", k)`` logged (and ``asked`` set) when chunk k >= 1 is asked for."""
    cat = open_catalog([spool_dir], lambda _m: None)
    for k, chunk in enumerate(iter_chunks(cat, cat.sessions, columnar=True)):
        yield chunk
        del chunk
        log.append(("read", k + 1))
        if asked is not None:
            asked.set()


def test_a_small_chunk_is_written_while_the_next_is_read(factory: SpoolFactory, tmp_path, monkeypatch):
    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12)
    monkeypatch.setenv(THREADS_ENV, "2")
    log: list = []
    next_asked = threading.Event()
    overlapped = []
    real = pq.ParquetWriter.write_table

    def spy(self, table, *a, **k):
        if not any(e[0] == "wrote" for e in log):  # the first chunk's writes wait for the next read
            overlapped.append(next_asked.wait(30))
        real(self, table, *a, **k)
        log.append(("wrote", table.num_rows))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    assert write_parquet(_chunks_logging(factory.spool_dir, log, next_asked), tmp_path / "out") > 0
    assert overlapped and all(overlapped)
    assert not _writer_threads()
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)
    monkeypatch.setenv(THREADS_ENV, "1")
    _export(factory.spool_dir, tmp_path / "one")
    for name in PARQUET_FILES:
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(tmp_path / "one" / name)), name


def test_a_big_chunk_is_written_before_the_next_is_read(factory: SpoolFactory, tmp_path, monkeypatch):
    from cirron.export import _parquet

    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12)
    monkeypatch.setenv(THREADS_ENV, "2")
    monkeypatch.setattr(_parquet, "WRITE_BEHIND_BYTES", 0)
    log: list = []
    real = pq.ParquetWriter.write_table

    def spy(self, table, *a, **k):
        real(self, table, *a, **k)
        log.append(("wrote", threading.current_thread().name))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    write_parquet(_chunks_logging(factory.spool_dir, log), tmp_path / "out")
    # one table after the other, on the calling thread: two writers at once would hold both buffers
    assert {e[1] for e in log if e[0] == "wrote"} == {threading.current_thread().name}
    order = "".join("r" if e[0] == "read" else "w" for e in log)
    assert re.fullmatch(r"(ww+r){3}", order), order  # each chunk's writes end before the next is read


def test_tables_being_written_at_once_stay_within_the_budget(factory: SpoolFactory, tmp_path, monkeypatch):
    from cirron.export import _parquet

    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12)
    monkeypatch.setenv(THREADS_ENV, "2")
    real = pq.ParquetWriter.write_table
    sizes: dict[str, int] = {}

    def measure(self, table, *a, **k):
        sizes[table.column_names[1]] = max(sizes.get(table.column_names[1], 0), table.nbytes)
        return real(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", measure)
    _export(factory.spool_dir, tmp_path / "sizes")
    (small, small_bytes), (big, big_bytes) = sorted(sizes.items(), key=lambda kv: kv[1])[-2:]
    assert small_bytes < big_bytes
    monkeypatch.setattr(_parquet, "WRITE_BEHIND_BYTES", small_bytes)  # the smaller table fits, the bigger not
    lock = threading.Lock()
    writing = [0, 0]  # bytes being written now, the most at once
    on_threads = [0, 0]  # the same for the writer threads alone
    threads: dict[str, set[str]] = {small: set(), big: set()}

    def spy(self, table, *a, **k):
        behind = threading.current_thread().name.startswith("cirron-parquet")
        with lock:
            writing[0] += table.nbytes
            writing[1] = max(writing[1], writing[0])
            if behind:
                on_threads[0] += table.nbytes
                on_threads[1] = max(on_threads[1], on_threads[0])
        threads.setdefault(table.column_names[1], set()).add(threading.current_thread().name)
        try:
            return real(self, table, *a, **k)
        finally:
            with lock:
                writing[0] -= table.nbytes
                if behind:
                    on_threads[0] -= table.nbytes

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    assert _export(factory.spool_dir, tmp_path / "out") > 0
    assert threads[big] == {threading.current_thread().name}  # too big alone: on the calling thread
    assert threads[small] and all(name.startswith("cirron-parquet") for name in threads[small])
    # the tables on threads never together pass the budget, and nothing is written beside the big one
    assert on_threads[1] <= small_bytes and writing[1] == big_bytes
    assert not _writer_threads()
    for name in PARQUET_FILES:
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(tmp_path / "sizes" / name)), name


@pytest.mark.parametrize("value", ["0123456789abcdef0123456789abcdef", "", "run-é-中", "x"])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_a_constant_text_column_equals_pyarrows_repeat(value: str, n: int):
    got = _repeated_text(pa, value, n)
    got.validate(full=True)
    assert got.type == pa.string() and got.equals(pa.repeat(pa.scalar(value, pa.string()), n))
