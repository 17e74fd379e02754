"""The compiled batch-file parser (``cirron/spool/_cbatch.c``) gives exactly what the msgspec
decoder of ``columnar._fast_file`` gives, or declines and leaves the file to it: on real spools
(this SDK's, the vendor SDK's, the benchmark's), on hand-picked edge cases and on generated and
mutated documents. Without the module, the decoder runs alone and reads the same."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cbatch_check import (  # noqa: E402
    assert_same_columns,
    check_bytes,
    check_header,
    check_keys,
    check_spools_under,
    compiled_keys,
    decoder_result,
)
from gen_pow10 import header  # noqa: E402

from cirron.spool import columnar, list_batch_files  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SID = "6e0b1b2615c8ec5eabb8f6bf30a5c43a"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def compiled() -> Any:
    return pytest.importorskip("cirron.spool._cbatch", reason="the C batch parser was not built")


def span(i: int = 0, **over: Any) -> dict:
    rec = {"id": f"{i:032x}", "parent_id": None if i == 0 else f"{0:032x}", "name": "forward", "index": None,
           "start_ns": 1_776_486_598_051_509_000 + i, "end_ns": 1_776_486_598_051_519_000 + i, "cpu_ns": 10,
           "gpu_ns": None, "memory_peak_bytes": None, "thread_id": 1, "pid": 1000, "rank": 0,
           "attrs": {"batch_size": 32}}
    rec.update(over)
    return rec


def mark(i: int = 0, **over: Any) -> dict:
    rec = {"id": f"{i + 10**6:032x}", "span_id": f"{0:032x}", "name": "loss", "value": 1.0 / (i + 1),
           "value_type": "float", "kind": "point", "ts_ns": 1_776_486_601_801_509_000 + i, "thread_id": 1,
           "attrs": {"step": i}}
    rec.update(over)
    return rec


def batch(spans: list | None = None, marks: list | None = None, **over: Any) -> dict:
    doc = {"schema_version": 1, "sdk_version": "0.1.0", "batch_id": "7c1bfc448c6b02518a7084c19c4c421f",
           "created_ns": 1776486598052509000, "session_id": SID,
           "resource": {"pid": 1000, "host": "bench", "rank": 0, "world_size": 1},
           "spans": [span(i) for i in range(3)] if spans is None else spans,
           "marks": [mark(i) for i in range(3)] if marks is None else marks, "snapshots": []}
    doc.update(over)
    return doc


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def read(data: bytes) -> bool:
    """Checks the contract on ``data``; whether the compiled parser read it."""
    return check_bytes(data)


# ----------------------------------------------------------------- real spools


def test_the_writers_batches_are_read_and_equal(compiled: Any, tmp_path: Path) -> None:
    """A real run of this SDK: nested scopes, unicode names, escapes and nesting in attrs, float
    marks; every batch file is read by the compiled parser, with the decoder's exact columns."""
    from cirron import Cirron

    spool = tmp_path / "spool"
    c = Cirron(spool_dir=str(spool), flush_interval=60)
    c.profile()
    for epoch in range(3):
        with c.scope("epoch", index=epoch, note='quote " backslash \\ tab \t ünïcødé ✓ 🚀'):
            for b in range(4):
                with c.scope("batch", index=b, nested={"a": [1, 2.5, None, True]}):
                    with c.scope("forward ✓"):
                        c.mark("loss", 1.0 / (epoch * 4 + b + 1))
                        c.mark("lr", 1e-300 * (b + 1))
                        c.mark("neg", -0.0)
        c.flush()
    c.shutdown()
    files = sorted(spool.glob("*.json"))
    assert files
    assert all(read(f.read_bytes()) for f in files)


def test_the_vendor_sdks_spools_agree(compiled: Any) -> None:
    files = sorted((TESTS / "fixtures" / "vendor").rglob("*.json"))
    assert len(files) > 5
    assert check_spools_under(TESTS / "fixtures" / "vendor" / "project") >= 5
    for f in files:
        check_bytes(f.read_bytes())


def test_the_benchmarks_spool_is_read_and_equal(compiled: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_cli import generate

    generate(tmp_path / "spool", 3000, 3000, 3, n_sessions=2)
    files = sorted((tmp_path / "spool").glob("*.json"))
    assert len(files) == 3 and all(read(f.read_bytes()) for f in files)


# ----------------------------------------------------------------- edge cases

READ = [
    batch(),
    batch(spans=[], marks=[]),
    batch(spans=None, marks=None),
    {"session_id": SID},
    {"session_id": None, "spans": [span()]},
    {"session_id": "", "spans": [span()]},
    batch(spans=[span(1, parent_id="")]),                       # "" parent: none
    batch(spans=[{"id": "x"}]),                                   # every other field missing
    batch(marks=[{"id": "m", "value": 0.5}]),
    batch(spans=[span(1, attrs=None), span(2, attrs=[1, {"a": {"b": []}}]), span(3, attrs="s"), span(4, attrs=1.5e3)]),
    batch(spans=[{k: v for k, v in span(1).items() if k != "attrs"}]),
    batch(spans=[dict(reversed(list(span(1).items())))]),         # another key order
    batch(spans=[span(1, extra={"deep": [1, 2, {"x": None}]}, more="ü")]),
    batch(spans=[span(1, name="ünïcødé ✓ 🚀", id="ä")]),
    batch(spans=[span(1, name="\x00\x01\n\t\"\\/")]),
    batch(spans=[span(1, index=INT64_MIN, start_ns=INT64_MAX, end_ns=-1, cpu_ns=0)]),
    batch(marks=[mark(1, value=v) for v in (-0.0, 0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                                             0.1, 1 / 3, 123456789.123456789, 9007199254740993.0)]),
    batch(snapshots=None),
    batch(unknown={"a": [1, "b", None, True, False, -1.5e-7]}),
]


@pytest.mark.parametrize("doc", READ, ids=range(len(READ)))
def test_plain_shapes_are_read_and_equal(compiled: Any, doc: dict) -> None:
    assert read(dumps(doc))


def test_spelling_is_free(compiled: Any) -> None:
    """Whitespace, escaped keys and values, \\u escapes and surrogate pairs: read, and equal."""
    text = dumps(batch())
    assert read(json.dumps(batch(), indent=2, ensure_ascii=True).encode())
    assert read(b" \n\t\r" + text + b" \r\n\t")
    assert read(text.replace(b'"name":"forward"', b'"\\u006eame" : "f\\u00f6r\\/w\\ud83d\\ude80ard"'))
    assert read(text.replace(b'"loss"', b'"\\"\\\\\\b\\f\\n\\r\\t"'))


DECLINED = [
    b"", b"[]", b"null", b'"x"', b"{", b"{}", b'{"spans":[]}',                           # no session_id
    dumps(batch(session_id=5)), dumps(batch(session_id={"a": 1})),
    dumps(batch(snapshots=[{"id": "s"}])), dumps(batch(snapshots={})),
    dumps(batch(spans=[span(1, id="")])), dumps(batch(spans=[span(1, id=None)])),
    dumps(batch(spans=[{k: v for k, v in span(1).items() if k != "id"}])),
    dumps(batch(spans=[span(1, start_ns=2**63)])), dumps(batch(spans=[span(1, start_ns=INT64_MIN - 1)])),
    dumps(batch(spans=[span(1, start_ns=10**30)])),
    dumps(batch(spans=[span(1, start_ns=1.0)])), dumps(batch(spans=[span(1, start_ns="5")])),
    dumps(batch(spans=[span(1, start_ns=True)])), dumps(batch(spans=[span(1, name=5)])),
    dumps(batch(spans=[span(1, parent_id=[])])), dumps(batch(spans=[5])), dumps(batch(spans={})),
    dumps(batch(marks=[mark(1, value=1)])), dumps(batch(marks=[mark(1, value=True)])),
    dumps(batch(marks=[mark(1, value="x")])), dumps(batch(marks=[mark(1, value=None)])),
    dumps(batch(marks=[{k: v for k, v in mark(1).items() if k != "value"}])),
    dumps(batch()).replace(b'"value":1.0', b'"value":1e400'),
    dumps(batch()).replace(b'"value":1.0', b'"value":-1e309'),
    dumps(batch()).replace(b'"value":1.0', b'"value":NaN'),
    dumps(batch()).replace(b'"value":1.0', b'"value":01.0'),
    dumps(batch()).replace(b'"value":1.0', b'"value":1.'),
    dumps(batch()).replace(b'"value":1.0', b'"value":.5'),
    dumps(batch()).replace(b'"value":1.0', b'"value":1e'),
    dumps(batch()).replace(b'"value":1.0', b'"value":+1.0'),
    dumps(batch()).replace(b'"name":"forward"', b'"name":"forward","name":"twice"'),
    dumps(batch()).replace(b'"spans":', b'"spans":[],"spans":'),
    dumps(batch()).replace(b'"forward"', b'"\\ud800"'), dumps(batch()).replace(b'"forward"', b'"\\udc00x"'),
    dumps(batch()).replace(b'"forward"', b'"\\x"'), dumps(batch()).replace(b'"forward"', b'"a\x01"'),
    dumps(batch()).replace(b'"forward"', b'"\xff"'), dumps(batch()).replace(b'"forward"', b'"\xed\xa0\x80"'),
    dumps(batch()).replace(b'"forward"', b'"\xc0\xaf"'), dumps(batch()).replace(b'"forward"', b'"\xf4\x90\x80\x80"'),
    dumps(batch()).replace(b'{"batch_size":32}', b'{"a":"\xff"}'),
    dumps(batch()).replace(b'{"batch_size":32}', b'{"a":1,}'),
    dumps(batch()).replace(b'{"batch_size":32}', b'{"a" 1}'),
    dumps(batch()).replace(b'{"batch_size":32}', b'[1 2]'),
    dumps(batch()).replace(b'{"batch_size":32}', b'tru'),
    dumps(batch()).replace(b'{"batch_size":32}', b"[" * 100 + b"]" * 100),
    dumps(batch()) + b"x", dumps(batch()) + b"{}", dumps(batch())[:-1],
    dumps(batch()).replace(b"},{", b"},,{", 1), dumps(batch()).replace(b"}]", b"},]", 1),
]


@pytest.mark.parametrize("data", DECLINED, ids=range(len(DECLINED)))
def test_what_it_cannot_vouch_for_is_left_to_the_decoder(compiled: Any, data: bytes) -> None:
    assert columnar._compiled_file(data, True) is None
    check_bytes(data)


HEADERS = [
    (dumps(batch()), SID),
    (dumps(batch(snapshots=[{"id": "x"}])), SID),  # snapshots: the columns decline, the header does not care
    (b'{"spans": [], "marks": []}', None),
    (b'{"session_id": null}', None),
    (b'{"session_id": ""}', None),
    (b'{"a": 1e400, "b": [123456789012345678901234567890], "session_id": "x"}', "x"),
    (b'{"session_id": "\\u00e9t\xc3\xa9"}', "\u00e9t\u00e9"),
    (b'{"session_id": 3}', "declined"),
    (b'{"session_id": "a", "session_id": "b"}', "declined"),
    (b'[1]', "declined"),
    (dumps(batch())[:-1], "declined"),
    (b'{"session_id": "\xff"}', "declined"),
]


@pytest.mark.parametrize(("data", "want"), HEADERS, ids=range(len(HEADERS)))
def test_the_header_scan_gives_the_decoders_session_id(compiled: Any, data: bytes, want: str | None) -> None:
    if want == "declined":  # the decoder decides
        assert compiled.session_of(data) is None
    else:
        assert compiled.session_of(data) == (want,)
        assert check_header(data)


def snap(i: int = 0, **over: Any) -> dict:
    rec = {"id": f"{i + 10**7:032x}", "span_id": f"{0:032x}", "tensor": "0.weight", "role": "weight",
           "dtype": "F32", "shape": [2, 2], "mode": "full", "ts_ns": 1_776_486_601_901_509_000 + i, "stats": {}}
    rec.update(over)
    return rec


ROOT = span(0, name="cirron.session", attrs={"run_id": "r1", "rank": 0})
#: What the index's light pass reads with the keys scan: only ids, the ids records name, times
#: and the root's record are decoded, so a mark value or a span name of any type is read.
KEYS_READ = [
    batch(spans=[ROOT, span(1), span(2, end_ns=None)]),
    batch(snapshots=[snap(1), snap(2, span_id="root"), snap(3, span_id=None, ts_ns=None)]),
    batch(marks=[mark(1, value=v) for v in (1, True, "x", None, [1], 1.5)]),
    batch(marks=[{k: v for k, v in mark(1).items() if k != "value"}]),
    batch(marks=[mark(1, span_id="root"), mark(2, span_id=""), mark(3, span_id=None), mark(4, ts_ns=None)]),
    batch(spans=[span(1, parent_id=""), span(2, parent_id=None, name=5), span(3, name={"a": [1, None]})]),
    batch(spans=[span(1, id="ABCDEF" + "0" * 26), span(2, parent_id="A" * 32)]),
    batch(spans=[span(1, gpu_ns="odd", thread_id=1.5, rank=[], memory_peak_bytes={})]),  # not keys fields
    batch(spans=[span(1, start_ns=None, end_ns=None), span(2, start_ns=5, end_ns=3), span(3, start_ns=INT64_MIN)]),
    batch(spans=[{"id": f"{7:032x}"}], marks=[{"id": f"{8:032x}"}], snapshots=[{"id": f"{9:032x}"}]),
    batch(spans=[ROOT, dict(ROOT, id=f"{5:032x}", name="other root")]),
    batch(spans=[span(1, **{"~cirron.session": "s"})], marks=[mark(1, **{"~cirron.batch_session": None})]),
    batch(schema_version=99, sdk_version=3, resource=[1, 2]),                  # warned; odd types let go
    batch(schema_version=1.5, sdk_version=None, resource=None, batch_id={"a": [0.5]}, created_ns="x"),
    batch(resource={"big": 123456789012345678901234567890, "f": -0.0}),
    {k: v for k, v in batch().items() if k != "session_id"},                    # a writer without the lock
    batch(session_id=None), batch(session_id=""), batch(spans=None, marks=None, snapshots=None),
    {"session_id": SID, "unknown": [1e300, {"x": -1e-300}]},                    # skipped, as msgspec skips it
]


@pytest.mark.parametrize("doc", KEYS_READ, ids=range(len(KEYS_READ)))
def test_the_keys_scan_reads_the_writers_shapes_and_agrees(compiled: Any, doc: dict) -> None:
    data = dumps(doc)
    assert check_keys(data)
    check_bytes(data)


def test_the_keys_scan_reads_any_spelling(compiled: Any) -> None:
    doc = batch(spans=[ROOT, span(1)], snapshots=[snap(1)])
    assert check_keys(json.dumps(doc, indent=1, ensure_ascii=True).encode())
    text = dumps(doc)
    escaped = text.replace(f'"id":"{1:032x}"'.encode(), rb'"\u0069d":"' + rb"\u0030" * 31 + b'1"')
    assert escaped != text and check_keys(escaped)


KEYS_DECLINED = [
    batch(spans=[span(1, id="not-hex")]), batch(spans=[span(1, id="")]), batch(spans=[span(1, id=5)]),
    batch(spans=[span(1, parent_id="root")]), batch(spans=[span(1, parent_id="g" * 32)]),
    batch(spans=[span(1, parent_id=7)]), batch(marks=[mark(1, span_id="abc")]), batch(marks=[mark(1, id="m")]),
    batch(marks=[mark(1, span_id=[])]), batch(snapshots=[snap(1, id="s")]), batch(snapshots=[snap(1, ts_ns="5")]),
    batch(spans=[span(1, start_ns=1.0)]), batch(spans=[span(1, cpu_ns=2**63)]), batch(spans=[span(1, pid=True)]),
    batch(spans=[span(1, **{"~cirron.session": 5})]), batch(marks=[mark(1, **{"~cirron.session": {}})]),
    batch(spans=[{k: v for k, v in span(1).items() if k != "id"}]), batch(spans=[5]), batch(marks={}),
    batch(spans=[span(1, name=10**50)]),
]
KEYS_DECLINED_TEXT = [
    dumps(batch()).replace(b'"name":"forward"', b'"name":1e400'),
    dumps(batch()).replace(b'"name":"forward"', b'"name":[1E2]'),
    dumps(batch()).replace(b'"pid":1000,"host"', b'"pid":1e400,"host"'),
    dumps(batch()).replace(b'"created_ns":1776486598052509000', b'"created_ns":-1e309'),
    dumps(batch()).replace(b'"schema_version":1', b'"schema_version":' + b"9" * 5000),
    dumps(batch()).replace(b'"start_ns"', b'"start_ns":1,"start_ns"', 1),
    dumps(batch()).replace(b'"schema_version":1', b'"schema_version":1,"schema_version":2'),
    dumps(batch()).replace(b'"resource"', b'"resource":{},"resource"'),
]


@pytest.mark.parametrize("data", [dumps(d) for d in KEYS_DECLINED] + KEYS_DECLINED_TEXT,
                         ids=range(len(KEYS_DECLINED) + len(KEYS_DECLINED_TEXT)))
def test_what_the_keys_scan_cannot_vouch_for_is_left_to_the_decoder(compiled: Any, data: bytes) -> None:
    assert compiled_keys(data, lambda _m: None) is None
    check_bytes(data)


def test_the_keys_scan_returns_the_roots_record_and_the_writers_keys(compiled: Any) -> None:
    import msgspec

    from cirron.spool.batchkeys import keys_of_bytes

    got = keys_of_bytes(dumps(batch(spans=[span(1), ROOT], marks=[mark(1, span_id="root")])), "b.json", print)
    assert got is not None
    assert [(row, rec.id, msgspec.json.decode(rec.attrs)) for row, rec in got.roots] == [(1, ROOT["id"], ROOT["attrs"])]
    assert got.spans["hi"].tolist() == [0, 0] and got.spans["lo"].tolist() == [1, 0]
    assert got.spans["has_p"].tolist() == [True, False] and got.marks["on"].tolist() == [False]
    assert got.resource == batch()["resource"] and got.sdk_version == "0.1.0" and got.session_id == SID


def test_an_empty_parent_is_none_and_missing_attrs_are_an_empty_object(compiled: Any) -> None:
    got = columnar._compiled_file(dumps(batch(spans=[span(1, parent_id=""), {"id": "b"}])), True)
    assert got is not None
    assert got[0]["parent_id"].to_pylist() == [None, None]
    assert got[0]["attrs"].to_pylist() == ['{"batch_size":32}', "{}"]


def test_spans_only_skips_the_marks_but_still_checks_them(compiled: Any) -> None:
    text = dumps(batch(marks=[mark(1, value="not a float", extra=[1, {"x": 0}])])).replace(b'"x":0', b'"x":1e400')
    got = columnar._compiled_file(text, False)
    assert got is not None and len(got[1]["id"]) == 0 and got[2] == []
    assert_same_columns(got, decoder_result(text, False))
    assert columnar._compiled_file(text, True) is None
    assert columnar._compiled_file(text.replace(b'"extra":[1,', b'"extra":[1,,'), False) is None


# ----------------------------------------------------------------- floats

HARD_FLOATS = ["2.2250738585072011e-308", "2.2250738585072012e-308", "4.9406564584124654e-324",
               "2.4703282292062327e-324", "2.4703282292062328e-324", "1.7976931348623157e308",
               "1.7976931348623158e308", "9007199254740993.0", "9007199254740992.9999999999999999",
               "0.1000000000000000055511151231257827", "1e-400", "-1e-400", "0e999999999", "-0.0", "0.0e-5",
               "1.00000000000000011102230246251565404236316680908203125", "123456789012345678901234567890.5",
               "5e-324", "1e23", "8.98846567431158e307", "1E22", "1e+22", "1e-22", "4.35207e-310",
               "0." + "0" * 400 + "1e400", "1" + "0" * 400 + ".0e-400", "7.2057594037927933e16"]


def _float_file(texts: list[str]) -> bytes:
    marks = ",".join(f'{{"id":"m{i}","value":{t}}}' for i, t in enumerate(texts))
    return f'{{"session_id":"{SID}","marks":[{marks}]}}'.encode()


def test_hard_floats_round_as_the_decoder_does(compiled: Any) -> None:
    finite = [t for t in HARD_FLOATS if not math.isinf(float(t))]
    data = _float_file(finite)
    assert read(data)
    got = columnar._compiled_file(data, True)
    assert [struct.pack("<d", v) for v in got[2]] == [struct.pack("<d", float(t)) for t in finite]
    assert columnar._compiled_file(_float_file(["1.7976931348623159e308"]), True) is None


def _float_texts(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:  # a random double, as repr writes it
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            t = repr(x) if math.isfinite(x) else "1.5"
            out.append(t if ("." in t or "e" in t) else t + ".0")
        elif kind == 1:  # random decimal digits, 1 to 25 of them, at any scale
            digits = str(rng.randrange(1, 10 ** rng.randint(1, 25)))
            point = rng.randint(1, len(digits))
            out.append(f"{digits[:point]}.{digits[point:] or '0'}e{rng.randint(-345, 300)}")
        elif kind == 2:  # near a half-way point between two doubles
            x = rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-300, 300)
            out.append(f"{x:.{rng.randint(15, 25)}e}")
        elif kind == 3:  # short values (the exact fast path)
            out.append(f"{rng.randint(-10**6, 10**6)}.{rng.randint(0, 10**6)}")
        else:
            out.append(rng.choice(["-", ""]) + f"{rng.random():.{rng.randint(1, 20)}f}" +
                       rng.choice(["", "E-3", "e+07", "e0"]))
    return [t for t in out if math.isfinite(float(t))]


@settings(FUZZ, max_examples=15)
@given(st.integers(0, 2**32))
def test_random_floats_round_as_the_decoder_does(seed: int) -> None:
    pytest.importorskip("cirron.spool._cbatch")
    texts = _float_texts(random.Random(seed), 2000)
    data = _float_file(texts)
    got = columnar._compiled_file(data, True)
    assert got is not None
    assert [struct.pack("<d", v) for v in got[2]] == [struct.pack("<d", float(t)) for t in texts]
    assert_same_columns(got, decoder_result(data, True))


# ----------------------------------------------------------------- generated documents

_INTS = st.one_of(st.none(), st.integers(-5, 5), st.integers(INT64_MIN, INT64_MAX),
                  st.integers(INT64_MIN - 10, INT64_MIN + 10), st.integers(INT64_MAX - 10, INT64_MAX + 10),
                  st.integers(-(10**25), 10**25))
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _TEXT |
                     st.floats(allow_nan=False, allow_infinity=False),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                     max_leaves=8)
_ODD = st.one_of(_JSON, st.sampled_from([1.5, "x", "", None, [], {}, True]))
_MISSING = object()


def _fields(base: dict, values: st.DataObject) -> dict:
    out = {}
    for key, value in base.items():
        choice = values.draw(st.integers(0, 19))  # 0: left out, 1: of an odd type, 2-5: varied
        if choice == 0:
            continue  # missing
        if choice == 1:
            value = values.draw(_ODD)
        elif choice == 2 and (isinstance(value, int) or key == "index"):
            value = values.draw(_INTS)
        elif choice == 3 and isinstance(value, str):
            value = values.draw(_TEXT)
        elif choice == 4 and key == "attrs":
            value = values.draw(_JSON)
        elif choice == 5 and key == "value":
            value = values.draw(st.floats(allow_nan=False, allow_infinity=False))
        out[key] = value
    if values.draw(st.integers(0, 5)) == 0:
        out[values.draw(_TEXT)] = values.draw(_JSON)
    keys = list(out)
    values.draw(st.randoms(use_true_random=False)).shuffle(keys)
    return {k: out[k] for k in keys}


def _spell(value: Any, rng: random.Random) -> str:
    """JSON text of ``value`` with random (valid) spelling: blanks, escapes, float forms."""
    ws = lambda: rng.choice(["", "", "", " ", "\n", "\t ", "\r\n"])  # noqa: E731
    if isinstance(value, dict):
        items = [f"{ws()}{_spell(str(k), rng)}{ws()}:{ws()}{_spell(v, rng)}{ws()}" for k, v in value.items()]
        return "{" + ",".join(items) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + _spell(v, rng) + ws() for v in value) + ws() + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=rng.random() < 0.3).replace("/", rng.choice(["/", "\\/"]))
    if isinstance(value, float):
        if value == 0 or rng.random() < 0.6:
            return repr(value)
        return rng.choice([f"{value:.17e}", f"{value:.17E}", f"{value:.25g}" if "e" in f"{value:.25g}" else repr(value)])
    return json.dumps(value)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data) + 1)
    op = rng.randrange(4)
    if op == 0:
        return data[:pos]
    if op == 1:
        return data[:pos] + data[pos + 1:]
    byte = bytes([rng.choice(b'{}[]",:\\ 0123456789eE.-+ntfu\x00\x1f\x7f\x80\xc3\xed\xf0\xff')])
    return data[:pos] + byte + data[pos + (op == 2):]


@FUZZ
@given(st.data())
def test_generated_documents_agree(data: st.DataObject) -> None:
    pytest.importorskip("cirron.spool._cbatch")
    rng = data.draw(st.randoms(use_true_random=False))
    spans = [_fields(span(i), data) for i in range(data.draw(st.integers(0, 4)))]
    marks = [_fields(mark(i), data) for i in range(data.draw(st.integers(0, 4)))]
    doc = _fields(batch(spans=spans, marks=marks), data)
    text = _spell(doc, rng).encode()
    check_bytes(text)
    for _ in range(3):
        check_bytes(_mutate(text, rng))


@FUZZ
@given(st.data())
def test_writer_shaped_documents_are_read(data: st.DataObject) -> None:
    """Only the spelling varies (valid types everywhere): the compiled parser must read them."""
    pytest.importorskip("cirron.spool._cbatch")
    rng = data.draw(st.randoms(use_true_random=False))
    n = data.draw(st.integers(0, 5))
    spans = [span(i, name=data.draw(_TEXT), attrs=data.draw(_JSON), index=data.draw(st.integers(INT64_MIN, INT64_MAX)),
                  parent_id=data.draw(st.none() | _TEXT)) for i in range(n)]
    marks = [mark(i, value=data.draw(st.floats(allow_nan=False, allow_infinity=False)), kind=data.draw(_TEXT))
             for i in range(n)]
    doc = batch(spans=spans, marks=marks)
    keys = list(doc)
    rng.shuffle(keys)
    text = _spell({k: doc[k] for k in keys}, rng).encode()
    assert read(text)


@FUZZ
@given(st.data())
def test_writer_shaped_documents_are_read_by_the_keys_scan(data: st.DataObject) -> None:
    """Ids of 32 hex digits, anything in the fields a keys read does not decode, any spelling:
    the keys scan must read them, and agree."""
    pytest.importorskip("cirron.spool._cbatch")
    rng = data.draw(st.randoms(use_true_random=False))
    n = data.draw(st.integers(0, 5))
    hex_ids = st.integers(0, 2**128 - 1).map(lambda v: f"{v:032x}")
    times = st.none() | st.integers(INT64_MIN, INT64_MAX)
    named = st.none() | st.sampled_from(["", "root"]) | hex_ids
    spans = [span(i, name=data.draw(_TEXT | st.sampled_from(["cirron.session", None, 3])), attrs=data.draw(_JSON),
                  parent_id=data.draw(st.none() | st.just("") | hex_ids.filter(lambda x: x != "root")),
                  start_ns=data.draw(times), end_ns=data.draw(times)) for i in range(n)]
    marks = [mark(i, value=data.draw(_JSON), span_id=data.draw(named), ts_ns=data.draw(times))
             for i in range(n)]
    snaps = [snap(i, span_id=data.draw(named), stats=data.draw(_JSON)) for i in range(data.draw(st.integers(0, 3)))]
    doc = batch(spans=spans, marks=marks, snapshots=snaps)
    keys = list(doc)
    rng.shuffle(keys)
    text = _spell({k: doc[k] for k in keys}, rng).encode()
    assert check_keys(text)
    check_bytes(text)


# ----------------------------------------------------------------- without the module


def test_without_the_module_the_decoder_reads_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dumps(batch())
    monkeypatch.setattr(columnar, "_cbatch", None)
    got = columnar._fast_file(data, True)
    assert got is not None and got[0]["name"].to_pylist() == ["forward"] * 3
    assert got[2] == [1.0, 0.5, 1 / 3]


def test_a_missing_module_falls_back_to_the_decoder(tmp_path: Path) -> None:
    """The module cannot be imported at all (a build without a compiler): the reader still reads."""
    spool = tmp_path / ".cirron" / "spool"
    spool.mkdir(parents=True)
    (spool / "1776486598052509000-7c1bfc448c6b02518a7084c19c4c421f.json").write_bytes(dumps(batch()))
    code = (
        "import sys\n"
        "sys.modules['cirron.spool._cbatch'] = None  # any import of it now fails\n"
        "from cirron.spool import columnar, list_batch_files\n"
        "assert columnar._cbatch is None\n"
        "[bf] = list_batch_files(sys.argv[1])\n"
        "got = columnar.read_file(bf)\n"
        "print(got[0]['name'].to_pylist(), got[2], got[3])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "cli")])}
    out = subprocess.run([sys.executable, "-c", code, str(spool)], capture_output=True, text=True, timeout=60,
                         env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"['forward', 'forward', 'forward'] [1.0, 0.5, {1 / 3!r}] {SID}"


def test_read_file_takes_the_compiled_path(compiled: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / ".cirron" / "spool"
    spool.mkdir(parents=True)
    (spool / "1776486598052509000-7c1bfc448c6b02518a7084c19c4c421f.json").write_bytes(dumps(batch()))
    [bf] = list_batch_files(spool)
    calls = []
    monkeypatch.setattr(columnar, "_cbatch", type("Spy", (), {"parse": staticmethod(
        lambda data, marks: calls.append(marks) or compiled.parse(data, marks))}))
    got = columnar.read_file(bf)
    assert calls == [True] and got is not None
    assert_same_columns(got, decoder_result(dumps(batch()), True))


def test_the_powers_of_ten_header_is_generated() -> None:
    assert (REPO / "cirron" / "spool" / "_pow10.h").read_text() == header()


def test_the_decoders_structs_are_the_ones_the_parser_knows() -> None:
    """_cbatch.c reads the fields of these structs with these types; a change to either side
    must change the other (then update SPAN_FIELDS / MARK_FIELDS / batch() in _cbatch.c)."""
    import msgspec

    def shape(struct: type) -> list[tuple[str, str]]:
        return [(f.name, repr(f.type)) for f in msgspec.structs.fields(struct)]

    from typing import Optional

    opt_str, any_ = repr(Optional[str]), repr(Any)
    ints = [(n, repr(columnar._Int)) for n in columnar.SPAN_COLUMNS[3:]]
    raw = ("attrs", repr(msgspec.Raw))
    assert shape(columnar._Span) == [("id", repr(columnar._Id)), ("parent_id", opt_str), ("name", opt_str), *ints, raw]
    assert shape(columnar._Mark) == [("id", repr(columnar._Id)), ("span_id", opt_str), ("name", opt_str),
                                     ("value", any_), ("value_type", opt_str), ("kind", opt_str),
                                     ("ts_ns", repr(columnar._Int)), ("thread_id", repr(columnar._Int)), raw]
    assert [f.name for f in msgspec.structs.fields(columnar._Batch)] == ["session_id", "spans", "marks", "snapshots"]
    assert [f.name for f in msgspec.structs.fields(columnar._SpansBatch)] == ["session_id", "spans", "snapshots"]


def test_files_are_read_whole_into_the_reused_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cirron.spool import parallel

    path = tmp_path / "b.json"
    path.write_bytes(dumps(batch()))
    with path.open("rb") as fh:
        first = parallel.file_bytes(fh)
        assert isinstance(first, memoryview) and bytes(first) == dumps(batch())
    del first
    real_fstat = os.fstat
    monkeypatch.setattr(parallel.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:])))
    with path.open("rb") as fh:  # it grew after its size was taken: the rest is read too
        assert bytes(parallel.file_bytes(fh)) == dumps(batch())
    monkeypatch.setattr(parallel, "_REUSED_BUFFER_MAX", 5)
    with path.open("rb") as fh:  # too big to keep a buffer for
        assert parallel.file_bytes(fh) == dumps(batch())
