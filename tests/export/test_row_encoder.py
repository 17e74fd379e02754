"""The JSON and CSV exports from Arrow columns write the bytes of the per-record encoders, with the
compiled row encoder (cirron/export/_cjson.c, on the shared cirron/_jtext.h) and with its
pure-Python twin, on sessions that make encoding hard; the compiled encoder checks what it is
given; without the build the twin runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
import numpy as np  # noqa: E402
from spool_factory import BASE_NS, MS, SpoolFactory, hard_session, new_id, thread_mix  # noqa: E402

from cirron._schema import ROOT_SENTINEL  # noqa: E402
from cirron.export import _csv, _json, write_csv, write_json  # noqa: E402
from cirron.export._common import is_columns  # noqa: E402
from cirron.spool import columnar, open_catalog  # noqa: E402
from cirron.spool.stream import iter_chunks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

_cjson = pytest.importorskip("cirron.export._cjson", reason="the compiled JSON row encoder was not built")

#: Every byte below 0x80 (control characters, quote, backslash, DEL), non-ASCII of each UTF-8
#: length, the line separators JavaScript minds, and text that looks like escapes.
NASTY = "".join(map(chr, range(0x80))) + "é ✓ 中 \U0001f600 \u2028\u2029 \\u0041 \\n"
INT64 = (-(1 << 63), (1 << 63) - 1)


def _export(spool: Path, out: Path, *, columns: bool) -> int:
    """``write_json`` of ``spool`` into ``out``; returns how many items came as columns."""
    cat = open_catalog([spool], lambda _m: None)
    seen = []

    def items():
        for item in iter_chunks(cat, cat.sessions, "full", columnar=columns):
            seen.append(is_columns(item))
            yield item

    write_json(items(), out)
    return sum(seen)


def assert_same_json(spool: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """The columns' export, compiled and pure-Python, equals the per-record one; returns how many
    sessions were encoded from columns."""
    _export(spool, tmp / "ref.json", columns=False)
    n = _export(spool, tmp / "c.json", columns=True)
    with monkeypatch.context() as m:
        m.setattr(_json, "_cjson", None)
        assert _export(spool, tmp / "py.json", columns=True) == n
    ref = (tmp / "ref.json").read_bytes()
    assert (tmp / "c.json").read_bytes() == ref
    assert (tmp / "py.json").read_bytes() == ref
    json.loads(ref)
    return n


def _odd_session(f: SpoolFactory) -> None:
    """Escapes everywhere, int64 at both ends, open spans, ids that are not hex, attrs whose raw
    text re-encodes differently, mark values of every type."""
    root = new_id()
    odd_ids = ['id "quoted"', "ü-span", "x\\y\n", "0" * 40, "ABCDEF0123456789ABCDEF0123456789"]
    spans = [f.span("cirron.session", id=root, dur_ns=None, attrs={"sdk_version": "0.1.0", "nasty": NASTY})]
    spans += [f.span(NASTY[i * 11: i * 11 + 13], id=sid, parent_id=root, start_ns=BASE_NS + i * MS,
                     dur_ns=None if i % 2 else MS, index=i, attrs={"k": NASTY[i:], "n": -0.0, "f": 1.50, "big": 2**62})
              for i, sid in enumerate(odd_ids)]
    spans.append(f.span("", parent_id=odd_ids[0], start_ns=INT64[0], end_ns=INT64[1], cpu_ns=INT64[1],
                        gpu_ns=INT64[0], memory_peak_bytes=0, thread_id=INT64[1], pid=INT64[0], rank=-1))
    spans.append(f.span("gpu", parent_id=root, start_ns=BASE_NS + 50 * MS, gpu_ns=7, memory_peak_bytes=1 << 40,
                        index=None, attrs={"deep": {"a": [1, 2.5, {"z": None}]}, "list": [1, "two"]}))
    marks = [f.mark(odd_ids[0], NASTY, 1.0), f.mark(odd_ids[1], "int", 3), f.mark(odd_ids[1], "neg", -(1 << 62)),
             f.mark(odd_ids[2], "bool", True), f.mark(odd_ids[2], "no", False),
             f.mark(odd_ids[3], "text", NASTY, kind="summary"), f.mark(root, "nan", "NaN", value_type="float"),
             f.mark(root, "inf", "-Infinity", value_type="float"), f.mark(root, "tiny", 5e-324),
             f.mark(root, "huge", 1.7976931348623157e308), f.mark(root, "zero", -0.0),
             f.mark(ROOT_SENTINEL, "early", 0.1, attrs={"k": "v", "n": 1e-7}),
             f.mark(odd_ids[4], "big", 2**53 + 1), f.mark(odd_ids[4], "none", None, value_type="float")]
    f.write_batch(spans[:4], marks[:7], session_id=root)
    f.write_raw(f.batch_name(), json.dumps({  # pretty-printed: attrs' raw text holds whitespace
        "schema_version": 1, "sdk_version": "0.1.0", "batch_id": new_id(), "created_ns": BASE_NS,
        "session_id": root, "resource": {"pid": 1}, "spans": spans[4:], "marks": marks[7:], "snapshots": []},
        indent=2, ensure_ascii=False).encode())


def test_odd_session(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _odd_session(factory)
    assert assert_same_json(factory.spool_dir, tmp_path, monkeypatch) == 1


def _export_csv(spool: Path, out: Path, *, columns: bool) -> int:
    cat = open_catalog([spool], lambda _m: None)
    seen = []

    def items():
        for item in iter_chunks(cat, cat.sessions, "export", columnar=columns, marks=False):
            seen.append(is_columns(item))
            yield item

    write_csv(items(), out)
    return sum(seen)


def test_csv_of_odd_and_hard_sessions(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV fields quoted as csv.writer quotes them (commas, quotes, CR, LF), empty for null."""
    _odd_session(factory)
    hard_session(factory)
    thread_mix(factory)
    _export_csv(factory.spool_dir, tmp_path / "ref.csv", columns=False)
    assert _export_csv(factory.spool_dir, tmp_path / "c.csv", columns=True) == 3
    monkeypatch.setattr(_csv, "_cjson", None)
    _export_csv(factory.spool_dir, tmp_path / "py.csv", columns=True)
    ref = (tmp_path / "ref.csv").read_bytes()
    assert (tmp_path / "c.csv").read_bytes() == ref and (tmp_path / "py.csv").read_bytes() == ref
    assert b'"id ""quoted"""' in ref


def test_hard_and_mixed_sessions(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hard_session(factory)
    thread_mix(factory)
    factory.session(epochs=3, split=True)
    factory.session(start_ns=BASE_NS + 10**9, snapshots=True, open_root=True)
    assert assert_same_json(factory.spool_dir, tmp_path, monkeypatch) == 4


def test_bench_spool_in_several_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans out of start order across files (taken through the encoder's row order) and slices
    that end inside a file."""
    from bench_cli import generate

    monkeypatch.setattr(_json, "_SLICE_ROWS", 2_999)
    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 12_000, 12_000, 6, n_sessions=2)
    assert assert_same_json(spool, tmp_path, monkeypatch) == 2


# ---------------------------------------------------------------- the compiled encoder on its own

def _table(n: int, seed: int) -> pa.Table:
    """Columns of every kind with nulls, sliced so that they start at an offset into their buffers."""
    rng = np.random.default_rng(seed)
    words = [NASTY[i: i + int(k)] for i, k in zip(rng.integers(0, len(NASTY), n), rng.integers(0, 9, n))]
    ints = rng.integers(INT64[0], INT64[1], n, dtype=np.int64, endpoint=True)
    ints[:2] = INT64
    null = rng.random(n) < 0.2
    strings = pa.array([None if z else w for z, w in zip(null, words)], pa.string())
    attrs = pa.array(['{"k":' + json.dumps(w, ensure_ascii=False) + "}" for w in words], pa.string())
    t = pa.table({"id": strings, "parent_id": pa.array(words, pa.string()), "name": strings,
                  "start_ns": pa.array(ints, mask=rng.random(n) < 0.3), "end_ns": pa.array(ints[::-1]),
                  "attrs": attrs})
    return t.slice(3, n - 7)


@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_rows_equal_the_python_twin(seed: int) -> None:
    t = _table(500, seed)
    fields = ("id", "parent_id", "name", "start_ns", "end_ns", "attrs")
    prefixes = _json._prefixes(fields)
    n, text = _json._encoded_rows(prefixes, fields, t)
    count, ref = _json._record_texts([(f, _json._json_strings(t[f]) if f in ("id", "parent_id", "name") else
                                       _json._json_attrs(t[f]) if f == "attrs" else _json._json_ints(t[f]))
                                      for f in fields])
    assert n == count == t.num_rows and text == bytes(ref)
    rows = json.loads(b"[" + text + b"]")
    assert [r["start_ns"] for r in rows] == t["start_ns"].to_pylist()
    assert [r["name"] for r in rows] == t["name"].to_pylist()
    # large strings (64-bit offsets) write the same
    large = pa.table({f: t[f].cast(pa.large_string()) if t[f].type == pa.string() else t[f] for f in fields})
    assert _json._encoded_rows(prefixes, fields, large)[1] == text
    # in another order: the rows taken in that order
    order = np.random.default_rng(seed).permutation(t.num_rows).astype(np.int64)
    _, shuffled = _json._encoded_rows(prefixes, fields, t, order=order)
    assert shuffled == _json._encoded_rows(prefixes, fields, t.take(pa.array(order)))[1]


def test_csv_rows() -> None:
    arr = pa.array(["plain", 'q"uote', "com,ma", "cr\rlf\n", None, ""])
    _, offsets, data = arr.buffers()
    ints = pa.array([1, None, -3, 4, 5, 6], pa.int64())
    out = _cjson.encode_rows([(b"S,", "c", arr.buffers()[0], offsets, data, 0),
                              (b",", "i", ints.buffers()[0], None, ints.buffers()[1], 0)], 6,
                             row_end=b",w,v\r\n", row_sep=b"", null=b"")
    assert out == (b'S,plain,1,w,v\r\nS,"q""uote",,w,v\r\nS,"com,ma",-3,w,v\r\nS,"cr\rlf\n",4,w,v\r\n'
                   b"S,,5,w,v\r\nS,,6,w,v\r\n")


def test_joined_and_listed_values() -> None:
    """``j``: texts joined by commas; ``l``: one bytes per row; an empty slice writes nothing."""
    floats = np.array([0.5, -0.0, 1e-7, 5e-324, 1e300])
    joined = json.dumps(floats.tolist())[1:-1].replace(" ", "").encode()
    out = _cjson.encode_rows([(b'{"v":', "j", None, None, joined, 1), (b',"w":', "l", None, None,
                                                                       [b'"a"', b"1", b"true", b"null"], 0)], 4)
    assert json.loads(b"[" + out + b"]") == [{"v": x, "w": w} for x, w in zip(floats[1:], ["a", 1, True, None])]
    assert _cjson.encode_rows([(b'{"v":', "j", None, None, b"", 0)], 0) == b""


def test_compiled_encoder_checks_what_it_is_given() -> None:
    arr = pa.array(["a", "bc"])
    _, offsets, data = arr.buffers()
    ints = pa.array([1, 2], pa.int64()).buffers()[1]
    col = (b'{"s":', "s", None, offsets, data, 0)
    assert _cjson.encode_rows([col], 2) == b'{"s":"a"},{"s":"bc"}'
    assert _cjson.encode_rows([col], 2, np.array([1, 0], dtype=np.int64)) == b'{"s":"bc"},{"s":"a"}'
    with pytest.raises(ValueError, match="more rows"):
        _cjson.encode_rows([col], 3)
    with pytest.raises(ValueError, match="order names a row"):
        _cjson.encode_rows([col], 2, np.array([0, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="one int64 per row"):
        _cjson.encode_rows([col], 2, np.array([0], dtype=np.int64))
    bad_offsets = np.array([0, 5, 1], dtype=np.int32)
    with pytest.raises(ValueError, match="out of bounds"):
        _cjson.encode_rows([(b'{"s":', "s", None, bad_offsets, data, 0)], 2)
    with pytest.raises(ValueError, match="unknown kind"):
        _cjson.encode_rows([(b'{"s":', "x", None, offsets, data, 0)], 1)
    with pytest.raises(ValueError, match="bitmap too short"):
        _cjson.encode_rows([(b'{"i":', "i", b"", None, ints, 0)], 1)
    with pytest.raises(ValueError, match="holds bytes"):
        _cjson.encode_rows([(b'{"l":', "l", None, None, ["text"], 0)], 1)
    with pytest.raises(TypeError):
        _cjson.encode_rows([("not bytes", "s", None, offsets, data, 0)], 1)


# ---------------------------------------------------------------- without the build

_WITHOUT_BUILD = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cirron.export._cjson":
            raise ImportError("hidden: as if the build had failed")
sys.meta_path.insert(0, Hide())
from cirron.export import _json
assert _json._cjson is None
from cirron.export import write_json
from cirron.spool import open_catalog
from cirron.spool.stream import iter_chunks
cat = open_catalog([sys.argv[1]], lambda _m: None)
write_json(iter_chunks(cat, cat.sessions, "full", columnar=True), sys.argv[2])
"""


@pytest.mark.parametrize("how", ["build absent", "CIRRON_PURE_PYTHON=1"])
def test_the_twin_runs_without_the_build(factory: SpoolFactory, tmp_path: Path, how: str) -> None:
    _odd_session(factory)
    hard_session(factory)
    _export(factory.spool_dir, tmp_path / "ref.json", columns=False)
    env = dict(os.environ)
    if how == "build absent":
        cmd = [sys.executable, "-c", _WITHOUT_BUILD, str(factory.spool_dir), str(tmp_path / "out.json")]
    else:
        env["CIRRON_PURE_PYTHON"] = "1"
        cmd = [sys.executable, "-m", "cirron_cli.app", "traces", "export", "--format", "json", "--spool",
               str(factory.spool_dir), "--output", str(tmp_path / "out.json")]
        check = subprocess.run([sys.executable, "-c", "from cirron.export import _json; print(_json._cjson)"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert check.stdout.strip() == "None", check.stderr
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.json").read_bytes() == (tmp_path / "ref.json").read_bytes()


def test_columns_reader_is_what_the_export_reads(factory: SpoolFactory) -> None:
    """The sessions above reach the encoder as columns (else the comparisons test nothing new)."""
    _odd_session(factory)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    assert columnar.read_columns(cat.sessions[0]) is not None


# ---------------------------------------------------------------- writing

def test_marks_are_appended_through_memory_where_the_kernel_cannot_copy(
        factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hard_session(factory)
    _export(factory.spool_dir, tmp_path / "kernel.json", columns=True)
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    _export(factory.spool_dir, tmp_path / "memory.json", columns=True)
    assert calls and (tmp_path / "memory.json").read_bytes() == (tmp_path / "kernel.json").read_bytes()


def test_a_failed_write_fails_the_export_and_leaves_nothing(factory: SpoolFactory, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The writes run on a thread: a disk-full error there still ends the export, with no output
    file and no temporary file left."""
    from cirron.export import _common

    factory.session(epochs=3)
    real = _common.WriteBehind.write
    count = []

    def full(self: object, fh: object, data: object) -> None:
        count.append(1)
        if len(count) == 2:
            def broken(_data: object) -> None:
                raise OSError(28, "No space left on device")
            fh = type("Full", (), {"write": staticmethod(broken)})()
        real(self, fh, data)

    monkeypatch.setattr(_common.WriteBehind, "write", full)
    out = tmp_path / "out" / "t.json"
    out.parent.mkdir()
    with pytest.raises(OSError, match="No space left"):
        _export(factory.spool_dir, out, columns=True)
    assert list(out.parent.iterdir()) == []
    import threading
    assert not [t for t in threading.enumerate() if t.name == "cirron-write-behind"]
