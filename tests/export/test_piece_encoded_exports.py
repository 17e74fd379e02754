"""OTLP/JSON and Perfetto exports of sessions too big for whole columns, encoded piece by piece
(cirron.export._otlp_pieces, cirron.export._perfetto_pieces), write the same bytes as the whole
columns' encoders. The threshold is lowered so every session here counts as big and is read in
pieces of a few records: marks then hang from spans of other pieces (before and after theirs),
parents are in other pieces, request spans take attributes from marks of other pieces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
from spool_factory import BASE_NS, MS, SpoolFactory, hard_session, new_id, thread_mix  # noqa: E402

from cirron import export as ex  # noqa: E402
from cirron._schema import ROOT_SENTINEL  # noqa: E402
from cirron.export import _otlp_pieces, _perfetto, _perfetto_columns, _perfetto_pieces  # noqa: E402
from cirron.spool import columnar, pieces  # noqa: E402
from cirron.spool.catalog import open_catalog  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_column_encoded_exports import odd_session  # noqa: E402

#: perfetto-pure: the Arrow-kernel twin of the compiled encoder, whole and in pieces
FORMATS = ["otel", "perfetto", "perfetto-pure"]


@pytest.fixture(autouse=True)
def _encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    callspec = getattr(request.node, "callspec", None)
    fmt = callspec.params.get("fmt") if callspec else None
    if fmt == "perfetto-pure":
        monkeypatch.setattr(_perfetto_columns, "_cperfetto", None)
        monkeypatch.setattr(_perfetto_pieces, "_cperfetto", None)
    elif fmt == "perfetto" and _perfetto_columns._cperfetto is None:
        pytest.skip("the compiled perfetto encoder is not built")


def _write(fmt: str, items: list, path: Path, base: int | None) -> None:
    if fmt == "otel":
        ex.write_otlp_json(items, path)
    else:
        ex.write_perfetto(items, path, base_ns=base)


def _no_streamed_path(m: pytest.MonkeyPatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("a big session took the per-record streamed path")

    m.setattr(ex, "_streamed_spans", refuse)
    m.setattr(_perfetto, "_streamed_events", refuse)


def assert_same_in_pieces(spool: Path, tmp: Path, fmt: str, monkeypatch: pytest.MonkeyPatch,
                          piece_rows: int = 3, strict: bool = True) -> int:
    """The export of ``spool`` with every session read in pieces of ``piece_rows`` records equals
    the whole columns' export; returns how many sessions were encoded piece by piece (with
    ``strict``, every session is: none takes the per-record streamed path)."""
    cat = open_catalog([spool], lambda _m: None)
    infos = list(cat.sessions)
    base = min((s.started_ns for s in infos if type(s.started_ns) is int), default=None)
    _write(fmt, infos, tmp / "whole.json", base)
    used = []
    module, name = (_otlp_pieces, "write_spans_in_pieces") if fmt == "otel" else \
        (_perfetto_pieces, "session_events_in_pieces")
    real = getattr(module, name)

    def spy(*args, **kwargs):
        got = real(*args, **kwargs)
        used.append(got is not None)
        return got

    with monkeypatch.context() as m:
        m.setattr(columnar, "MAX_SESSION_BYTES", 10)
        m.setattr(pieces, "PIECE_ROWS", piece_rows)
        m.setattr(module, name, spy)
        if strict:
            _no_streamed_path(m)
        if fmt == "otel":
            m.setattr(_otlp_pieces, "prepare_spans", _checking_mark_rows(_otlp_pieces.prepare_spans))
        _write(fmt, infos, tmp / "pieces.json", base)
    whole = (tmp / "whole.json").read_bytes()
    assert (tmp / "pieces.json").read_bytes() == whole
    json.loads(whole)
    return sum(used)


def _checking_mark_rows(prepare_spans):
    """``prepare_spans`` that first checks the row the pieces give for each mark's span
    (``mark_span``) is the one the encoder would look up itself: the first span of the piece
    whose id is the mark's ``span_id``, exactly (-1: none)."""
    import pyarrow.compute as pc

    def checked(cols, open_end_ns):
        assert cols.mark_span is not None and len(cols.mark_span) == cols.marks.num_rows
        looked_up = pc.fill_null(pc.index_in(cols.marks["span_id"], value_set=cols.spans["id"].combine_chunks()), -1)
        assert cols.mark_span.tolist() == looked_up.to_pylist()
        return prepare_spans(cols, open_end_ns)

    return checked


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("piece_rows", [1, 3, 1000])
def test_hard_sessions(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                       piece_rows: int):
    hard_session(factory)
    factory.session(start_ns=BASE_NS + 10**12, split=True)
    thread_mix(factory)
    assert assert_same_in_pieces(factory.spool_dir, tmp_path, fmt, monkeypatch, piece_rows) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_values_escapes_and_attrs(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      fmt: str):
    odd_session(factory)
    assert assert_same_in_pieces(factory.spool_dir, tmp_path, fmt, monkeypatch) == 1


def _far_marks_session(f: SpoolFactory) -> None:
    """Marks written long before and long after their span, on the sentinel and on the root from
    every batch; a request span whose token counts come from far batches; deep parents in other
    pieces; several ranks and threads."""
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=10**9, attrs={"rank": 0})
    rid = root["id"]
    req = f.span("request", parent_id=rid, start_ns=BASE_NS + 5 * MS, dur_ns=MS, attrs={"model": "m"})
    f.write_batch([dict(root, end_ns=None)], [f.mark(req["id"], "prompt_tokens", 4, ts_ns=BASE_NS + 5 * MS)],
                  session_id=rid)
    parent = rid
    for i in range(12):
        s = f.span("step", parent_id=parent, index=i, start_ns=BASE_NS + (10 + i) * MS, dur_ns=(50 - i) * MS,
                   thread_id=i % 2, rank=i % 3)
        f.write_batch([s], [f.mark(ROOT_SENTINEL, "loss", float(i), ts_ns=BASE_NS + (11 + i) * MS),
                            f.mark(rid, "lr", i * 0.5, ts_ns=BASE_NS + (12 + i) * MS),
                            f.mark(req["id"] if i == 6 else s["id"], "completion_tokens" if i == 6 else "x", i)],
                      session_id=rid)
        parent = s["id"] if i % 4 else rid
    f.write_batch([req, root], [f.mark(req["id"], "early-late", "text")], session_id=rid)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("piece_rows", [1, 4])
def test_marks_and_parents_in_other_pieces(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fmt: str, piece_rows: int):
    _far_marks_session(factory)
    assert assert_same_in_pieces(factory.spool_dir, tmp_path, fmt, monkeypatch, piece_rows) == 1


def _first_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the sessions whose pieces the OTLP export reads a first time for their keys."""
    reads: list[int] = []
    real = _otlp_pieces._read_keys

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_otlp_pieces, "_read_keys", counted)
    return reads


@pytest.mark.parametrize("piece_rows", [1, 4])
def test_marks_on_later_pieces_are_carried_without_a_first_read(factory: SpoolFactory, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, piece_rows: int):
    """Marks on the sentinel (the root closes in the last batch), on the root and on a request
    span written after them go to their span's piece from the pieces' own rows: the pieces are
    read once, and the bytes are the whole session's."""
    _far_marks_session(factory)
    reads = _first_reads(monkeypatch)
    assert assert_same_in_pieces(factory.spool_dir, tmp_path, "otel", monkeypatch, piece_rows) == 1
    assert reads == []


def test_a_mark_on_an_earlier_piece_is_found_by_a_first_read(factory: SpoolFactory, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """A mark written after its span's piece: that piece is written by then, so the marks are
    routed by a first read of the pieces (and the bytes are still the whole session's)."""
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=10**8)
    rid = root["id"]
    early = f.span("early", parent_id=rid, start_ns=BASE_NS + MS)
    f.write_batch([root, early], [f.mark(early["id"], "own", 1.0)], session_id=rid)
    for i in range(4):
        s = f.span("step", parent_id=rid, index=i, start_ns=BASE_NS + (2 + i) * MS)
        f.write_batch([s], [f.mark(s["id"], "x", float(i))], session_id=rid)
    f.write_batch([], [f.mark(early["id"], "late", 2.0)], session_id=rid)
    reads = _first_reads(monkeypatch)
    assert assert_same_in_pieces(f.spool_dir, tmp_path, "otel", monkeypatch, piece_rows=2) == 1
    assert reads == [1]


def test_uppercase_ids_are_joined_by_a_first_read(factory: SpoolFactory, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """Ids in uppercase hex, spelled alike everywhere: the pieces' keys would also join another
    spelling of them, so the marks are routed by exact keys (a first read), same bytes."""
    f = factory
    root = f.span("cirron.session", id=new_id().upper(), start_ns=BASE_NS, dur_ns=10**8)
    rid = root["id"]
    for i in range(4):
        s = f.span("step", id=new_id().upper(), parent_id=rid, index=i, start_ns=BASE_NS + (2 + i) * MS)
        f.write_batch([s], [f.mark(s["id"], "x", float(i)), f.mark(ROOT_SENTINEL, "top", 1.0)], session_id=rid)
    f.write_batch([root], [], session_id=rid)
    reads = _first_reads(monkeypatch)
    assert assert_same_in_pieces(f.spool_dir, tmp_path, "otel", monkeypatch, piece_rows=2) == 1
    assert reads == [1]


def test_pieces_give_each_marks_span_root_and_bounds(factory: SpoolFactory, monkeypatch: pytest.MonkeyPatch):
    """What the pieces keep for a caller that routes marks itself: the row of each mark's span
    among the session's spans (-1: the sentinel), the root's row (its closed record, the winner,
    is written last), whether ids are exact, and where each piece ends."""
    import pyarrow as pa

    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=10**8)
    rid = root["id"]
    steps = [f.span("step", parent_id=rid, index=i, start_ns=BASE_NS + (2 + i) * MS) for i in range(3)]
    f.write_batch([dict(root, end_ns=None)], [f.mark(ROOT_SENTINEL, "top", 0.0)], session_id=rid)
    for s in steps:
        f.write_batch([s], [f.mark(s["id"], "x", 1.0), f.mark(steps[-1]["id"], "ahead", 2.0)], session_id=rid)
    f.write_batch([root], [], session_id=rid)
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 10)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 2)
    (info,) = open_catalog([f.spool_dir], lambda _m: None).sessions
    with pieces.read_pieces(info, session_parents=True, mark_spans=True) as got:
        span_ids = pa.concat_tables([p.spans for p in got])["id"].to_pylist()
        mark_targets = pa.concat_tables([p.marks for p in got])["span_id"].to_pylist()
        assert span_ids == [s["id"] for s in steps] + [rid]  # the open root lost to the closed one
        assert got.mark_span.tolist() == [span_ids.index(t) if t in span_ids else -1 for t in mark_targets]
        assert got.mark_span.tolist()[0] == -1 and got.root == 3 and got.exact_ids
        span_end, mark_end = got.bounds()
        sizes = [(p.spans.num_rows, p.marks.num_rows) for p in got]
        nonempty = [(int(b - a), int(d - c)) for a, b, c, d in zip([0, *span_end[:-1]], span_end, [0, *mark_end[:-1]],
                                                                  mark_end) if b > a or d > c]
        assert nonempty == sizes and len(sizes) > 1
    with pieces.read_pieces(info) as plain:
        assert plain.mark_span is None
    f.write_batch([f.span("odd", id=new_id().upper(), parent_id=rid)], [], session_id=rid)
    (info,) = open_catalog([f.spool_dir], lambda _m: None).sessions
    with pieces.read_pieces(info) as upper:
        assert not upper.exact_ids


def test_session_without_root_gets_placeholders_last(factory: SpoolFactory, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """Marks on the sentinel of a session without root hang from a placeholder span after all the others.
    The index never streams such a session (it is the ``(orphan spans)`` one), so its pieces are
    read here directly, under the batches' session id (which makes the sentinel marks its own)."""
    import dataclasses
    import io

    from cirron.export._otlp_columns import write_spans

    f = factory
    sid = new_id()
    spans = [f.span("work", start_ns=BASE_NS + i * MS) for i in range(5)]
    for i, s in enumerate(spans):
        f.write_batch([s], [f.mark(ROOT_SENTINEL, "orphan", float(i)), f.mark(s["id"], "own", 1.0),
                            f.mark("not-a-span", "lost", 2.0)], session_id=sid)
    (info,) = open_catalog([f.spool_dir], lambda _m: None).sessions
    info = dataclasses.replace(info, id=sid, streamable=True)
    whole = io.BytesIO()
    n = write_spans(whole, columnar._read(info, True), None)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 2)
    got = io.BytesIO()
    assert _otlp_pieces.write_spans_in_pieces(got, info, None) == n == 6
    assert got.getvalue() == whole.getvalue()
    out = json.loads(b"[" + got.getvalue() + b"]")
    assert [s["name"] for s in out] == ["work"] * 5 + ["(span not written)"]
    assert [e["name"] for e in out[-1]["events"]] == ["orphan"] * 5  # a mark on no span of the session is dropped


@pytest.mark.parametrize("fmt", FORMATS)
def test_bench_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str):
    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 20_000, 20_000, 8, n_sessions=2)
    assert assert_same_in_pieces(spool, tmp_path, fmt, monkeypatch, piece_rows=2_000) == 2


def test_a_parent_named_by_another_spelling_takes_the_per_record_path(factory: SpoolFactory, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """A child names its parent in uppercase: the pieces find the parent (its key), the whole
    session's encoder would too, but derives the parent's span id from the text. The piece path
    declines before writing anything and the export still equals the whole session's."""
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=10**8)
    rid = root["id"]
    child = f.span("child", parent_id=rid.upper(), start_ns=BASE_NS + MS, dur_ns=MS)
    f.write_batch([child], [f.mark(child["id"], "m", 1.0)], session_id=rid)
    f.write_batch([root], [], session_id=rid)
    cat = open_catalog([f.spool_dir], lambda _m: None)
    ex.write_otlp_json(list(cat.sessions), tmp_path / "whole.json")
    with monkeypatch.context() as m:
        m.setattr(columnar, "MAX_SESSION_BYTES", 10)
        m.setattr(pieces, "PIECE_ROWS", 1)
        assert _otlp_pieces.write_spans_in_pieces(open(tmp_path / "x", "wb+"), cat.sessions[0], None) is None
        ex.write_otlp_json(list(cat.sessions), tmp_path / "pieces.json")
    assert (tmp_path / "pieces.json").read_bytes() == (tmp_path / "whole.json").read_bytes()


def _tiny_pieces_spilled_to(spill: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every session is read in pieces of two records, spilled under ``spill``."""
    import tempfile

    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 10)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 2)
    return spill


def test_temporary_files_are_removed_on_error(factory: SpoolFactory, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    hard_session(factory)
    spill = _tiny_pieces_spilled_to(tmp_path / "spill", monkeypatch)

    def boom(*_a, **_k):
        assert any(spill.iterdir())  # the pieces are spilled by now
        raise KeyboardInterrupt

    monkeypatch.setattr(_otlp_pieces, "prepare_spans", boom)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    with pytest.raises(KeyboardInterrupt):
        ex.write_otlp_json(list(cat.sessions), tmp_path / "out.json")
    assert not any(spill.iterdir())
    assert not (tmp_path / "out.json").exists()


def test_temporary_files_are_removed_when_perfetto_is_interrupted(factory: SpoolFactory, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C after the first events were written: the spill goes, no output is left."""
    hard_session(factory)
    thread_mix(factory)
    spill = _tiny_pieces_spilled_to(tmp_path / "spill", monkeypatch)
    real = _perfetto_pieces._run_events
    seen = []

    def interrupted(*args, **kwargs):
        for ev in real(*args, **kwargs):
            seen.append(ev)
            yield ev
            assert any(spill.iterdir())
            raise KeyboardInterrupt

    monkeypatch.setattr(_perfetto_pieces, "_run_events", interrupted)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    with pytest.raises(KeyboardInterrupt):
        ex.write_perfetto(list(cat.sessions), tmp_path / "out.json", base_ns=BASE_NS)
    assert seen and not any(spill.iterdir())
    assert not (tmp_path / "out.json").exists()


def test_span_index_finds_ids_whose_joined_keys_collide_and_refuses_repeated_ids():
    import numpy as np

    from cirron.export._otlp_columns import CannotEncode
    from cirron.export._piecewise import SpanIndex

    hi = np.array([1, 2, 7, 3], dtype=np.uint64)
    lo = np.array([2, 1, 0, 5], dtype=np.uint64)  # (1, 2) and (2, 1): both join to 3
    index = SpanIndex()
    index.add(hi[:2], lo[:2])
    index.add(hi[2:], lo[2:])
    index.seal()
    q_hi = np.array([2, 1, 6, 3, 0], dtype=np.uint64)
    q_lo = np.array([1, 2, 0, 5, 3], dtype=np.uint64)  # (6, 0) and (0, 3) are nobody's
    valid = np.array([True, True, True, False, True])
    assert index.lookup(q_hi, q_lo, valid).tolist() == [1, 0, -1, -1, -1]

    twice = SpanIndex()
    twice.add(np.array([4, 4], dtype=np.uint64), np.array([9, 9], dtype=np.uint64))
    with pytest.raises(CannotEncode):
        twice.seal()


def _shuffled_threads_session(f: SpoolFactory, seed: int) -> None:
    """Nested steps on three threads of two ranks, overlapping requests on one, open spans, a
    zero-length one; written in batches of random sizes in a random order (children and parents
    far apart, late spans first), marks on random spans."""
    import random

    rnd = random.Random(seed)
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=None, attrs={"rank": 0})
    rid = root["id"]
    spans = [root]
    for thread, rank in ((11, 0), (12, 0), (21, 1)):
        t = BASE_NS + thread * MS
        for e in range(3):
            epoch = f.span("epoch", parent_id=rid, index=e, start_ns=t, dur_ns=None if (e, thread) == (2, 12) else 90 * MS,
                           thread_id=thread, rank=rank)
            spans.append(epoch)
            for b in range(4):
                batch = f.span("batch", parent_id=epoch["id"], index=b, start_ns=t + (1 + 20 * b) * MS, dur_ns=15 * MS,
                               thread_id=thread, rank=rank, attrs={"size": b})
                fwd = f.span("forward", parent_id=batch["id"], start_ns=t + (2 + 20 * b) * MS, dur_ns=5 * MS,
                             thread_id=thread, rank=rank)
                bwd = f.span("backward", parent_id=batch["id"], start_ns=t + (7 + 20 * b) * MS,
                             dur_ns=0 if b == 3 else 6 * MS, thread_id=thread, rank=rank)
                spans += [batch, fwd, bwd]
            t += 100 * MS
    t = BASE_NS + 400 * MS
    spans += [f.span("request", parent_id=rid, start_ns=t + i * 1000, dur_ns=5000 - i * 300, thread_id=31,
                     attrs={"model": f"m{i % 2}"}) for i in range(8)]  # overlapping, not nesting
    marks = [f.mark(rnd.choice(spans)["id"], rnd.choice(["loss", "lr", "tokens"]), rnd.random(),
                    ts_ns=BASE_NS + rnd.randrange(500 * MS)) for _ in range(60)]
    rnd.shuffle(spans)
    while spans:
        k = rnd.randint(1, 9)
        f.write_batch(spans[:k], [marks.pop() for _ in range(min(len(marks), rnd.randint(0, 6)))], session_id=rid)
        spans = spans[k:]


@pytest.mark.parametrize("fmt", ["perfetto", "perfetto-pure"])
@pytest.mark.parametrize("run_events", [1, 7, 50])
@pytest.mark.parametrize("piece_rows", [2, 25])
def test_events_cut_in_small_runs(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                                  run_events: int, piece_rows: int):
    """Runs of a few events, each of spans from several pieces (a range of one piece's rows, or
    rows here and there), give the whole session's bytes: out-of-order spans, open spans, several
    threads and ranks, overlapping spans."""
    _shuffled_threads_session(factory, seed=run_events * 100 + piece_rows)
    hard_session(factory)
    thread_mix(factory)
    monkeypatch.setattr(_perfetto_pieces, "RUN_EVENTS", run_events)
    assert assert_same_in_pieces(factory.spool_dir, tmp_path, fmt, monkeypatch, piece_rows) == 3


def test_run_spans_are_read_from_the_pieces_files(tmp_path: Path):
    """A run's spans come from the pieces' files in session order: a range of a piece is a slice,
    scattered rows are taken, across pieces."""
    import numpy as np
    import pyarrow as pa

    plan = _perfetto_pieces._Plan(tmp_path)
    for first, n in ((0, 4), (4, 3), (7, 5)):
        plan.add_spans(pa.table({"id": [f"s{i}" for i in range(first, first + n)], "n": list(range(first, first + n))}))
    for rows in ([], [0], [1, 2, 3], [3, 4], [0, 2, 6, 7, 11], list(range(12)), [5, 9, 10]):
        got = plan.spans(np.array(rows, dtype=np.int32))
        assert got["n"].to_pylist() == rows
        assert got["id"].to_pylist() == [f"s{i}" for i in rows]


@pytest.mark.parametrize("spread", ["near", "far"])
def test_rows_held_by_a_run(spread: str):
    """A run's distinct span rows and each event's place among them, by the map of the rows'
    range or by sorting when they are far apart; text events keep their row."""
    import numpy as np

    rng = np.random.default_rng(3)
    width = 300 if spread == "near" else 10**7
    rows = rng.integers(5000, 5000 + width, 200).astype(np.int32)
    rows = np.concatenate([rows, rows[:50]])  # a span's begin and end in one run
    is_text = np.zeros(len(rows), dtype=bool)
    is_text[[0, 7, 199]] = True  # texts: the row is a place in the texts
    rows[is_text] = [2, 0, 1]
    held, local = _perfetto_pieces._rows_held(rows, is_text)
    want = np.unique(rows[~is_text])
    assert held.tolist() == want.tolist()
    assert local[~is_text].tolist() == np.searchsorted(want, rows[~is_text]).tolist()
    assert local[is_text].tolist() == [2, 0, 1]


def test_a_piece_the_encoder_declines_after_others_were_written_leaves_nothing(
        factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pieces are written on a thread while the next is prepared: when the encoder declines a
    later piece, the pieces being written are waited for, then all their text is taken back."""
    from cirron.export._otlp_columns import CannotEncode

    hard_session(factory)
    (info,) = open_catalog([factory.spool_dir], lambda _m: None).sessions
    real = _otlp_pieces.prepare_spans
    calls = []

    def declines_the_third(cols, open_end_ns):
        calls.append(cols.spans.num_rows)
        if len(calls) == 3:
            raise CannotEncode("test")
        return real(cols, open_end_ns)

    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 10)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 2)
    monkeypatch.setattr(_otlp_pieces, "prepare_spans", declines_the_third)
    with open(tmp_path / "out", "wb+") as fh:
        fh.write(b"head")
        assert _otlp_pieces.write_spans_in_pieces(fh, info, None) is None
        assert fh.tell() == 4
    assert len(calls) == 3 and sum(calls[:2]) > 0
    assert (tmp_path / "out").read_bytes() == b"head"
