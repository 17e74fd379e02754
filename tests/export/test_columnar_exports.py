"""The fast columnar path of the exports (cirron.spool.columnar) writes exactly what the reference
path (record by record, cirron.spool.stream's chunks) writes: Parquet tables equal, CSV and JSON
byte for byte, on varied spools. Where the fast reader cannot read a session exactly, it says so
(``read_columns`` returns None) and the export reads that session the reference way."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from spool_factory import BASE_NS, MS, SpoolFactory, new_id  # noqa: E402

from cirron._schema import ROOT_SENTINEL  # noqa: E402
from cirron.export import PARQUET_FILES, write_csv, write_json, write_parquet  # noqa: E402
from cirron.spool import (  # noqa: E402
    arrays,
    columnar,
    list_batch_files,
    open_catalog,  # noqa: E402
    pieces,
)
from cirron.spool.stream import iter_chunks  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _export_all(spool: Path, out: Path, fast: bool) -> dict[str, int]:
    """Every columnar-capable export of ``spool`` into ``out``; returns how many sessions each
    path took (``columns`` / ``chunks``)."""
    cat = open_catalog([spool], lambda _m: None)
    kinds = {"columns": 0, "chunks": 0}

    def items(fields: str, count: bool = False, marks: bool = True):
        seen: set[str] = set()
        for item in iter_chunks(cat, cat.sessions, fields, columnar=fast, marks=marks):
            if count and item.session.id not in seen:
                seen.add(item.session.id)
                kinds["columns" if isinstance(item, columnar.SessionColumns) else "chunks"] += 1
            yield item

    write_parquet(items("export", count=True), out / "pq")
    write_parquet(items("export"), out / "pq-session", partition_by="session")
    write_csv(items("export", marks=False), out / "t.csv")  # the spans-only read of the CLI's CSV
    write_json(items("full"), out / "t.json")
    return kinds


def _tables(d: Path) -> dict[str, object]:
    return {n: pq.read_table(d / n) for n in PARQUET_FILES}


def _rows(table) -> list[dict]:
    """Rows with NaN made comparable (a NaN never equals itself) and timestamps as their int64
    nanoseconds (as Python datetimes they need pandas, which an in-process export before this
    test may have told pyarrow to do without)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.int64()))
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in table.to_pylist()]


def assert_same_exports(spool: Path, tmp: Path) -> dict[str, int]:
    ref, fast = tmp / "ref", tmp / "fast"
    _export_all(spool, ref, fast=False)
    kinds = _export_all(spool, fast, fast=True)
    for name, table in _tables(ref / "pq").items():
        other = pq.read_table(fast / "pq" / name)
        assert other.schema.equals(table.schema, check_metadata=True), name
        assert _rows(other) == _rows(table), name
    parts = sorted(p.relative_to(ref) for p in (ref / "pq-session").rglob("*.parquet"))
    assert parts == sorted(p.relative_to(fast) for p in (fast / "pq-session").rglob("*.parquet"))
    for part in parts:
        assert _rows(pq.read_table(fast / part)) == _rows(pq.read_table(ref / part)), part
    assert (fast / "t.csv").read_bytes() == (ref / "t.csv").read_bytes()
    assert (fast / "t.json").read_bytes() == (ref / "t.json").read_bytes()
    return kinds


def test_training_sessions_with_rewritten_roots_and_snapshots(factory: SpoolFactory, tmp_path):
    factory.session(epochs=3, split=True)  # the root is written open, then closed: a duplicate id
    factory.session(start_ns=BASE_NS + 10**9, snapshots=True)
    factory.session(start_ns=BASE_NS + 2 * 10**9, open_root=True)
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds == {"columns": 3, "chunks": 0}


def test_bench_spool(tmp_path, monkeypatch):
    from bench_cli import generate

    from cirron.export import _csv, _json

    for module in (_csv, _json):  # several slices per session, as on big spools
        monkeypatch.setattr(module, "_SLICE_ROWS", 3_000)
    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 20_000, 20_000, 8, n_sessions=2)
    kinds = assert_same_exports(spool, tmp_path / "out")
    assert kinds == {"columns": 2, "chunks": 0}
    cat = open_catalog([spool])
    cols = columnar.read_columns(cat.sessions[0])
    assert cols is not None and cols.spans.num_rows == 10_000 and cols.marks.num_rows == 10_000
    # every span below an epoch knows it; batches (and what they hold) know their own index
    names = cols.spans["name"].to_pylist()
    assert all(e >= 0 for e, n in zip(cols.span_epoch, names) if n != "cirron.session")
    assert all(b >= 0 for b, n in zip(cols.span_batch, names) if n in ("batch", "forward", "backward"))


def _odd_spool(factory: SpoolFactory) -> str:
    """Names and attrs that need escapes, odd mark values, duplicates, pretty-printed JSON, quoted
    integers and a truncated file, in one session; returns the id of its epoch span."""
    root = new_id()
    epoch = new_id()
    names = ["a,b", 'say "hi"', "two\nlines", "tab\there", "back\\slash", "ünïcode ✓", "cr\rhere", ""]
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9,
                          attrs={"sdk_version": "0.1.0", "run_id": "r,1", "lr": 1e-05, "x": 1.50}),
             factory.span("epoch", id=epoch, parent_id=root, index=0, dur_ns=10**8,
                          attrs={"nested": {"deep": [1, 2.5, {"z": None}]}, "neg": -0.0})]
    spans += [factory.span(n, parent_id=epoch, start_ns=BASE_NS + i * MS, attrs={"label": n, "big": 2**62, "huge": [2**64]})
              for i, n in enumerate(names)]
    spans.append(factory.span("batch", parent_id=epoch, index=7, attrs={"error": "ValueError: bad, very"}))
    spans.append(factory.span("step", parent_id=epoch, attrs={"interrupted": "SIGTERM"}))
    dup_mark = new_id()
    marks = [factory.mark(epoch, "loss", float("nan"), value_type="float"),
             factory.mark(epoch, "inf", float("inf"), value_type="float"),
             factory.mark(epoch, "count", 3),
             factory.mark(epoch, "flag", True),
             factory.mark(epoch, "text", "a \"quoted\", text"),
             factory.mark("root", "early", 1.0),
             factory.mark(epoch, "dup", 1.0, id=dup_mark)]
    for m in marks[:2]:  # strict JSON: non-finite floats as strings
        m["value"] = {"loss": "NaN", "inf": "Infinity"}[m["name"]]
    factory.write_raw(factory.batch_name(), json.dumps({
        "schema_version": 1, "sdk_version": "0.1.0", "batch_id": new_id(), "created_ns": BASE_NS,
        "session_id": root, "resource": {"pid": 1}, "spans": spans[:3], "marks": marks, "snapshots": []},
        indent=2).encode())  # pretty-printed: attrs' raw text holds whitespace
    later = [dict(spans[1], end_ns=None)] + spans[3:]  # an open copy of a closed span comes later: it loses
    factory.write_batch(later, [factory.mark(epoch, "dup", 9.0, id=dup_mark)], session_id=root)
    # integers written as strings by another implementation: read by the careful path
    quoted = factory.span("forward", parent_id=epoch, attrs={"q": 1})
    quoted["start_ns"] = str(quoted["start_ns"])
    factory.write_batch([quoted], session_id=root)
    factory.write_raw(factory.batch_name(), b'{"schema_version": 1, "session_id": "' + root.encode() + b'", "spa')
    return epoch


def test_odd_values_escapes_and_duplicates(factory: SpoolFactory, tmp_path):
    epoch = _odd_spool(factory)
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds == {"columns": 1, "chunks": 0}
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    cols = columnar.read_columns(cat.sessions[0])
    by_name = dict(zip(cols.marks["name"].to_pylist(), cols.marks["value"].to_pylist()))
    assert by_name["dup"] == 9.0 and by_name["early"] == 1.0
    assert cols.spans["id"].to_pylist().count(epoch) == 1


def test_careful_route_for_files_the_strict_decoder_refuses(factory: SpoolFactory):
    root = new_id()
    span = factory.span("cirron.session", id=root)
    span["start_ns"] = str(span["start_ns"])
    path = factory.write_batch([span], session_id=root)
    assert columnar._fast_file(path.read_bytes()) is None
    (bf,) = list_batch_files(factory.spool_dir)
    got = columnar.read_file(bf)
    assert got is not None and got[0]["start_ns"].to_pylist() == [BASE_NS]


def test_sessions_the_fast_reader_cannot_read_fall_back(factory: SpoolFactory, tmp_path):
    factory.session()
    odd = factory.session(start_ns=BASE_NS + 10**9)
    # a span name that is not a string: the columns (strings) cannot carry it exactly
    root_odd = odd["root"]
    factory.write_batch([factory.span(42, parent_id=root_odd)], session_id=root_odd)
    # records the index cannot place by their batch's header: the spool is rebuilt whole
    factory.write_batch([factory.span("x", parent_id=None)], [factory.mark(new_id(), "lost", 2.0)],
                        session_id=root_odd)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    by_id = {s.id: s for s in cat.sessions}
    assert not by_id[root_odd].streamable and columnar.read_columns(by_id[root_odd]) is None
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds["columns"] == 0 and kinds["chunks"] >= 2


def _id_kinds_spool(factory: SpoolFactory) -> dict[str, str]:
    """One session whose ids are of every kind the columnar reader keys differently: random hex,
    counters (all share their upper 64 bits), a grid of halves (both halves repeat), uppercase
    hex, and ids that are not 32 hex digits; each kind written twice (an open copy, then the
    closed one), with parents and marks of every kind (a spool whose records all reach the
    session: one with records that hang from nothing is not read as columns). Returns an id of each kind."""
    root = new_id()
    epoch = new_id()
    kinds = {"hex": new_id(), "counter": f"{7:032x}", "grid": f"{2:016x}{1:016x}", "upper": new_id().upper(),
             "text": "span-7", "short": "ab" * 15, "long": "cd" * 17}
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
             factory.span("epoch", id=epoch, parent_id=root, index=3)]
    spans += [factory.span(f"c{k}", id=f"{k:032x}", parent_id=epoch) for k in range(1, 6)]
    spans += [factory.span(f"g{a}{b}", id=f"{a:016x}{b:016x}", parent_id=epoch) for a in (1, 2) for b in (2, 3)]
    spans += [factory.span(f"k-{k}", id=i, parent_id=epoch, start_ns=BASE_NS + MS) for k, i in kinds.items()]
    # a child of each kind, and a batch step below the text id: epoch/batch reach through every kind
    spans += [factory.span(f"child-{k}", parent_id=i, start_ns=BASE_NS + 2 * MS) for k, i in kinds.items()]
    spans.append(factory.span("batch", id="batch-of-text", parent_id=kinds["text"], index=5))
    spans.append(factory.span("forward", parent_id="batch-of-text"))
    marks = [factory.mark(i, f"m-{k}", 1.0, id=f"mark-{k}" if k in ("text", "short") else None)
             for k, i in kinds.items()]
    marks.append(factory.mark(ROOT_SENTINEL, "on-root", 3.0))
    factory.write_batch([dict(s, end_ns=None) for s in spans[2:]], marks, session_id=root)
    factory.write_batch(spans, [dict(m, value=m["value"] + 10) for m in marks], session_id=root)
    factory.write_batch([dict(spans[-1], end_ns=None)], session_id=root)  # a later open copy loses
    return kinds


def test_ids_of_every_kind_dedupe_and_link_as_text(factory: SpoolFactory, tmp_path):
    kinds = _id_kinds_spool(factory)
    assert assert_same_exports(factory.spool_dir, tmp_path) == {"columns": 1, "chunks": 0}
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    cols = columnar.read_columns(cat.sessions[0])
    ids = cols.spans["id"].to_pylist()
    assert len(ids) == len(set(ids)) and set(kinds.values()) <= set(ids)
    assert all(e is not None for e in cols.spans["end_ns"].to_pylist())
    names = cols.spans["name"].to_pylist()
    parent = [names[p] if p >= 0 else None for p in cols.span_parent]
    by_name = dict(zip(names, zip(parent, cols.span_epoch.tolist(), cols.span_batch.tolist())))
    for k in kinds:
        assert by_name[f"child-{k}"] == (f"k-{k}", 3, -1), k
    assert by_name["forward"] == ("batch", 3, 5)
    assert by_name["g22"][0] == by_name["c5"][0] == "epoch"
    marks = dict(zip(cols.marks["name"].to_pylist(), cols.marks["value"].to_pylist()))
    assert marks == {**{f"m-{k}": 11.0 for k in kinds}, "on-root": 13.0}


@pytest.fixture
def big(monkeypatch):
    """Every session counts as too big to hold whole: read in pieces of a few records."""
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 10)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 3)
    monkeypatch.setattr(pieces, "_LOOKUP_BLOCK", 2)  # keys read from their files in blocks of two


def test_big_sessions_are_read_in_pieces(factory: SpoolFactory, big, tmp_path):
    factory.session(epochs=3, split=True)
    factory.session(start_ns=BASE_NS + 10**9, snapshots=True)
    factory.session(start_ns=BASE_NS + 2 * 10**9, open_root=True)
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds == {"columns": 3, "chunks": 0}
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    got = list(pieces.iter_pieces(cat.sessions[0]))
    assert len(got) > 1 and all(p.spans.num_rows + p.marks.num_rows + len(p.snapshots) for p in got)


def test_big_bench_session_in_pieces(tmp_path, big, monkeypatch):
    from bench_cli import generate

    monkeypatch.setattr(pieces, "PIECE_ROWS", 2_000)
    monkeypatch.setattr(arrays, "LOOKUP_ROWS", 999)  # lookups in several slices, each sorted
    monkeypatch.setattr(pieces, "_LOOKUP_BLOCK", 4_321)  # keys read from their files in several blocks
    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 20_000, 20_000, 8, n_sessions=2)
    kinds = assert_same_exports(spool, tmp_path / "out")
    assert kinds == {"columns": 2, "chunks": 0}
    cat = open_catalog([spool])
    got = list(pieces.iter_pieces(cat.sessions[0]))
    assert sum(p.spans.num_rows for p in got) == 10_000 and sum(p.marks.num_rows for p in got) == 10_000
    assert all(p.spans.num_rows < 10_000 for p in got)


def test_pieces_read_again_are_the_same_until_closed(factory: SpoolFactory, big, tmp_path, monkeypatch):
    """read_pieces: each read gives the same pieces (what the exports that read a session twice
    rely on); closing removes the spill."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    factory.session(epochs=3, split=True)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    with pieces.read_pieces(cat.sessions[0], session_parents=True) as got:
        first = [(p.spans, p.marks, p.span_parent.tolist(), p.mark_epoch.tolist()) for p in got]
        assert len(first) > 1
        for _ in range(2):
            again = [(p.spans, p.marks, p.span_parent.tolist(), p.mark_epoch.tolist()) for p in got]
            assert len(again) == len(first)
            for (s1, m1, p1, e1), (s2, m2, p2, e2) in zip(first, again):
                assert s1.equals(s2) and m1.equals(m2) and p1 == p2 and e1 == e2
        want = [(p.spans, p.marks) for p in pieces.iter_pieces(cat.sessions[0], session_parents=True)]
        assert all(s1.equals(s2) and m1.equals(m2) for (s1, m1, _p, _e), (s2, m2) in zip(first, want))
        assert list(tmp_path.glob("cirron-spill-*"))
    assert not list(tmp_path.glob("cirron-spill-*"))


def test_big_session_odd_values_escapes_and_duplicates(factory: SpoolFactory, big, tmp_path):
    epoch = _odd_spool(factory)
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds == {"columns": 1, "chunks": 0}
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    got = list(pieces.iter_pieces(cat.sessions[0]))
    assert len(got) > 1
    values = {n: v for p in got for n, v in zip(p.marks["name"].to_pylist(), p.values())}
    assert values["dup"] == 9.0 and values["count"] == 3 and values["flag"] is True
    assert [i for p in got for i in p.spans["id"].to_pylist()].count(epoch) == 1


def test_big_foreign_writer_spools(big, tmp_path):
    test_foreign_writer_spools(tmp_path)


def _twin(thread: int, counter: int) -> str:
    """An id of a foreign writer's kind: thread, then counter, 64 bits each (so (1, 2) and (2, 1)
    share their joined key ``hi ^ lo``)."""
    return f"{thread:016x}{counter:016x}"


def _xor_twins_spool(factory: SpoolFactory) -> str:
    """A session whose spans (1, 2) and (2, 1) are in different epochs, each with a child and a
    mark, and a span (1, 3) beside them (joined key 2, as theirs is 3). Returns its root id."""
    root, e1, e2 = new_id(), new_id(), new_id()
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
             factory.span("epoch", id=e1, parent_id=root, index=1),
             factory.span("epoch", id=e2, parent_id=root, index=2),
             factory.span("a", id=_twin(1, 2), parent_id=e1), factory.span("b", id=_twin(2, 1), parent_id=e2),
             factory.span("c", id=_twin(1, 3), parent_id=e2),
             factory.span("child-b", id=_twin(9, 9), parent_id=_twin(2, 1)),
             factory.span("child-a", id=_twin(8, 8), parent_id=_twin(1, 2))]
    marks = [factory.mark(_twin(2, 1), "on-b", 2.0), factory.mark(_twin(1, 2), "on-a", 1.0),
             factory.mark(_twin(9, 9), "on-child-b", 3.0)]
    factory.write_batch(spans[:4], marks[:1], session_id=root)
    factory.write_batch(spans[4:], marks[1:], session_id=root)
    return root


def test_big_sessions_key_ids_exactly_not_by_their_joined_key(factory: SpoolFactory, big, tmp_path, monkeypatch):
    from cirron.spool import index as spool_index

    monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 0)  # the index's light pass takes the session too
    monkeypatch.setattr(spool_index, "_LOOKUP_BLOCK", 3)
    root = _xor_twins_spool(factory)
    assert assert_same_exports(factory.spool_dir, tmp_path) == {"columns": 1, "chunks": 0}
    info = open_catalog([factory.spool_dir], lambda _m: None).sessions[0]
    got = list(pieces.iter_pieces(info, session_parents=True))
    assert len(got) > 1
    ids = [i for p in got for i in p.spans["id"].to_pylist()]
    names = [n for p in got for n in p.spans["name"].to_pylist()]
    parent = [r for p in got for r in p.span_parent.tolist()]
    epoch = [e for p in got for e in p.span_epoch.tolist()]
    assert sorted(zip(names, [names[r] if r >= 0 else None for r in parent], epoch), key=str) == sorted([
        ("cirron.session", None, -1), ("epoch", "cirron.session", 1), ("epoch", "cirron.session", 2),
        ("a", "epoch", 1), ("b", "epoch", 2), ("c", "epoch", 2), ("child-a", "a", 1), ("child-b", "b", 2)], key=str)
    marks = {n: e for p in got for n, e in zip(p.marks["name"].to_pylist(), p.mark_epoch.tolist())}
    assert marks == {"on-a": 1, "on-b": 2, "on-child-b": 2}
    with pytest.MonkeyPatch.context() as m:  # the same session read whole
        m.setattr(columnar, "MAX_SESSION_BYTES", 1 << 30)
        whole = columnar.read_columns(info)
    assert whole is not None and whole.spans["id"].to_pylist() == ids and ids.count(root) == 1
    assert whole.span_parent.tolist() == parent and whole.span_epoch.tolist() == epoch
    assert whole.marks["name"].to_pylist() == [n for p in got for n in p.marks["name"].to_pylist()]
    assert whole.mark_epoch.tolist() == [e for p in got for e in p.mark_epoch.tolist()]


def test_big_session_looks_up_in_the_whole_session_only_what_its_batch_file_lacks(factory: SpoolFactory, big,
                                                                                 tmp_path, monkeypatch):
    """Parents and marks' spans are found in their own batch file first (exactly, also where the
    file's spans share either half of their keys); the plan looks up in the whole session only
    those in another file. The records are the ones the reference reader gives."""
    root, epoch, a, b, c = (new_id() for _ in range(5))
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
             factory.span("epoch", id=epoch, parent_id=root, index=4),
             factory.span("a", id=a, parent_id=epoch),
             factory.span("batch", id=b, parent_id=a, index=7),  # its parent is in the first file
             factory.span("c", id=c, parent_id=b),
             factory.span("twin-1", id=_twin(5, 1), parent_id=epoch),
             factory.span("twin-2", id=_twin(5, 2), parent_id=_twin(5, 1)),
             factory.span("twin-3", id=_twin(6, 1), parent_id=_twin(5, 2))]  # both halves repeat in the file
    marks = [factory.mark(a, "on-a", 1.0), factory.mark(a, "on-a-later", 2.0), factory.mark(c, "on-c", 3.0),
             factory.mark(_twin(5, 2), "on-twin-2", 4.0), factory.mark(_twin(6, 1), "on-twin-3", 5.0)]
    factory.write_batch(spans[:3], marks[:1], session_id=root)
    factory.write_batch(spans[3:5], marks[1:3], session_id=root)
    factory.write_batch(spans[5:], marks[3:], session_id=root)
    looked_up: dict[str, int] = {}
    real = pieces._Keys.lookup

    def counted(self, index, name, rows):
        looked_up[name] = looked_up.get(name, 0) + (len(rows) if rows is not None else -1)
        return real(self, index, name, rows)

    monkeypatch.setattr(pieces._Keys, "lookup", counted)
    assert assert_same_exports(factory.spool_dir, tmp_path) == {"columns": 1, "chunks": 0}
    info = open_catalog([factory.spool_dir], lambda _m: None).sessions[0]
    looked_up.clear()
    got = list(pieces.iter_pieces(info, session_parents=True))
    assert looked_up == {"s_parent": 2, "m_target": 1}  # the parents of batch and twin-1; on-a-later's span
    names = [n for p in got for n in p.spans["name"].to_pylist()]
    parent = [names[r] if r >= 0 else None for p in got for r in p.span_parent.tolist()]
    steps = [(e, b) for p in got for e, b in zip(p.span_epoch.tolist(), p.span_batch.tolist())]
    assert list(zip(names, parent, steps)) == [
        ("cirron.session", None, (-1, -1)), ("epoch", "cirron.session", (4, -1)), ("a", "epoch", (4, -1)),
        ("batch", "a", (4, 7)), ("c", "batch", (4, 7)), ("twin-1", "epoch", (4, -1)), ("twin-2", "twin-1", (4, -1)),
        ("twin-3", "twin-2", (4, -1))]
    marks = {n: (e, b) for p in got for n, e, b in zip(p.marks["name"].to_pylist(), p.mark_epoch.tolist(),
                                                         p.mark_batch.tolist())}
    assert marks == {"on-a": (4, -1), "on-a-later": (4, -1), "on-c": (4, 7), "on-twin-2": (4, -1), "on-twin-3": (4, -1)}


@pytest.mark.parametrize("orphan", ["parent", "mark"])
def test_a_missing_span_is_not_the_span_that_shares_its_joined_key(big, tmp_path, monkeypatch, orphan):
    """A parent, or a mark's span, that the session does not hold, named by an id whose joined
    key is a real span's: the session does not hang together (also for the index's light pass
    over sessions of many files), and is read the reference way."""
    from cirron.spool import index as spool_index

    monkeypatch.setattr(spool_index, "LIGHT_PASS_BYTES", 0)
    monkeypatch.setattr(spool_index, "_LOOKUP_BLOCK", 1)
    factory = SpoolFactory(tmp_path / "project")
    try:
        root = new_id()
        spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
                 factory.span("real", id=_twin(3, 5), parent_id=root)]
        factory.write_batch(spans, [factory.mark(root, "on-root", 1.0)], session_id=root)
        if orphan == "parent":
            factory.write_batch([factory.span("dangling", parent_id=_twin(6, 0))], session_id=root)
        else:
            factory.write_batch([], [factory.mark(_twin(0, 6), "on-missing", 4.0)], session_id=root)
        info = open_catalog([factory.spool_dir], lambda _m: None).sessions[0]
        assert not info.streamable
        assert pieces.iter_pieces(info) is None and columnar.read_columns(info) is None
        assert assert_same_exports(factory.spool_dir, tmp_path / "out") == {"columns": 0, "chunks": 1}
    finally:
        factory.close()


def test_joined_index_finds_whole_keys():
    rng = np.random.default_rng(7)
    hi = rng.integers(0, 6, 400, dtype=np.uint64)  # joined keys repeat, and so do both halves
    lo = rng.integers(0, 6, 400, dtype=np.uint64)
    keep = arrays.last_of_each(hi, lo, None)
    hi, lo = hi[keep], lo[keep]
    q_hi = rng.integers(0, 7, 300, dtype=np.uint64)
    q_lo = rng.integers(0, 7, 300, dtype=np.uint64)
    index = arrays.JoinedIndex.of(hi ^ lo, lambda r: hi[r])
    got = index.lookup(q_hi ^ q_lo, lambda q: q_hi[q])
    want = arrays.PairIndex(hi, lo).lookup(q_hi, q_lo)
    assert got.tolist() == want.tolist() and (got >= 0).any() and (got < 0).any()


def test_big_session_the_columns_cannot_carry_falls_back(factory: SpoolFactory, big, tmp_path):
    root = factory.session()["root"]
    factory.write_batch([factory.span(42, parent_id=root)], session_id=root)  # a name that is not a string
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    assert cat.sessions[0].streamable and pieces.iter_pieces(cat.sessions[0]) is None
    kinds = assert_same_exports(factory.spool_dir, tmp_path)
    assert kinds == {"columns": 0, "chunks": 1}


def test_spill_is_removed(factory: SpoolFactory, big, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    factory.session(epochs=3)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    it = pieces.iter_pieces(cat.sessions[0])
    assert it is not None and list(tmp_path.glob("cirron-spill-*"))
    next(it)
    it.close()  # an export that stops early (an error writing) leaves no spill behind
    assert not list(tmp_path.glob("cirron-spill-*"))
    assert list(pieces.iter_pieces(cat.sessions[0]))
    assert not list(tmp_path.glob("cirron-spill-*"))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_id_keys_match_the_reference_keys(compiled, monkeypatch):
    import pyarrow as pa

    from cirron.spool.stream import _key

    if compiled and pieces._cbatch is None:
        pytest.skip("the compiled batch parser is not built")
    if not compiled:
        monkeypatch.setattr(pieces, "_cbatch", None)
    # bytes beside the hex digits ('/' ':' '@' 'G' '`' 'g') are not digits
    near = [new_id()[:31] + c for c in "/:@G`g"] + [c + new_id()[1:] for c in "/:@G`g"]
    ids = [new_id(), new_id().upper(), None, "root", "", "0x" + "a" * 30, "g" * 32, "é" * 16, "short",
           *near, new_id()[:16] + "\x00" + new_id()[:15]]
    for arr in (pa.array(ids, pa.string()), pa.array(ids, pa.string()).slice(2, 9)):
        hi, lo = pieces.id_keys(arr)
        for i, x in enumerate(arr.to_pylist()):
            assert (int(hi[i]), int(lo[i])) == ((0, 0) if x is None else _key(x)), x
    plain = [new_id(), new_id().upper(), new_id()]  # back to back: decoded in one call
    hi, lo = pieces.id_keys(pa.array(plain, pa.string()).slice(1))
    assert [(int(h), int(lo_)) for h, lo_ in zip(hi, lo)] == [_key(x) for x in plain[1:]]
    hi, lo = pieces.id_keys(pa.array([None, None], pa.string()))
    assert not hi.any() and not lo.any()


def test_exact_id_keys_compiled_and_numpy_agree(monkeypatch):
    """The exact keys of the column encoders (lowercase hex ids by their bits, the rest by text)
    are the same from the compiled decoder as from numpy, nulls and slices included."""
    import pyarrow as pa

    from cirron.spool import columnar

    if columnar._cbatch is None:
        pytest.skip("the compiled batch parser is not built")
    ids = [new_id(), new_id().upper(), None, "", "g" * 32, "é" * 16, new_id()[:31] + "G", new_id()[:31] + "/",
           "0x" + "a" * 30, new_id()]
    chunked = pa.chunked_array([pa.array(ids, pa.string()), pa.array(ids, pa.string()).slice(3, 5)])
    got = columnar._Ids.of(chunked)
    monkeypatch.setattr(columnar, "_cbatch", None)
    want = columnar._Ids.of(chunked)
    assert (got.good == want.good).all() and (got.hi == want.hi).all() and (got.lo == want.lo).all()
    assert got.good.tolist()[:3] == [True, False, False]


def test_foreign_writer_spools(tmp_path):
    """The vendor SDK's spool (no lock protocol, rootless runs): whatever the fast reader takes is
    exported as the reference path does, the rest falls back."""
    dst = tmp_path / "project"
    shutil.copytree(FIXTURES / "vendor" / "project", dst, symlinks=True)
    spool = dst / ".cirron" / "spool"
    kinds = assert_same_exports(spool, tmp_path)
    assert kinds["columns"] + kinds["chunks"] == len(open_catalog([spool], lambda _m: None).sessions) >= 4
