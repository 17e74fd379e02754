"""The spool index never changes an answer: every summary equals a fresh rebuild from the batch files."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory, new_id

from cirron.spool import reader as spool_reader
from cirron.spool.catalog import info_from_session
from cirron.spool.index import index_path, list_batches, summarize_spool
from cirron.spool.sessions import load_spool


def _norm(info) -> tuple:
    return (info.id, info.started_ns, info.ended_ns, info.last_ns, info.live, info.crashed, info.spans, info.marks,
            info.snapshots, sorted(f.name for f in info.files), info.sdk_version, info.resource, info.attrs,
            info.is_orphan)


def fresh(spool_dir: Path, files=None) -> list[tuple]:
    sp = load_spool(spool_dir, lambda _m: None, fields="summary", files=files)
    return [_norm(info_from_session(s, spool_dir)) for s in sp.sessions]


def indexed(spool_dir: Path, warnings: list | None = None):
    out = warnings if warnings is not None else []
    return summarize_spool(spool_dir, out.append)


def listed_fresh(spool_dir: Path, warnings: list | None = None) -> list[tuple]:
    """What ``cirron spool list`` showed before the index: one summary read of every batch file."""
    out = []
    for bf in spool_reader.list_batch_files(spool_dir, lambda _m: None):
        b = spool_reader.read_batch(bf, (warnings if warnings is not None else []).append, "summary")
        out.append((bf.name, b and b["session_id"], b is not None, *(
            (len(b["spans"]), len(b["marks"]), len(b["snapshots"])) if b else (None, None, None))))
    return out


def listed(spool_dir: Path, warnings: list | None = None) -> list[tuple]:
    batches, _warm = list_batches(spool_dir, (warnings if warnings is not None else []).append)
    return [(b.file.name, b.session_id, b.readable, b.spans, b.marks, b.snapshots) for b in batches]


def check(spool_dir: Path) -> None:
    summary = indexed(spool_dir)
    assert [_norm(s) for s in summary.sessions] == fresh(spool_dir, summary.files)
    assert [_norm(s) for s in summarize_spool(spool_dir, lambda _m: None, use_index=False).sessions] == \
        fresh(spool_dir, summary.files)
    w_indexed: list[str] = []
    w_fresh: list[str] = []
    assert listed(spool_dir, w_indexed) == listed_fresh(spool_dir, w_fresh)
    assert w_indexed == w_fresh


def test_warm_index_reads_no_batch_file(factory: SpoolFactory, monkeypatch):
    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**9, split=True)
    first = indexed(factory.spool_dir)
    assert not first.from_index and index_path(factory.spool_dir).is_file()

    def no_reads(*_a, **_k):
        raise AssertionError("a warm index must not read batch files")

    monkeypatch.setattr(spool_reader, "read_batch", no_reads)
    monkeypatch.setattr("cirron.spool.sessions.read_batch", no_reads)
    monkeypatch.setattr("cirron.spool.index._read_header", no_reads)
    second = indexed(factory.spool_dir)
    assert second.from_index
    assert [_norm(s) for s in second.sessions] == [_norm(s) for s in first.sessions]


def test_warm_listing_reads_no_batch_file_and_keeps_the_sessions_index(factory: SpoolFactory, monkeypatch):
    import cirron.spool.index as index_mod

    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**9, split=True)
    factory.write_raw(factory.batch_name(), b'{"schema_version": 1, "spans": [{"id": "a"')
    w1: list[str] = []
    first, warm = list_batches(factory.spool_dir, w1.append)
    assert not warm and index_path(factory.spool_dir).is_file()
    indexed(factory.spool_dir)  # the sessions' summaries join the listings in the same index

    def no_reads(*_a, **_k):
        raise AssertionError("a warm index must not read batch files")

    monkeypatch.setattr(spool_reader, "read_batch", no_reads)
    monkeypatch.setattr("cirron.spool.sessions.read_batch", no_reads)
    monkeypatch.setattr(index_mod, "_read_header", no_reads)
    monkeypatch.setattr(index_mod, "_build_group", no_reads)
    w2: list[str] = []
    second, warm = list_batches(factory.spool_dir, w2.append)
    assert warm and second == first and w2 == w1 and len(w1) == 1 and "not valid JSON" in w1[0]
    assert [b.readable for b in second] == [True] * 6 + [False]
    assert indexed(factory.spool_dir).from_index  # the listing's save kept the sessions' entries


def test_a_listing_is_read_again_once_its_file_changes(factory: SpoolFactory):
    factory.session(split=True)
    list_batches(factory.spool_dir, lambda _m: None)
    first = sorted(factory.spool_dir.glob("*.json"))[0]
    st = first.stat()
    text = first.read_bytes()
    # the same name, size, mtime and inode, no longer a JSON object
    first.write_bytes(b"[" + text[1:])
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not listed(factory.spool_dir)[0][2]
    check(factory.spool_dir)
    factory.write_batch([factory.span("late")])
    check(factory.spool_dir)


def test_warnings_are_replayed_from_the_index(factory: SpoolFactory):
    factory.session()
    factory.write_raw(factory.batch_name(), b'{"schema_version": 1, "spans": [{"id": "a"')
    w1: list[str] = []
    w2: list[str] = []
    indexed(factory.spool_dir, w1)
    assert indexed(factory.spool_dir, w2).from_index
    assert w1 == w2 and len(w1) == 1 and "not valid JSON" in w1[0]


def test_only_the_changed_session_is_rebuilt(factory: SpoolFactory, monkeypatch):
    a = factory.session(open_root=True)
    factory.session(start_ns=BASE_NS + 10**9)
    indexed(factory.spool_dir)
    # a's root closes in a later batch: a's group changes, b's does not.
    root = next(s for s in a["spans"] if s["id"] == a["root"])
    factory.write_batch([dict(root, end_ns=root["start_ns"] + 900 * MS)], session_id=a["root"])
    built = []
    import cirron.spool.index as index_mod

    real = index_mod._build_group
    monkeypatch.setattr(index_mod, "_build_group",
                        lambda d, files, fp, **kw: built.append(len(files)) or real(d, files, fp, **kw))
    indexed(factory.spool_dir)
    assert built == [2]
    check(factory.spool_dir)


@pytest.mark.parametrize("damage", [b"", b"not json", b"\x00\xff" * 10, b'{"version": 1}'])
def test_corrupt_or_foreign_index_is_rebuilt(factory: SpoolFactory, damage: bytes):
    factory.session()
    indexed(factory.spool_dir)
    index_path(factory.spool_dir).write_bytes(damage)
    check(factory.spool_dir)


def test_read_only_spool_still_answers(factory: SpoolFactory, monkeypatch):
    factory.session()
    import cirron.spool.index as index_mod

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(index_mod, "atomic_file", refuse)
    check(factory.spool_dir)
    assert not index_path(factory.spool_dir).exists()


def test_spans_crossing_sessions_fall_back_to_one_piece(factory: SpoolFactory):
    a = factory.session()
    b = factory.session(start_ns=BASE_NS + 10**9)
    # A span written under b's header whose parent is one of a's epochs, and a stray span.
    factory.write_batch([factory.span("late", parent_id=a["epochs"][0])], session_id=b["root"])
    factory.write_batch([factory.span("stray", parent_id=new_id())])
    summary = indexed(factory.spool_dir)
    assert summary.whole
    check(factory.spool_dir)
    assert {s.id: s.spans for s in summary.sessions}[a["root"]] == len(a["spans"]) + 1


def test_orphan_only_spool(factory: SpoolFactory):
    p = factory.span("step")
    factory.write_batch([p, factory.span("fwd", parent_id=p["id"])])
    check(factory.spool_dir)
    assert indexed(factory.spool_dir).sessions[0].is_orphan


def _random_session(factory: SpoolFactory, rnd: random.Random, t: int) -> dict:
    return factory.session(start_ns=t, epochs=rnd.randint(1, 3), open_root=rnd.random() < 0.2,
                           split=rnd.random() < 0.5)


@pytest.mark.parametrize("light", [False, True], ids=["reconstruction", "light-pass"])
def test_random_appends_deletions_and_truncation(factory: SpoolFactory, monkeypatch, light: bool):
    if light:  # every group through the light pass (and its compiled keys scan, where built)
        monkeypatch.setattr("cirron.spool.index.LIGHT_PASS_BYTES", 0)
    rnd = random.Random(1234)
    t = BASE_NS
    for _step in range(40):
        op = rnd.random()
        files = sorted(factory.spool_dir.glob("*.json"))
        if op < 0.45 or not files:
            t += 10**9
            _random_session(factory, rnd, t)
        elif op < 0.6:
            rnd.choice(files).unlink()
        elif op < 0.75:
            f = rnd.choice(files)
            data = f.read_bytes()
            f.write_bytes(data[: rnd.randint(0, max(0, len(data) - 1))])
        elif op < 0.85:
            f = rnd.choice(files)
            st = f.stat()
            f.write_bytes(f.read_bytes().replace(b'"forward"', b'"FORWARD"'))
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same name, size, mtime and inode
        elif op < 0.9:
            index_path(factory.spool_dir).write_bytes(os.urandom(rnd.randint(0, 64)))
        else:
            # marks on the root sentinel, in a batch of their own
            sid = rnd.choice([s.id for s in load_spool(factory.spool_dir, lambda _m: None).sessions] or [None])
            factory.write_batch(marks=[factory.mark("root", "lr", 0.1, ts_ns=t)], session_id=sid)
        check(factory.spool_dir)


def test_concurrent_writer(factory: SpoolFactory):
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        rnd = random.Random(7)
        t = BASE_NS
        try:
            for _ in range(40):
                if stop.is_set():
                    break
                t += 10**9
                _random_session(factory, rnd, t)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=writer)
    th.start()
    try:
        rounds = 0
        while th.is_alive() or rounds < 3:
            rounds += 1
            summary = indexed(factory.spool_dir)
            assert [_norm(s) for s in summary.sessions] == fresh(factory.spool_dir, summary.files)
            batches, _warm = list_batches(factory.spool_dir, lambda _m: None)
            for b in batches:  # each listing is of the file as it was at least when listed
                one = listed_fresh_file(b.file)
                assert one is None or one == (b.session_id, b.readable, b.spans, b.marks, b.snapshots)
            assert rounds < 500
    finally:
        stop.set()
        th.join(timeout=30)
    assert not th.is_alive() and not errors
    check(factory.spool_dir)


def listed_fresh_file(bf) -> tuple | None:
    """One file's listing read now (None if it went meanwhile: a writer may replace it)."""
    if not bf.path.exists():
        return None
    b = spool_reader.read_batch(bf, lambda _m: None, "summary")
    return (b and b["session_id"], b is not None, *(
        (len(b["spans"]), len(b["marks"]), len(b["snapshots"])) if b else (None, None, None)))


# --------------------------------------------------------------------------- the light pass


def _groups_both_ways(spool_dir: Path, monkeypatch) -> list[tuple]:
    """Each header group's entry from the light pass and from the reconstruction."""
    from cirron.spool import index as spool_index
    from cirron.spool.reader import list_batch_files

    files = list_batch_files(spool_dir, lambda _m: None)
    groups: dict = {}
    for bf in files:
        sid, _ok = spool_index._read_header(bf)
        groups.setdefault(sid, []).append(bf)
    out = []
    for members in groups.values():
        fp = spool_index._fingerprint((bf, spool_index._stat_key(bf)) for bf in members)
        light = spool_index._summarize_one_session(members, fp)
        monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 1 << 62)
        full = spool_index._build_group(spool_dir, members, fp)
        monkeypatch.undo()
        out.append((light, full))
    return out


def test_light_pass_summaries_equal_the_reconstructions(factory: SpoolFactory, monkeypatch):
    from spool_factory import hard_session

    hard_session(factory)
    factory.session(start_ns=BASE_NS + 10**12, split=True, snapshots=True)
    factory.session(start_ns=BASE_NS + 2 * 10**12, open_root=True)
    factory.write_raw(factory.batch_name(), b'{"schema_version": 1, "session_id": "' + b"ab" * 16 + b'", "spans": [')
    pairs = _groups_both_ways(factory.spool_dir, monkeypatch)
    assert len(pairs) == 4
    compared = 0
    for light, full in pairs:
        if light is None:  # the truncated file's group: no session to summarise
            assert not full.sessions
            continue
        assert msgspec_equal(light, full)
        compared += 1
    assert compared == 3


def msgspec_equal(a, b) -> bool:
    import msgspec

    return msgspec.msgpack.encode(a) == msgspec.msgpack.encode(b)


def test_light_pass_declines_what_it_cannot_summarise(factory: SpoolFactory, monkeypatch):

    a = factory.span("cirron.session", dur_ns=MS)
    b = factory.span("cirron.session", dur_ns=MS, start_ns=BASE_NS + 10 * MS)
    factory.write_batch([a, b], session_id=a["id"])  # two roots under one header
    stray = factory.span("step", parent_id="f" * 32)
    root = factory.span("cirron.session", dur_ns=MS)
    factory.write_batch([root, stray], session_id=root["id"])  # a span that reaches no root
    for light, full in _groups_both_ways(factory.spool_dir, monkeypatch):
        assert light is None
        assert len(full.sessions) != 1 or not full.self_contained  # the reconstruction's verdict agrees


def test_big_groups_are_indexed_by_the_light_pass(factory: SpoolFactory, monkeypatch):
    from cirron.spool import index as spool_index

    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12, split=True)
    expected = fresh(factory.spool_dir)
    calls = []
    real = spool_index._LightKeys.summarize
    monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 0)
    monkeypatch.setattr(spool_index._LightKeys, "summarize", lambda self, fp: calls.append(1) or real(self, fp))
    summary = summarize_spool(factory.spool_dir, lambda _m: None, use_index=False)
    assert len(calls) == 3
    assert sorted(_norm(s) for s in summary.sessions) == sorted(expected)


def _light_pass_calls(monkeypatch) -> list[int]:
    """One entry per group summarised by the light pass from now on."""
    from cirron.spool import index as spool_index

    calls: list[int] = []
    real = spool_index._LightKeys.summarize
    monkeypatch.setattr(spool_index._LightKeys, "summarize", lambda self, fp: calls.append(1) or real(self, fp))
    return calls


def test_sessions_of_a_few_files_are_keyed_by_the_light_pass(factory: SpoolFactory, monkeypatch):
    """A session of a few batch files worth :data:`LIGHT_PASS_BYTES` is summarised by the light
    pass as its files are scanned (each file read once), and the index is byte for byte the one
    the reconstruction of every group builds; a smaller session is rebuilt whole."""
    from cirron.spool import batchkeys
    from cirron.spool import index as spool_index

    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12, epochs=120, split=True)
    factory.session(start_ns=BASE_NS + 3 * 10**12, split=True)  # a few KB: below the threshold
    groups: dict[str, list] = {}
    for bf in spool_reader.list_batch_files(factory.spool_dir, lambda _m: None):
        groups.setdefault(spool_index._read_header(bf)[0], []).append(bf)
    big = {bf.name for files in groups.values() if sum(bf.size for bf in files) >= spool_index.LIGHT_PASS_BYTES
           for bf in files}
    assert [len(files) for files in groups.values()] == [2] * 4 and len(big) == 6

    calls = _light_pass_calls(monkeypatch)
    reads = _count_reads(monkeypatch)
    summary = summarize_spool(factory.spool_dir, lambda _m: None)
    assert [_norm(s) for s in summary.sessions] == fresh(factory.spool_dir, summary.files)
    light_index = index_path(factory.spool_dir).read_bytes()
    assert len(calls) == 3
    if batchkeys._cbatch is not None:  # the keys come with the header scan: one read each
        assert sorted(n for n in reads if n in big) == sorted(big)

    monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 1 << 62)  # every group reconstructed
    index_path(factory.spool_dir).unlink()
    calls.clear()
    summarize_spool(factory.spool_dir, lambda _m: None)
    assert not calls and index_path(factory.spool_dir).read_bytes() == light_index


def test_the_light_pass_spills_big_key_columns_to_disk_with_the_same_answer(factory: SpoolFactory, monkeypatch):
    """The hi halves of parents and targets stay in memory up to ``_SPILL_VALUES`` values, then go
    to a temporary file: both ways build the same index."""
    import tempfile

    from cirron.spool import index as spool_index

    for i in range(2):
        factory.session(start_ns=BASE_NS + i * 10**12, epochs=3, split=True, snapshots=True)
    monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 0)
    calls = _light_pass_calls(monkeypatch)
    built = []
    spills: list[str] = []
    real_temp = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spills.append(k.get("prefix", "")) or real_temp(*a, **k))
    for spill_values in (1 << 30, 1):
        monkeypatch.setattr(spool_index, "_SPILL_VALUES", spill_values)
        index_path(factory.spool_dir).unlink(missing_ok=True)
        summary = summarize_spool(factory.spool_dir, lambda _m: None)
        assert [_norm(s) for s in summary.sessions] == fresh(factory.spool_dir, summary.files)
        built.append((index_path(factory.spool_dir).read_bytes(), len(calls), len(spills)))
    (in_memory, calls_1, spills_1), (spilled, calls_2, spills_2) = built
    assert calls_1 == 2 and calls_2 == 4  # both ways through the light pass
    assert spills_1 == 0 and spills_2 == 6  # three spilled columns per session, only when asked
    assert spilled == in_memory


def _count_reads(monkeypatch) -> list[str]:
    """Names of the batch files read whole from now on (by the keys scans, the header scan or the decoder)."""
    from cirron.spool import batchkeys, reader
    from cirron.spool import index as spool_index

    reads: list[str] = []
    real_keys, real_header, real_batch = batchkeys._read, spool_index._read_header, reader.read_batch
    monkeypatch.setattr(batchkeys, "_read", lambda bf, *a: reads.append(bf.name) or real_keys(bf, *a))
    monkeypatch.setattr(spool_index, "_read_header", lambda bf: reads.append(bf.name) or real_header(bf))
    monkeypatch.setattr(reader, "read_batch", lambda bf, *a, **k: reads.append(bf.name) or real_batch(bf, *a, **k))
    return reads


def test_a_session_written_in_one_run_is_read_once(factory: SpoolFactory, monkeypatch):
    """Cold: the light pass of a session whose files come one after another is done while its
    files are scanned for their headers; each file is read once."""
    from cirron.spool import batchkeys

    if batchkeys._cbatch is None:
        pytest.skip("the C batch parser was not built")
    for i in range(3):
        factory.session(start_ns=BASE_NS + i * 10**12, split=True)
    monkeypatch.setattr("cirron.spool.index.LIGHT_PASS_BYTES", 0)
    expected = fresh(factory.spool_dir)
    reads = _count_reads(monkeypatch)
    summary = summarize_spool(factory.spool_dir, lambda _m: None)
    assert sorted(_norm(s) for s in summary.sessions) == sorted(expected)
    assert sorted(reads) == sorted(p.name for p in factory.spool_dir.glob("*.json"))


def test_interleaved_sessions_are_read_again_group_by_group(factory: SpoolFactory, monkeypatch):
    """Two sessions whose batch files alternate: no run holds a whole session, so each group is
    read again by itself; the answers and the index are those of the decoder's path."""
    from cirron.spool import batchkeys

    a = factory.span("cirron.session", dur_ns=900 * MS)
    b = factory.span("cirron.session", start_ns=BASE_NS + MS, dur_ns=900 * MS)
    for step in range(3):
        for root in (a, b):
            child = factory.span("step", parent_id=root["id"], index=step, start_ns=root["start_ns"] + (step + 1) * MS)
            spans = [child] + ([dict(root, end_ns=None)] if step == 0 else [root] if step == 2 else [])
            factory.write_batch(spans, [factory.mark(child["id"], "loss", 0.5, ts_ns=child["start_ns"])],
                                session_id=root["id"])
    monkeypatch.setattr("cirron.spool.index.LIGHT_PASS_BYTES", 0)
    expected = fresh(factory.spool_dir)
    reads = _count_reads(monkeypatch)
    summary = summarize_spool(factory.spool_dir, lambda _m: None)
    assert sorted(_norm(s) for s in summary.sessions) == sorted(expected)
    assert len(summary.sessions) == 2 and not summary.whole
    if batchkeys._cbatch is not None:
        assert len(reads) == 12  # scanned once, then read again by each group's light pass
        built = index_path(factory.spool_dir).read_bytes()
        monkeypatch.setattr(batchkeys, "_cbatch", None)
        index_path(factory.spool_dir).unlink()
        summarize_spool(factory.spool_dir, lambda _m: None)
        assert index_path(factory.spool_dir).read_bytes() == built


def _odd_spool(factory: SpoolFactory) -> None:
    """Sessions the compiled keys scan reads, and files it leaves to msgspec (ids that are not 32
    hex digits, a truncated file, a newer schema) in the same groups."""
    from spool_factory import hard_session

    hard_session(factory)
    factory.session(start_ns=BASE_NS + 10**12, split=True, snapshots=True)
    factory.session(start_ns=BASE_NS + 2 * 10**12, open_root=True)
    root = factory.span("cirron.session", id="session-" + new_id()[:8], start_ns=BASE_NS + 3 * 10**12, dur_ns=MS)
    factory.write_batch([root, factory.span("step", id="s-1", parent_id=root["id"], start_ns=BASE_NS + 3 * 10**12)],
                        [factory.mark("s-1", "loss", 0.5)], session_id=root["id"])
    name = factory.batch_name()
    good = factory.write_batch([factory.span("extra", parent_id=root["id"], start_ns=BASE_NS + 3 * 10**12)],
                               session_id=root["id"])
    factory.write_raw(name, good.read_bytes()[:-20])  # a truncated copy in the same group
    factory.write_batch([factory.span("late", parent_id=root["id"], start_ns=BASE_NS + 3 * 10**12)],
                        session_id=root["id"], schema_version=9)


def test_the_compiled_keys_scan_builds_the_index_msgspec_builds(factory: SpoolFactory, monkeypatch):
    """Every group through the light pass, with and without the compiled keys scan: the same
    index, byte for byte, and the same warnings; the compiled scan did read files."""
    from cirron.spool import batchkeys

    if batchkeys._cbatch is None:
        pytest.skip("the C batch parser was not built")
    _odd_spool(factory)
    monkeypatch.setattr("cirron.spool.index.LIGHT_PASS_BYTES", 0)
    built = {}
    compiled_reads = []
    real = batchkeys._compiled_keys
    monkeypatch.setattr(batchkeys, "_compiled_keys", lambda *a: compiled_reads.append(r := real(*a)) or r)
    for way, module in (("msgspec", None), ("compiled", batchkeys._cbatch)):
        monkeypatch.setattr(batchkeys, "_cbatch", module)
        index_path(factory.spool_dir).unlink(missing_ok=True)
        warnings: list[str] = []
        summary = summarize_spool(factory.spool_dir, warnings.append)
        assert [_norm(s) for s in summary.sessions] == fresh(factory.spool_dir, summary.files)
        built[way] = (index_path(factory.spool_dir).read_bytes(), warnings)
    assert built["compiled"] == built["msgspec"]
    assert any("newer than this reader" in w for w in built["compiled"][1])
    read = [r for r in compiled_reads if r is not None]
    assert len(read) >= 6 and len(read) < len(compiled_reads)  # some files left to msgspec


def test_without_the_compiled_modules_the_index_is_the_same(factory: SpoolFactory, tmp_path: Path):
    """``CIRRON_PURE_PYTHON=1`` (or a build without a compiler) builds the same index."""
    import subprocess
    import sys

    _odd_spool(factory)
    code = ("import sys\n"
            "from cirron.spool import batchkeys, index\n"
            "index.LIGHT_PASS_BYTES = 0\n"
            "print(batchkeys._cbatch is None)\n"
            "index.summarize_spool(sys.argv[1], lambda _m: None)\n")
    built = []
    for pure in ("1", "0"):
        index_path(factory.spool_dir).unlink(missing_ok=True)
        env = {**os.environ, "CIRRON_PURE_PYTHON": pure}
        out = subprocess.run([sys.executable, "-c", code, str(factory.spool_dir)], capture_output=True, text=True,
                             timeout=120, env=env, check=False)
        assert out.returncode == 0, out.stderr
        built.append((out.stdout.strip(), index_path(factory.spool_dir).read_bytes()))
    assert built[0][0] == "True"
    assert built[0][1] == built[1][1]
