"""An export's output file (cirron.export._common.open_output): written in blocks, whole blocks
around the page cache (O_DIRECT) once the file is big; whatever the mix of writes, flushes, seeks
and kernel copies, the file holds exactly what was written. The thresholds are lowered here so a
few hundred KB reach the O_DIRECT path."""

from __future__ import annotations

import fcntl
import os
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
from cli_helpers import run_cli  # noqa: E402
from spool_factory import SpoolFactory, hard_session, thread_mix  # noqa: E402

from cirron.export import _common  # noqa: E402
from cirron.export._common import append_file, open_output  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

BLOCK = 16 << 10


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "OUTPUT_BLOCK_BYTES", BLOCK)
    monkeypatch.setattr(_common, "DIRECT_AFTER_BYTES", 3 * BLOCK + 123)


def _takes_o_direct(directory: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = directory / ".probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def _direct(fh: object) -> bool:
    return bool(fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_DIRECT)  # type: ignore[attr-defined]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT is Linux's")
def test_big_file_goes_around_the_cache_and_holds_every_byte(tmp_path: Path, small_blocks: None):
    rnd = random.Random(7)
    want = bytearray()
    path = tmp_path / "out.bin"
    went_direct = False
    with open_output(path) as fh:
        while len(want) < 40 * BLOCK:
            data = rnd.randbytes(rnd.choice([1, 7, 4095, 4096, BLOCK - 1, BLOCK, 3 * BLOCK + 5]))
            assert fh.write(data if rnd.random() < 0.5 else memoryview(data)) == len(data)
            want += data
            assert fh.tell() == len(want)
            went_direct = went_direct or _direct(fh)
            if rnd.random() < 0.05:
                fh.flush()  # what is staged reaches the file, the usual way
                assert os.fstat(fh.fileno()).st_size == len(want)
    assert path.read_bytes() == bytes(want)
    assert went_direct == _takes_o_direct(tmp_path)


def test_a_kernel_copy_after_a_flush_lands_after_what_was_written(tmp_path: Path, small_blocks: None):
    """``append_file`` (the JSON export's marks and snapshots) flushes, then has the kernel copy
    another file in at the file's offset, then seeks to the end."""
    rnd = random.Random(8)
    head, tail, extra = rnd.randbytes(5 * BLOCK + 17), rnd.randbytes(9 * BLOCK + 3), rnd.randbytes(2 * BLOCK + 1)
    side = tmp_path / "side.bin"
    side.write_bytes(extra)
    with open_output(tmp_path / "out.bin") as fh, open(side, "rb") as src:
        fh.write(head)
        append_file(fh, src)
        fh.write(tail)
    assert (tmp_path / "out.bin").read_bytes() == head + extra + tail


def test_seek_and_truncate_take_back_what_was_written(tmp_path: Path, small_blocks: None):
    """The OTLP export of a big session takes back its spans when a later piece cannot be encoded."""
    rnd = random.Random(9)
    first, dropped, then = rnd.randbytes(7 * BLOCK + 11), rnd.randbytes(12 * BLOCK + 5), rnd.randbytes(6 * BLOCK)
    with open_output(tmp_path / "out.bin") as fh:
        fh.write(first)
        start = fh.tell()
        fh.write(dropped)
        assert fh.seek(start) == start
        assert fh.truncate() == start
        fh.write(then)
        assert fh.tell() == len(first) + len(then)
    assert (tmp_path / "out.bin").read_bytes() == first + then


def test_text_mode_with_a_flush_between(tmp_path: Path, small_blocks: None):
    rows = [f"{i},é{'x' * (i % 50)}\r\n" for i in range(5000)]
    with open_output(tmp_path / "out.csv", "w", newline="", encoding="utf-8") as fh:
        fh.write("id,name\r\n")
        fh.flush()
        fh.buffer.write(b"raw,bytes\r\n")
        for row in rows:
            fh.write(row)
    assert (tmp_path / "out.csv").read_bytes() == ("id,name\r\nraw,bytes\r\n" + "".join(rows)).encode()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_a_file_system_without_o_direct_is_written_as_usual(tmp_path: Path, small_blocks: None):
    import tempfile

    data = random.Random(10).randbytes(20 * BLOCK + 9)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        path = Path(shm) / "out.bin"
        with open_output(path) as fh:
            fh.write(data)
            direct_now = _direct(fh)
        assert path.read_bytes() == data
        assert direct_now == _takes_o_direct(Path(shm))


def test_exports_are_the_same_bytes_through_small_blocks(factory: SpoolFactory, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """Every single-file export writes the same bytes whether its file goes around the page cache
    after a few blocks or never does (CSV flushes its header, JSON copies its marks in)."""
    from bench_cli import generate

    hard_session(factory)
    factory.session(start_ns=10**18, split=True)
    thread_mix(factory)
    spool = factory.spool_dir
    generate(spool, 2_000, 2_000, 4, n_sessions=1)

    def exports(out: Path) -> dict[str, bytes]:
        out.mkdir()
        got = {}
        for fmt, name in (("csv", "t.csv"), ("json", "t.json"), ("otel", "t.otlp.json"), ("perfetto", "t.pf.json")):
            r = run_cli("traces", "export", "--format", fmt, "--output", str(out / name), "--spool", str(spool))
            assert r.exit_code == 0, r.output
            got[fmt] = (out / name).read_bytes()
        return got

    usual = exports(tmp_path / "usual")
    monkeypatch.setattr(_common, "OUTPUT_BLOCK_BYTES", 4096)
    monkeypatch.setattr(_common, "DIRECT_AFTER_BYTES", 4096 + 1)
    small = exports(tmp_path / "small")
    assert small == usual
    assert min(len(v) for v in usual.values()) > 20 * 4096  # each went well past the threshold
