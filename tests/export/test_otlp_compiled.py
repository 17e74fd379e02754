"""The compiled OTLP/JSON span encoder (``cirron/export/_cotlp.c``) writes the same bytes as its
Arrow-kernel twin in ``cirron.export._otlp_columns`` and as the per-record encoder
(``cirron.export._otlp``), on whole sessions and on any subset of a session's spans with the
marks that target them (one piece of a big session); without the module the twin runs."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow")
import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
from spool_factory import SpoolFactory, hard_session, thread_mix  # noqa: E402
from test_column_encoded_exports import assert_same, odd_session, rootless_session  # noqa: E402

from cirron.export import _otlp_columns  # noqa: E402
from cirron.export._otlp import derive_span_id  # noqa: E402
from cirron.spool import columnar  # noqa: E402
from cirron.spool.catalog import open_catalog  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture
def compiled() -> Any:
    return pytest.importorskip("cirron.export._cotlp", reason="the C OTLP encoder was not built")


def _sessions(spool: Path) -> list[tuple[Any, Any]]:
    cat = open_catalog([spool], lambda _m: None)
    return [(info, columnar._read(info, True)) for info in cat.sessions]


def _encode(cols: Any, open_end_ns: int | None, module: Any) -> tuple[bytes, int]:
    out = io.BytesIO()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_otlp_columns, "_cotlp", module)
        n = _otlp_columns.write_spans(out, cols, open_end_ns)
    return out.getvalue(), n


def _assert_twins(spool: Path, compiled: Any) -> int:
    """Compiled and twin agree on every session of ``spool``; returns how many spans."""
    total = 0
    for info, cols in _sessions(spool):
        fast, n = _encode(cols, info.last_ns, compiled)
        twin, n_twin = _encode(cols, info.last_ns, None)
        assert fast == twin and n == n_twin
        total += n
    return total


def _hard_spool(factory: SpoolFactory) -> Path:
    hard_session(factory)
    thread_mix(factory)
    odd_session(factory)
    factory.session(split=True)
    return factory.spool_dir


def test_compiled_equals_twin_on_hard_sessions(factory: SpoolFactory, compiled: Any):
    assert _assert_twins(_hard_spool(factory), compiled) > 20


@pytest.mark.parametrize("slice_spans", [1, 3, 1000])
def test_compiled_equals_twin_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled: Any,
                                        slice_spans: int):
    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 3_000, 3_000, 6, n_sessions=2)
    monkeypatch.setattr(_otlp_columns, "SLICE_SPANS", slice_spans)
    assert _assert_twins(spool, compiled) == 3_000


def test_rootless_session_places_its_marks_on_placeholders(factory: SpoolFactory, compiled: Any):
    sid = rootless_session(factory)
    (info,) = open_catalog([factory.spool_dir], lambda _m: None).sessions
    cols = columnar._read(dataclasses.replace(info, id=sid), True)
    fast, n = _encode(cols, info.last_ns, compiled)
    assert (fast, n) == _encode(cols, info.last_ns, None) and n == 2


def _piece(cols: Any, keep: np.ndarray) -> Any:
    """The columns of spans ``keep`` and of the marks targeting them, as one piece of a big
    session holds them: parents outside the piece are -1."""
    rows = np.flatnonzero(keep)
    new_row = np.full(len(keep), -1, dtype=np.int64)
    new_row[rows] = np.arange(len(rows))
    parent = np.asarray(cols.span_parent, dtype=np.int64)[rows]
    parent = np.where(parent >= 0, new_row[np.maximum(parent, 0)], -1)
    spans = cols.spans.take(pa.array(rows))
    ids = set(spans["id"].to_pylist())
    mark_keep = np.array([s in ids for s in cols.marks["span_id"].to_pylist()], dtype=bool)
    marks = cols.marks.filter(pa.array(mark_keep))
    values = None if cols.mark_values is None else [v for v, k in zip(cols.mark_values, mark_keep) if k]
    mark_span = cols.mark_span[mark_keep]
    mark_span = np.where(mark_span >= 0, new_row[np.maximum(mark_span, 0)], -1)
    return dataclasses.replace(cols, spans=spans, marks=marks, span_parent=parent, mark_values=values,
                               mark_span=mark_span,
                               span_epoch=cols.span_epoch[rows], span_batch=cols.span_batch[rows],
                               mark_epoch=cols.mark_epoch[mark_keep], mark_batch=cols.mark_batch[mark_keep])


def test_a_piece_of_a_session_with_parents_outside_it(factory: SpoolFactory, compiled: Any):
    """What the piece-by-piece reader of big sessions hands over: spans whose parents are in
    another piece still name them (hashed from the parent's id)."""
    from cirron.export._otlp import iter_encoded_spans

    hard_session(factory)
    odd_session(factory)
    seen_outside = 0
    for info, cols in _sessions(factory.spool_dir):
        n = cols.spans.num_rows
        for keep in (np.arange(n) % 2 == 1, np.arange(n) >= n // 2):
            piece = _piece(cols, keep)
            seen_outside += int(((piece.span_parent < 0) & piece.spans["parent_id"].is_valid().to_numpy(
                zero_copy_only=False)).sum())
            fast, got = _encode(piece, info.last_ns, compiled)
            assert (fast, got) == _encode(piece, info.last_ns, None)
            spans = piece.spans.to_pylist()
            for s in spans:
                s["attrs"] = msgspec.json.decode(s["attrs"] or "{}")
            marks = [dict(m, value=v, attrs=m["attrs"] and msgspec.json.decode(m["attrs"]))
                     for m, v in zip(piece.marks.to_pylist(), piece.values())]
            ref = [orjson.dumps(s) for s in iter_encoded_spans(info.id, spans, marks, open_end_ns=info.last_ns)]
            assert fast == b",".join(ref)
    assert seen_outside > 0


def test_export_takes_the_compiled_path_and_matches_the_reference(factory: SpoolFactory, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, compiled: Any):
    calls = []

    def spy(*args: Any) -> int:
        calls.append(args[1:3])
        return compiled.encode(*args)

    monkeypatch.setattr(_otlp_columns, "_cotlp", type("Spy", (), {"encode": staticmethod(spy),
                                                                   "digests": staticmethod(compiled.digests),
                                                                   "scratch": staticmethod(compiled.scratch)}))
    assert assert_same(_hard_spool(factory), tmp_path, "otel", monkeypatch) == 4
    assert calls


def test_span_digests_are_derive_span_id(compiled: Any):
    ids = ["", "a", "x" * 127, "y" * 128, "z" * 129, "é✓" * 100, "0" * 300, 'odd"id\\', "\u2028\x00",
           "6e0b1b2615c8ec5eabb8f6bf30a5c43a"]
    col = pa.array(ids).slice(0)
    digests = np.frombuffer(compiled.digests(_otlp_columns._arrow(col), len(ids)), dtype="<u8")
    assert [d.tobytes().hex() for d in digests] == [derive_span_id(s) for s in ids]
    sliced = pa.array(["pad", *ids]).slice(1)
    again = np.frombuffer(compiled.digests(_otlp_columns._arrow(sliced), len(ids)), dtype="<u8")
    assert again.tolist() == digests.tolist()
    # ids of one block go four at a time (where the CPU has the vectors for it), longer ones alone
    rng = np.random.default_rng(7)
    mixed = ["".join(rng.choice(list('ab"\\é✓0'), size=int(k))) for k in rng.integers(0, 140, size=500)]
    got = np.frombuffer(compiled.digests(_otlp_columns._arrow(pa.array(mixed)), len(mixed)), dtype="<u8")
    assert [d.tobytes().hex() for d in got] == [derive_span_id(s) for s in mixed]


def test_bad_arguments_raise_instead_of_reading_past_buffers(factory: SpoolFactory, compiled: Any):
    hard_session(factory)
    (info, cols), *_ = _sessions(factory.spool_dir)
    spans = _otlp_columns._CompiledSpans(_otlp_columns._SessionText(cols, info.last_ns))
    n = cols.spans.num_rows
    vals, got = np.zeros(0), io.BytesIO()
    for a, b in ((0, n + 1), (-1, 1), (2, 1)):
        with pytest.raises(ValueError, match="out of range"):
            compiled.encode(spans.spec, a, b, 0, 0, vals, b"[]", None, None, spans.scratch, got.write)
    with pytest.raises(ValueError, match="shorter"):
        compiled.digests(_otlp_columns._arrow(pa.array(["a"])), 2)
    with pytest.raises(TypeError):
        compiled.encode(spans.spec[:-1], 0, 1, 0, 0, vals, b"[]", None, None, spans.scratch, got.write)
    with pytest.raises(TypeError):
        compiled.encode(spans.spec, 0, 1, 0, 0, vals, b"[]", None, None, object(), got.write)
    assert got.getvalue() == b""


def test_blocks_kept_by_the_writer_keep_their_text(factory: SpoolFactory, compiled: Any):
    """``write`` gets read-only blocks of text; one it keeps (a write-behind thread writing it
    later) is never filled again, so it still holds the text it was handed with."""
    hard_session(factory)
    (info, cols), *_ = _sessions(factory.spool_dir)
    spans = _otlp_columns._CompiledSpans(_otlp_columns._SessionText(cols, info.last_ns))
    n = cols.spans.num_rows
    kept: list[Any] = []
    for a in range(n):
        spans.write(a, a + 1, kept.append)
    whole, _ = _encode(cols, info.last_ns, compiled)
    assert n > 4 and b",".join(bytes(k) for k in kept) == whole
    assert len({id(k) for k in kept}) == n
    with pytest.raises(TypeError):
        memoryview(kept[0])[:1] = b"x"
    dropped = io.BytesIO()  # a writer that keeps nothing: the blocks are reused, the text the same
    for a in range(n):
        dropped.write(b"," if a else b"")
        spans.write(a, a + 1, dropped.write)
    assert dropped.getvalue() == whole


@pytest.mark.parametrize("how", ["missing", "pure"])
def test_without_the_module_the_twin_writes_the_same_export(factory: SpoolFactory, tmp_path: Path, how: str):
    spool = _hard_spool(factory)
    code = (
        "import sys\n"
        + ("sys.modules['cirron.export._cotlp'] = None  # any import of it now fails\n" if how == "missing" else "")
        + "from cirron import export\n"
        "from cirron.export import _otlp_columns\n"
        "from cirron.spool.catalog import open_catalog\n"
        "assert _otlp_columns._cotlp is None\n"
        "cat = open_catalog([sys.argv[1]], lambda _m: None)\n"
        "export.write_otlp_json(list(cat.sessions), sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "cli")])}
    if how == "pure":
        env["CIRRON_PURE_PYTHON"] = "1"
    else:
        env.pop("CIRRON_PURE_PYTHON", None)
    out = subprocess.run([sys.executable, "-c", code, str(spool), str(tmp_path / "twin.json")], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    from cirron import export

    export.write_otlp_json(list(open_catalog([spool], lambda _m: None).sessions), tmp_path / "here.json")
    assert (tmp_path / "twin.json").read_bytes() == (tmp_path / "here.json").read_bytes()


def test_the_readers_mark_rows_are_the_lookup_of_their_span_ids(factory: SpoolFactory):
    """The encoder takes each mark's span row from the reader (``mark_span``) instead of
    looking its id up again: the same rows, ids that are not 32 lowercase hex digits included."""
    import pyarrow.compute as pc

    _hard_spool(factory)
    rows = 0
    for info, cols in _sessions(factory.spool_dir):
        assert cols.mark_span is not None
        want = pc.fill_null(pc.index_in(cols.marks["span_id"], value_set=cols.spans["id"].combine_chunks()), -1)
        assert cols.mark_span.tolist() == want.to_pylist()
        rows += int((cols.mark_span >= 0).sum())
        without = dataclasses.replace(cols, mark_span=None)
        assert _encode(without, info.last_ns, None) == _encode(cols, info.last_ns, None)
    assert rows > 10
