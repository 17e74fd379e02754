"""The compiled speed-ups agree with their pure-Python twins (``cirron._native``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import orjson
import pytest

from cirron._flush import batch as batch_mod
from cirron._flush.batch import Batch
from cirron._flush.records import ENCODER, mark_record, span_record
from cirron._ids import IDS
from cirron._native import PURE_PYTHON_ENV
from cirron._record import span as span_mod
from cirron._schema import ROOT_SENTINEL

_cencode = pytest.importorskip("cirron._flush._cencode", reason="the C encoder was not built")

ROOT = (next(IDS.ids), "f" * 32)


def _span_rows() -> list[tuple]:
    sid = next(IDS.ids)
    plain = (sid, 0, "step", None, 1_700_000_000_000_000_000, 1_700_000_000_000_100_000, 5_000, None, None, 140, None)
    return [
        plain,
        (next(IDS.ids), sid, "child", 3, 10, 20, 0, 7, 1 << 40, 140, {}),
        (ROOT[0], 0, "cirron.session", None, 1, None, None, None, None, 140, None),  # the root: no parent
        (next(IDS.ids), sid, 'quote " back \\ ctl \x01\n\t é 中 \u2028', -1, -5, None, None, None, None, 1, None),
        (next(IDS.ids), sid, "flat", None, 1, 2, 3, None, None, 4,
         {"route": "/v1", "status": 200, "ok": True, "no": False, "none": None, "ratio": 0.25, "nan": math.nan,
          "inf": -math.inf, "big": 1e300}),
        # handed to the Python fallback: nesting, non-str keys, ints past 64 bits, a lone surrogate,
        # a bool where an int goes, a float gpu time
        (next(IDS.ids), sid, "nested", None, 1, 2, 3, None, None, 4, {"shape": (2, 3), "cfg": {"lr": 0.1}}),
        (next(IDS.ids), sid, "keys", None, 1, 2, 3, None, None, 4, {1: "one"}),
        (next(IDS.ids), sid, "huge", None, 1, 2, 3, None, 1 << 70, 4, None),
        (next(IDS.ids), sid, "bad \ud800 name", None, 1, 2, 3, None, None, 4, None),
        (next(IDS.ids), sid, "flag", True, 1, 2, 3, None, None, 4, None),
        (next(IDS.ids), sid, "gpu", None, 1, 2, 3, 1.5, None, 4, None),
        # ids at the edges of 128 bits, read straight from the int's digits
        ((1 << 128) - 1, 1, "edge ids", None, 1, 2, 3, None, None, 4, None),
        (1 << 127, (1 << 64) + 1, "edge ids", None, 1, 2, 3, None, None, 4, None),
        (1 << 128, sid, "id past 128 bits", None, 1, 2, 3, None, None, 4, None),
    ]


def _mark_rows() -> list[tuple]:
    sid = next(IDS.ids)
    return [
        (sid, "loss", 0.5, "point", 100, None, 7),
        (0, "lr", 1e-7, "summary", 101, None, 7),
        (sid, "step", 12, "point", 102, {}, 8),
        (sid, "done", True, "summary", 103, None, 8),
        (sid, "note", 'text "q" \n', "point", 104, {"k": "v", "n": 2}, 9),
        (sid, "nan", math.nan, "point", 105, None, 9),
        (sid, "inf", math.inf, "point", 106, None, 9),
        (sid, "ninf", -math.inf, "point", 107, None, 9),
        (sid, "neg", -0.0, "point", 108, None, 9),
        (sid, "big", 1 << 80, "point", 109, None, 9),  # fallback: past 64 bits
        (sid, "nested", 1.0, "point", 110, {"a": [1, 2]}, 9),  # fallback: nested attrs
    ]


def _python_spans(rows: list[tuple]) -> list[dict]:
    return msgspec.to_builtins([span_record(r, 321, 2, *ROOT) for r in rows])


def _as_rows(records: list[tuple]) -> list:
    """The same records as the compiled recorder buffers them."""
    from cirron._record._cscope import Row

    return [Row(r) for r in records]


@pytest.mark.parametrize("layout", ["tuple", "row"])
def test_span_encoder_matches_the_python_records(layout: str) -> None:
    rows = [r for r in _span_rows() if "\ud800" not in r[2]]
    if layout == "row":
        rows = _as_rows(rows)
    fallbacks: list[tuple] = []

    def fallback(row: tuple) -> bytes:
        fallbacks.append(row)
        return ENCODER.encode(span_record(row, 321, 2, *ROOT))

    out = _cencode.encode_spans(rows, 321, 2, ROOT[0], ROOT[1], fallback)
    assert orjson.loads(b"[" + out + b"]") == _python_spans(rows)
    # Only the records the C encoder cannot write went through Python.
    assert [r[2] for r in fallbacks] == ["nested", "keys", "huge", "flag", "gpu", "id past 128 bits"]


def test_span_encoder_writes_strings_and_ints_byte_for_byte_as_orjson() -> None:
    """The shared JSON text rules (``_jtext.h``): every ASCII byte, control characters included,
    non-ASCII kept as UTF-8, and int64 at both ends."""
    sid = next(IDS.ids)
    name = "".join(map(chr, range(0x80))) + "é 中 \u2028 \U0001f600 \\u0041"
    rows = [(next(IDS.ids), sid, name, None, -(1 << 63), (1 << 63) - 1, 0, None, None, -1, None),
            (next(IDS.ids), sid, "", None, 9, 10, 99, None, None, 100, None)]
    out = _cencode.encode_spans(rows, 321, 2, ROOT[0], ROOT[1], None)
    assert out == b",".join(orjson.dumps(r) for r in _python_spans(rows))


def test_frozen_attrs_of_recorded_spans_and_marks_encode_as_their_dicts() -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron()
    with c.scope("flat", route="/v1", status=200, ok=True, none=None, ratio=0.25, nan=math.nan, text='q "x"\n'):
        c.mark("tokens", 3, unit="tok", final=False)
    tb = c._rec.local.tb
    span_row, mark_row = list(tb.spans)[-1], list(tb.marks)[-1]
    assert type(span_row[10]).__name__ == "Attrs" and type(mark_row[5]).__name__ == "Attrs"
    fallback_calls: list = []
    out = _cencode.encode_spans([span_row], 321, 2, ROOT[0], ROOT[1], lambda *a: fallback_calls.append(a) or b"{}")
    assert orjson.loads(out) == _python_spans([tuple(span_row[:10]) + (dict(span_row[10]),)])[0]
    out = _cencode.encode_marks([mark_row], [7], ROOT_SENTINEL, lambda *a: fallback_calls.append(a) or b"{}")
    as_dict = tuple(mark_row[:5]) + (dict(mark_row[5]), mark_row[6])
    assert orjson.loads(out) == msgspec.to_builtins(mark_record(as_dict, 7))
    assert orjson.loads(out)["attrs"] == {"unit": "tok", "final": False}
    assert not fallback_calls


def test_span_with_invalid_utf8_name_goes_to_the_fallback() -> None:
    row = next(r for r in _span_rows() if "\ud800" in r[2])
    seen = []
    out = _cencode.encode_spans([row], 1, 0, 0, None, lambda r: seen.append(r) or b'{"x":1}')
    assert seen == [row] and out == b'{"x":1}'


@pytest.mark.parametrize("layout", ["tuple", "row"])
def test_mark_encoder_matches_the_python_records(layout: str) -> None:
    rows = _mark_rows() if layout == "tuple" else _as_rows(_mark_rows())
    ids = [next(IDS.ids) for _ in rows]
    fallbacks = []

    def fallback(row: tuple, mark_id: int) -> bytes:
        fallbacks.append(row[1])
        return ENCODER.encode(mark_record(row, mark_id))

    out = _cencode.encode_marks(rows, ids, ROOT_SENTINEL, fallback)
    expected = msgspec.to_builtins([mark_record(r, i) for r, i in zip(rows, ids)])
    assert orjson.loads(b"[" + out + b"]") == expected
    assert fallbacks == ["big", "nested"]
    assert expected[1]["span_id"] == ROOT_SENTINEL and expected[5]["value"] == "NaN"


def test_encoders_reject_mismatched_arguments() -> None:
    with pytest.raises(TypeError):
        _cencode.encode_marks([(0, "a", 1, "point", 1, None, 1)], [], ROOT_SENTINEL, None)
    with pytest.raises(TypeError):
        _cencode.encode_spans((), 1, 0, 0, None, None)


def test_batch_json_is_the_same_with_and_without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    span_rows = [r for r in _span_rows() if "\ud800" not in r[2]]
    mark_rows = _mark_rows()
    mark_ids = [next(IDS.ids) for _ in mark_rows]
    resource = {"pid": 321, "rank": 2}

    def encoded() -> dict:
        b = Batch("s" * 32, resource, [list(span_rows[:4]), list(span_rows[4:])], list(mark_rows), list(mark_ids),
                  [], len(span_rows), ROOT)
        return orjson.loads(b.to_json())

    with_c = encoded()
    monkeypatch.setattr(batch_mod, "_cencode", None)
    without_c = encoded()
    with_c.pop("batch_id"), without_c.pop("batch_id")
    with_c.pop("created_ns"), without_c.pop("created_ns")
    assert with_c == without_c
    assert len(with_c["spans"]) == len(span_rows) and len(with_c["marks"]) == len(mark_rows)


def test_compiled_scope_is_in_use_when_built() -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    import cirron

    assert span_mod.COMPILED
    assert span_mod.Scope.__enter__ is not span_mod.PyScope.__enter__
    assert issubclass(span_mod.Scope, span_mod._ScopeMethods)
    assert cirron.health()["compiled"] == {"scope": True, "encoder": True}


def test_compiled_modules_are_built_from_the_current_sources() -> None:
    """A C file that no longer compiles only warns at install time (the pure-Python twins take
    over), and an editable install keeps the last good build: either would let the C paths go
    untested. Where a compiler is at hand, both modules must be importable and newer than every
    source they are built from."""
    import importlib.util
    import shlex
    import shutil
    import sysconfig

    from cirron._native import pure_python_wanted

    if pure_python_wanted():
        pytest.skip("CIRRON_PURE_PYTHON is set")
    linker = shlex.split(sysconfig.get_config_var("LDSHARED") or "")
    if not linker or shutil.which(linker[0]) is None:
        pytest.skip("no C compiler: the pure-Python twins are what runs here")
    package = Path(importlib.util.find_spec("cirron").origin).parent
    for module, source, headers in (("cirron._record._cscope", "_record/_cscope.c", ["_row.h", "_u128.h"]),
                                    ("cirron._flush._cencode", "_flush/_cencode.c",
                                     ["_row.h", "_u128.h", "_buf.h", "_jtext.h"]),
                                    ("cirron.spool._cbatch", "spool/_cbatch.c", ["spool/_pow10.h"]),
                                    ("cirron.export._cjson", "export/_cjson.c", ["_buf.h", "_jtext.h"])):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"{module} was not built (see the install's warnings)"
        sources = [package / source, *(package / h for h in headers)]
        if all(p.exists() for p in sources):  # an install from the source tree
            built = Path(spec.origin).stat().st_mtime
            stale = [p.name for p in sources if p.stat().st_mtime > built]
            assert not stale, f"{module} is older than {stale}: reinstall (pip install -e .) to rebuild it"


@pytest.mark.slow
def test_recording_tests_pass_on_the_pure_python_path() -> None:
    """The pure-Python scope, request and encoder are what runs where nothing could be compiled:
    the recording, trace, flush and @ci.inference tests run again on them, in a child with the
    compiled ones off."""
    here = Path(__file__).parent
    env = dict(os.environ, **{PURE_PYTHON_ENV: "1"})
    code = ("import sys, pytest, cirron; from cirron._record import span, instrument; "
            "from cirron._flush import batch; "
            "assert not span.COMPILED and batch._cencode is None; "
            "assert instrument._RequestBase is instrument._PyRequestBase; "
            "assert cirron.health()['compiled'] == {'scope': False, 'encoder': False}; "
            "sys.exit(pytest.main(sys.argv[1:]))")
    files = [str(here / name) for name in ("test_recording.py", "test_trace.py", "test_flush_memory.py",
                                           "test_reliability.py")]
    files += [str(here.parent / "serving" / name) for name in ("test_inference.py", "test_fastapi_inprocess.py")]
    proc = subprocess.run([sys.executable, "-c", code, "-q", "-p", "no:cacheprovider", *files],
                          cwd=here.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _ring(rec: span_mod.Recorder) -> list[tuple]:
    """This thread's marks without their timestamps."""
    marks = list(rec.local.tb.marks)
    rec.local.tb.marks.clear()
    return [m[:4] + m[5:] for m in marks]


def test_compiled_mark_records_what_the_python_mark_records() -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron
    from cirron._errors import CirronMarkTypeError

    np = pytest.importorskip("numpy")
    c = Cirron()
    rec = c._rec
    calls = [
        (("loss", 0.5), {}),
        (("step", 3), {"kind": "summary"}),
        (("ok", True), {"split": "val", "epoch": 2}),
        (("kw", 1.5), {"name": "an attribute", "value": "another"}),
        (("np", np.float32(0.25)), {}),
        (("text", "é" * 200), {}),
    ]
    py_mark = span_mod.PyRecorderBase.mark
    with c.scope("outer"):
        for args, kwargs in calls:
            rec.mark(*args, **kwargs)
        compiled = _ring(rec)
        for args, kwargs in calls:
            py_mark(rec, *args, **kwargs)
        python = _ring(rec)
    assert compiled == python and len(compiled) == len(calls)
    for bad in ({"kind": "nope"}, {"kind": 3}):
        with pytest.raises(CirronMarkTypeError, match="kind must be"):
            rec.mark("x", 1, **bad)
    with pytest.raises(CirronMarkTypeError, match="takes a float"):
        rec.mark("x", [1, 2])
    with pytest.raises(TypeError):
        rec.mark("x", 1, 2)
    with pytest.raises(TypeError):
        rec.mark("x")
    c.shutdown()


def test_compiled_scope_records_what_the_python_scope_records() -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron()
    rec = c._rec

    def run(cls: type) -> list[tuple]:
        with cls(rec, "a", {"k": 1}):
            with cls(rec, "b", None, 4) as b:
                b.gpu_ns = 7
                b.memory_peak_bytes = 8
            try:
                with cls(rec, "c", None):
                    raise ValueError("boom")
            except ValueError:
                pass
            reused = cls(rec, "d", None)
            with reused:
                with reused:
                    pass
        spans = list(rec.local.tb.spans)
        rec.local.tb.spans.clear()
        ids = {s[0]: i for i, s in enumerate(spans)}
        # ids and times differ run to run: keep names, parent positions and the rest
        return [(s[2], ids.get(s[1], -1), s[3], s[7], s[8], s[10], s[5] >= s[4] and s[6] >= 0) for s in spans]

    assert run(span_mod.Scope) == run(span_mod.PyScope)
    assert not rec.open
    c.shutdown()


def test_threads_taking_turns_each_record_into_their_own_buffer() -> None:
    """The compiled scope caches the last recording thread's buffer; turns must not mix them."""
    import threading

    from cirron import Cirron

    c = Cirron()
    rec = c._rec
    turns = [threading.Event() for _ in range(2)]
    seen: dict[int, int] = {}

    def worker(me: int) -> None:
        seen[me] = threading.get_ident()
        for _ in range(50):
            turns[me].wait(5)
            turns[me].clear()
            with c.scope(f"t{me}"):
                pass
            turns[1 - me].set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    turns[0].set()
    for t in threads:
        t.join(10)
    by_thread = {tb.thread_id: [s[2] for s in tb.spans] for tb in rec.buffers.buffers()}
    for me in range(2):
        assert by_thread[seen[me]] == [f"t{me}"] * 50
        assert all(s[9] == seen[me] for tb in rec.buffers.buffers() if tb.thread_id == seen[me] for s in tb.spans)
    c.shutdown()


def test_compiled_start_span_opens_what_the_python_one_opens() -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron()
    rec = c._rec
    with c.scope("parent") as parent:
        made = [rec.start_span("req", {"k": 1}, 3, parent), span_mod.PyRecorderBase.start_span(rec, "req", {"k": 1}, 3,
                                                                                               parent)]
        made.append(rec.start_span(name="kw", parent=None, index=None, attrs=None))
        for s in made:
            assert rec.open[s.id] is s and s._token is None and s.end_ns is None
            assert s.thread_id == threading.get_ident() and s.start_ns > 0 and s._cpu0 > 0
        fields = [(s.name, s.attrs, s.index, s.parent) for s in made]
        assert fields[0] == fields[1] == ("req", {"k": 1}, 3, parent)
        assert fields[2] == ("kw", None, None, None)
        for s in made:
            s.finish(cpu_ns=5, end_ns=s.start_ns + 10)
        assert [(s.cpu_ns, s.end_ns - s.start_ns) for s in made] == [(5, 10)] * 3 and not set(rec.open) - {parent.id}
    with pytest.raises(TypeError):
        rec.start_span()
    with pytest.raises(TypeError):
        rec.start_span("x", nope=1)
    c.shutdown()


def test_request_ids_made_in_c_are_random_version_4_uuids() -> None:
    import uuid

    from cirron._record import instrument

    cscope = pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    assert instrument._uuid4 is cscope.request_id
    ids = [instrument._uuid4() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    for made_in_c in ids[:500]:
        assert uuid.UUID(made_in_c).version == 4 and str(uuid.UUID(made_in_c)) == made_in_c
    # Every hex digit outside the version and variant nibbles varies.
    for pos in (0, 7, 9, 15, 21, 35):
        assert len({i[pos] for i in ids}) > 8
    # The same seed gives the same ids; the module is reseeded from the OS afterwards.
    cscope.seed_request_ids(bytes(range(1, 33)))
    first = [cscope.request_id() for _ in range(3)]
    cscope.seed_request_ids(bytes(range(1, 33)))
    assert [cscope.request_id() for _ in range(3)] == first
    cscope.seed_request_ids(__import__("os").urandom(32))
    with pytest.raises(ValueError):
        cscope.seed_request_ids(bytes(32))
    with pytest.raises(ValueError):
        cscope.seed_request_ids(b"short")
    assert cscope.uuid4_text(0x1234) == str(uuid.UUID(int=(0x1234 & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)))
    with pytest.raises((TypeError, OverflowError)):
        cscope.uuid4_text(-1)
    with pytest.raises(OverflowError):
        cscope.uuid4_text(1 << 128)


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_request_run_steps_inside_the_request_context_in_c_as_in_python(impl: str) -> None:
    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron
    from cirron._record import instrument

    c = Cirron()
    rec = c._rec
    req = instrument._Request(rec)
    run = req.run if impl == "compiled" else (lambda *a, **k: instrument._PyRequestBase.run(req, *a, **k))
    assert type(req).run is not instrument._PyRequestBase.run
    outside = rec.current.get()

    def inside(a: int, *, b: int) -> tuple:
        sum(i * i for i in range(20_000))  # some CPU time to count
        return a + b, rec.current.get() is req.span, instrument.current_request_id(), req.depth

    assert run(inside, 1, b=2) == (3, True, req.rid, 1)
    assert rec.current.get() is outside and instrument.current_request_id() is None
    assert req.depth == 0 and req.c0 is None and req.cpu > 0

    def fails() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run(fails)
    assert rec.current.get() is outside and req.depth == 0
    # A step inside a step (a stream read by the request's own code) runs as it is.
    assert run(lambda: run(lambda: rec.current.get() is req.span)) is True
    with pytest.raises(TypeError):
        run()
    cpu = req.cpu
    req.finish()
    assert req.ctx is None
    assert run(lambda: rec.current.get()) is outside  # an ended request runs code where it is
    assert req.cpu == cpu


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_draws_other_request_ids_than_its_parent() -> None:
    import os

    from cirron._record import instrument

    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running anything else
        try:
            os.write(write, ",".join(instrument._uuid4() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parent = [instrument._uuid4() for _ in range(5)]
    with os.fdopen(read, "rb") as f:
        child = f.read().decode().split(",")
    os.waitpid(pid, 0)
    assert len(child) == 5 and not set(child) & set(parent)


def test_a_row_reads_like_the_tuple_of_its_fields() -> None:
    import gc
    import pickle

    cscope = pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    fields = (7, "name", 0.5, None, {"k": 1})
    row = cscope.Row(fields)
    assert len(row) == 5 and row[0] == 7 and row[-1] == {"k": 1} and row[1:3] == ("name", 0.5)
    a, b, c, d, e = row
    assert (a, b, c, d, e) == fields and list(row) == list(fields)
    assert row == fields and fields == row and row == cscope.Row(fields) and row != fields[:4]
    assert hash(cscope.Row((1, "x"))) == hash((1, "x"))
    assert pickle.loads(pickle.dumps(row)) == fields
    assert repr(row) == "Row" + repr(fields)
    with pytest.raises(IndexError):
        row[5]
    assert not gc.is_tracked(row)


def test_recording_sets_off_no_garbage_collection() -> None:
    """Buffered records are rows outside the cyclic GC: however many a loop records, the
    recording itself triggers no collection (as buffered tuples did, every ~700 records)."""
    import gc

    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron()
    scope, mark = c.scope, c.mark
    with scope("warm-up"):
        mark("x", 1.0)
    before = [g["collections"] for g in gc.get_stats()]
    for _ in range(20_000):
        with scope("step"):
            mark("loss", 0.5)
    after = [g["collections"] for g in gc.get_stats()]
    assert c.health()["spans_recorded"] >= 20_001
    assert after == before, f"collections per generation went from {before} to {after}"


def test_buffered_attrs_of_plain_values_are_out_of_the_gcs_sight() -> None:
    import gc
    from collections.abc import Mapping

    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron()
    with c.scope("plain", step=3, split="val", lr=0.1, ok=True, none=None):
        c.mark("m", 1.0, epoch=2)
    with c.scope("nested", shape=[2, 3]):
        c.mark("m", 1.0, ids=[1])
    tb = c._rec.local.tb
    plain_span, nested_span = list(tb.spans)[-2:]
    plain_mark, nested_mark = list(tb.marks)[-2:]
    assert not gc.is_tracked(plain_span[10]) and not gc.is_tracked(plain_mark[5])
    assert gc.is_tracked(nested_span[10]) and gc.is_tracked(nested_mark[5])
    # Plain attributes are kept frozen: a read-only mapping equal to what was recorded.
    frozen = plain_span[10]
    assert isinstance(frozen, Mapping) and not isinstance(frozen, dict)
    assert frozen == {"step": 3, "split": "val", "lr": 0.1, "ok": True, "none": None}
    assert dict(frozen) == frozen.copy() and list(frozen) == ["step", "split", "lr", "ok", "none"]
    assert frozen["lr"] == 0.1 and frozen.get("missing", 7) == 7 and "split" in frozen and len(frozen) == 5
    assert plain_mark[5] == {"epoch": 2} and nested_span[10] == {"shape": [2, 3]}
    with pytest.raises(TypeError):
        frozen["later"] = 1  # type: ignore[index]


def test_buffered_records_with_attrs_add_nothing_to_the_gcs_count() -> None:
    import gc

    pytest.importorskip("cirron._record._cscope", reason="the C scope was not built")
    from cirron import Cirron

    c = Cirron(mark_buffer_capacity=10_000)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(10):  # warm-up: the thread's buffer and the interned names exist
            with c.scope("request", request_id="r"):
                c.mark("tokens", 3, unit="tok")
        before = gc.get_count()[0]
        for _ in range(2_000):
            with c.scope("request", request_id="r", attempt=1):
                c.mark("tokens", 3, unit="tok")
        grown = gc.get_count()[0] - before
    finally:
        if was_enabled:
            gc.enable()
    # Each record's attrs dict would stay allocated until the next flush: 4,000 GC allocations,
    # enough for several collections of the user's heap. Frozen, they add none.
    assert c.health()["spans_recorded"] >= 2_010
    assert grown < 50, f"{grown} GC allocations outstanding after 2,000 spans and marks"

def test_a_free_threaded_build_runs_the_pure_python_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    from cirron import _native

    real = _native.sysconfig.get_config_var
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    monkeypatch.setattr(_native.sysconfig, "get_config_var",
                        lambda name: 1 if name == "Py_GIL_DISABLED" else real(name))
    assert _native.free_threaded()
    assert _native.load("cirron._record._cscope") is None
    assert _native.load("cirron._flush._cencode") is None
