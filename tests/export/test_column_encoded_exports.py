"""OTLP/JSON and Perfetto exports encoded from whole columns (cirron.export._otlp_columns,
cirron.export._perfetto_columns) write the same bytes as the per-record encoders, on the rebuilt
sessions and on the streamed path, for spools with what makes encoding hard: duplicates, open
spans, marks written before their span, request spans, non-float and non-finite values, unicode
and escapes, odd attrs, overlapping spans, other writers' spools."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
from spool_factory import BASE_NS, MS, SpoolFactory, hard_session, new_id, thread_mix  # noqa: E402

from cirron import export as ex  # noqa: E402
from cirron._schema import ROOT_SENTINEL  # noqa: E402
from cirron.export import _otlp_columns, _perfetto  # noqa: E402
from cirron.spool import columnar  # noqa: E402
from cirron.spool.catalog import open_catalog  # noqa: E402
from cirron.spool.reader import list_batch_files  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _write(fmt: str, items: list, path: Path, base: int | None) -> None:
    if fmt == "otel":
        ex.write_otlp_json(items, path)
    else:
        ex.write_perfetto(items, path, base_ns=base)


def assert_same(spool: Path, tmp: Path, fmt: str, monkeypatch: pytest.MonkeyPatch, rebuilt: bool = True) -> int:
    """The column-encoded export of ``spool`` equals the rebuilt sessions' and the streamed one's;
    returns how many sessions were encoded from columns."""
    cat = open_catalog([spool], lambda _m: None)
    infos = list(cat.sessions)
    base = min((s.started_ns for s in infos if type(s.started_ns) is int), default=None)
    encoded = []
    module = _otlp_columns if fmt == "otel" else _perfetto_module()
    real = module.write_spans if fmt == "otel" else module.session_events

    def spy(*args, **kwargs):
        encoded.append(1)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(module, "write_spans" if fmt == "otel" else "session_events", spy)
        _write(fmt, infos, tmp / "fast.json", base)
    _write(fmt, [cat.load(s) for s in infos], tmp / "rebuilt.json", base)
    with monkeypatch.context() as m:
        m.setattr(columnar, "MAX_SESSION_BYTES", 0)  # every session the streamed way
        m.setattr(ex, "_piece_spans", lambda _fh, _info: None)  # (test_piece_encoded_exports.py: the pieces)
        m.setattr(_perfetto, "_piece_events", lambda *_a: None)
        _write(fmt, infos, tmp / "streamed.json", base)
    fast = (tmp / "fast.json").read_bytes()
    if rebuilt:
        assert fast == (tmp / "rebuilt.json").read_bytes()
    assert fast == (tmp / "streamed.json").read_bytes()
    json.loads(fast)
    return len(encoded)


def _perfetto_module():
    from cirron.export import _perfetto_columns

    return _perfetto_columns


FORMATS = ["otel", "perfetto"]




def odd_session(factory: SpoolFactory) -> None:
    """Escapes and unicode in names, ids and attrs; attrs that are not objects, deep, huge or
    carry the keys the encoders add; values of every type; a mark on the sentinel, a mark id
    rewritten, a span rewritten open after it closed."""
    f = factory
    root, epoch = new_id(), new_id()
    names = ["a,b", 'say "hi"', "two\nlines", "tab\there", "back\\slash", "ünïcode ✓ \u2028", "\x7f", ""]
    deep: dict = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]
    spans = [f.span("cirron.session", id=root, dur_ns=10**9, attrs={"sdk_version": "0.1.0", "lr": 1e-05}),
             f.span("epoch", id=epoch, parent_id=root, index=0, dur_ns=10**8,
                    attrs={"nested": {"deep": [1, 2.5, {"z": None}]}, "neg": -0.0, "none": None})]
    spans += [f.span(n, parent_id=epoch, start_ns=BASE_NS + i * MS, thread_id=i % 3,
                     attrs={"label": n, "big": 2**62, "huge": [2**64], "index": i, "span_id": "mine"})
              for i, n in enumerate(names)]
    spans += [f.span("batch", parent_id=epoch, index=7, attrs={"error": "ValueError: bad \"one\""}),
              f.span("step", parent_id=epoch, attrs={"error": None, "cirron.open": 1}),
              f.span("deep", parent_id=epoch, attrs=deep),
              f.span("id\"quote", id='odd"id\\', parent_id=epoch, start_ns=BASE_NS + 5 * MS, dur_ns=None)]
    spans[-2]["attrs"] = [1, 2]  # not an object
    spans[-3]["memory_peak_bytes"] = 2**40
    spans[-3]["gpu_ns"] = 12
    dup = new_id()
    marks = [f.mark(epoch, "loss", "NaN", value_type="float"),
             f.mark(epoch, "inf", "-Infinity", value_type="float"),
             f.mark(epoch, "count", 3), f.mark(epoch, "flag", True), f.mark(epoch, "huge", 2**70, value_type="int"),
             f.mark(epoch, "text", 'a "quoted", text ✓', attrs={"value": 1, "kind": 2, "unit": "ms"}),
             f.mark(ROOT_SENTINEL, "early", 1.0),
             f.mark(epoch, "", 0.5, kind=None),  # type: ignore[arg-type]
             f.mark(epoch, "small", 1e-300), f.mark(epoch, "int-ish", 1e16), f.mark(epoch, "neg", -0.0),
             f.mark(epoch, "dup", 1.0, id=dup)]
    f.write_batch(spans[:4], marks, session_id=root)
    f.write_batch([dict(spans[1], end_ns=None)] + spans[4:], [f.mark(epoch, "dup", 9.0, id=dup),
                                                              f.mark('odd"id\\', "on-odd", 2.0)],
                  session_id=root)


def rootless_session(factory: SpoolFactory) -> str:
    """No session root: marks on the sentinel hang from a placeholder span."""
    f = factory
    sid = new_id()
    a = f.span("work", start_ns=BASE_NS + 5 * MS)
    f.write_batch([a], [f.mark(ROOT_SENTINEL, "orphan", 1.0, ts_ns=BASE_NS + 7 * MS),
                        f.mark(a["id"], "own", 2.0, ts_ns=BASE_NS + 6 * MS)], session_id=sid)
    f.write_batch([], [f.mark(ROOT_SENTINEL, "orphan2", "x", ts_ns=BASE_NS + 3 * MS)], session_id=sid)
    return sid


@pytest.mark.parametrize("fmt", FORMATS)
def test_hard_sessions(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str):
    hard_session(factory)
    factory.session(start_ns=BASE_NS + 10**12, split=True)
    thread_mix(factory)
    assert assert_same(factory.spool_dir, tmp_path, fmt, monkeypatch) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_values_escapes_and_attrs(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      fmt: str):
    odd_session(factory)
    assert assert_same(factory.spool_dir, tmp_path, fmt, monkeypatch) == 1


def test_placeholder_spans_of_a_session_without_root(factory: SpoolFactory):
    """Marks on the sentinel of a session without root hang from a placeholder span. The index
    makes such a session the ``(orphan spans)`` one and never streams it, so its columns are read
    here directly, under the batches' session id (which makes the sentinel marks its own)."""
    import dataclasses
    import io

    import orjson

    from cirron.export._otlp import iter_encoded_spans

    sid = rootless_session(factory)
    cat = open_catalog([factory.spool_dir], lambda _m: None)
    (info,) = cat.sessions
    sess = cat.load(info)
    out = io.BytesIO()
    n = _otlp_columns.write_spans(out, columnar._read(dataclasses.replace(info, id=sid), True), info.last_ns)
    ref = [orjson.dumps(s) for s in iter_encoded_spans(sid, sess.spans, sess.marks, open_end_ns=sess.last_ns)]
    assert out.getvalue() == b",".join(ref) and n == len(ref) == 2
    placeholder = json.loads(ref[-1])
    assert placeholder["name"] == "(span not written)"
    assert [e["name"] for e in placeholder["events"]] == ["orphan", "orphan2"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_vendor_spools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str):
    dst = tmp_path / "project"
    shutil.copytree(FIXTURES / "vendor" / "project", dst, symlinks=True)
    # (no comparison with the rebuilt sessions here: a SessionInfo of these sessions lacks the
    # resource's rank a rebuilt Session has, so the resource differs on every path)
    assert_same(dst / ".cirron" / "spool", tmp_path, fmt, monkeypatch, rebuilt=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bench_spool_in_several_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str):
    from bench_cli import generate

    monkeypatch.setattr(_otlp_columns, "SLICE_SPANS", 1_000)
    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 12_000, 12_000, 6, n_sessions=2)
    assert assert_same(spool, tmp_path, fmt, monkeypatch) == 2


def _random_track(rng, n: int, laminar: bool):
    """Spans of one thread sorted as the encoder sorts them (start, longest first): nested
    intervals when ``laminar``, else some that cross; zero-length ones and equal ends included."""
    import numpy as np

    spans = []

    def fill(lo: int, hi: int, depth: int) -> None:
        t = lo
        while t < hi and len(spans) < n:
            length = int(rng.integers(0, max(1, (hi - t) // 2) + 1))
            spans.append((t, t + length))
            if depth < 4 and length > 2:
                fill(t, t + length, depth + 1)
            t += length + int(rng.integers(0, 3))

    fill(0, 10_000, 0)
    if not laminar:
        for _ in range(3):
            a = int(rng.integers(1, 9_000))
            spans.append((a, a + int(rng.integers(1, 3_000))))
    arr = np.array(spans, dtype=np.int64)
    order = np.lexsort((np.arange(len(arr)), -arr[:, 1], arr[:, 0]))
    return arr[order, 0], arr[order, 1]


def test_sorted_nesting_equals_the_sweep():
    """Where the sort-based order says the spans nest, it is the sweep's order on one track; on
    nested spans it always says so."""
    import numpy as np

    from cirron.export._perfetto_columns import _nested_order, _sweep

    rng = np.random.default_rng(7)
    said_nested = 0
    for trial in range(300):
        laminar = trial % 2 == 0
        start, end = _random_track(rng, int(rng.integers(1, 80)), laminar)
        codes, lanes, _opened = _sweep(start.data, end.data, np.full(len(start), -1).data)
        code = np.frombuffer(codes, dtype=np.int64)
        got = _nested_order(start, end)
        one_track = bool((np.frombuffer(lanes, dtype=np.int64) == 1).all())
        assert (got is not None) == one_track
        if laminar:
            assert got is not None
        if got is not None:
            said_nested += 1
            kinds, local = got
            assert kinds.tolist() == (code & 3).tolist() and local.tolist() == (code >> 2).tolist()
    assert said_nested > 150


def test_non_finite_attrs_of_a_non_strict_writer_are_kept(factory: SpoolFactory, tmp_path, monkeypatch):
    """A bare ``Infinity`` in a span's attrs (a writer that is not strict JSON): the raw attrs the
    columns carry would say ``null``, so the session is read the reference way and keeps it."""
    root = factory.session()["root"]
    span = factory.span("step", parent_id=root, attrs={"ratio": float("inf"), "n": 3})
    name = factory.batch_name()
    factory.write_raw(name, json.dumps({"schema_version": 1, "session_id": root, "spans": [span],
                                        "marks": []}).encode())
    (bf,) = [b for b in list_batch_files(factory.spool_dir) if b.path.name == name]
    with pytest.raises(columnar.Unsupported):
        columnar.read_file(bf)
    assert assert_same(factory.spool_dir, tmp_path, "otel", monkeypatch) == 0
    doc = json.loads((tmp_path / "fast.json").read_text())
    (step,) = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"] if s["name"] == "step"]
    assert {"key": "ratio", "value": {"doubleValue": "Infinity"}} in step["attributes"]


def random_session(factory: SpoolFactory, seed: int) -> None:
    """A session of random trees on a few threads of two ranks: nested spans, spans that overlap
    without nesting (some with their parent on another thread), zero-length and open spans, equal
    starts and ends; odd names, ids, attrs and mark values; written in several batches, some spans
    open first and closed later."""
    import random

    rng = random.Random(seed)
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=10**9, attrs={"sdk_version": "0.1.0"})
    rid = root["id"]
    names = ["step", "forward", "fetch", 'q"uote', "new\nline", "ünï ✓", "\x01ctl", "back\\slash", ""]
    attrs = [{}, {"lr": 0.001}, {"batch_size": 32, "tag": "a\tb"}, {"index": 3}, {"span_id": "x"},
             {"cirron.open": False}, {"deep": {"x": [1, {"y": None}]}}, {"big": 2**63 - 1}]
    spans, marks = [root], []
    for k in range(rng.randint(20, 120)):
        parent = rng.choice(spans)
        start = BASE_NS + rng.choice([0, rng.randrange(0, 10**9, 1000), parent["start_ns"]])
        dur = rng.choice([0, None, rng.randrange(1, 10**8), rng.randrange(1, 10**6) * 1000])
        span_id = rng.choice([new_id(), new_id(), f'odd"{k}\\id'])
        spans.append(f.span(rng.choice(names), id=span_id, parent_id=parent["id"], start_ns=start, dur_ns=dur,
                            index=rng.choice([None, k, -k]), attrs=dict(rng.choice(attrs)),
                            thread_id=rng.choice([7, 7, 7, 9, -3, 0]), rank=rng.choice([0, 0, 1])))
    values = [0.5, -0.0, 1e-300, 1e16, 3, True, "text \"v\"", "NaN", "Infinity", "-Infinity", 2**70]
    for k in range(rng.randint(5, 60)):
        v = rng.choice(values)
        vt = "float" if v in ("NaN", "Infinity", "-Infinity") else ("int" if v == 2**70 else None)
        marks.append(f.mark(rng.choice(spans)["id"] if k % 7 else ROOT_SENTINEL, rng.choice(names[:6]), v,
                            value_type=vt, ts_ns=BASE_NS + rng.randrange(-10**6, 2 * 10**9)))
    late = [s for s in spans[1:] if s["end_ns"] is not None and rng.random() < 0.2]
    cut = len(spans) // 2
    f.write_batch([dict(s, end_ns=None) if s in late else s for s in spans[:cut]], marks[:len(marks) // 2],
                  session_id=rid)
    f.write_batch(spans[cut:], marks[len(marks) // 2:], session_id=rid)
    f.write_batch(late, [], session_id=rid)


@pytest.fixture(params=["compiled", "python"])
def perfetto_encoder(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each column-encoded perfetto test with the compiled encoder and with its pure-Python twin."""
    from cirron.export import _perfetto_columns

    if request.param == "python":
        monkeypatch.setattr(_perfetto_columns, "_cperfetto", None)
    elif _perfetto_columns._cperfetto is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    return request.param


@pytest.mark.parametrize("seed", range(12))
def test_perfetto_random_sessions(factory: SpoolFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  perfetto_encoder: str, seed: int):
    random_session(factory, seed)
    # a session 150 days on: its times are too far from the base for the compiled encoder to
    # write them itself, so they go through orjson
    factory.session(start_ns=BASE_NS + (10**9 if seed % 2 else 150 * 86_400 * 10**9), split=True)
    assert assert_same(factory.spool_dir, tmp_path, "perfetto", monkeypatch) == 2


def test_perfetto_encoders_agree_on_hard_sessions(factory: SpoolFactory, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, perfetto_encoder: str):
    hard_session(factory)
    thread_mix(factory)
    odd_session(factory)
    random_session(factory, 99)
    assert assert_same(factory.spool_dir, tmp_path, "perfetto", monkeypatch) == 4


def test_compiled_and_python_perfetto_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The bench spool (overlapping epochs, so every session takes the sweep) exported both ways."""
    from bench_cli import generate

    from cirron.export import _perfetto_columns

    if _perfetto_columns._cperfetto is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 20_000, 20_000, 6, n_sessions=2)
    monkeypatch.setattr(_perfetto_columns, "SLICE_EVENTS", 5_000)
    from cirron.export import _perfetto_native

    monkeypatch.setattr(_perfetto_native, "SLICE_EVENTS", 3_000)
    infos = list(open_catalog([spool], lambda _m: None).sessions)
    base = min(s.started_ns for s in infos)
    ex.write_perfetto(infos, tmp_path / "compiled.json", base_ns=base)
    monkeypatch.setattr(_perfetto_columns, "_cperfetto", None)
    ex.write_perfetto(infos, tmp_path / "python.json", base_ns=base)
    data = (tmp_path / "compiled.json").read_bytes()
    assert data == (tmp_path / "python.json").read_bytes()
    assert b"(overlapping 1)" in data and data.count(b'"ph":"B"') > 10_000


def test_compiled_sweep_equals_the_python_sweep():
    """The compiled sweep gives the Python sweep's events, lanes and new lanes on random threads,
    parents included (the parent's lane is tried first)."""
    import numpy as np

    from cirron.export import _perfetto_columns
    from cirron.export._perfetto_columns import _sweep

    if _perfetto_columns._cperfetto is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    rng = np.random.default_rng(3)
    for trial in range(300):
        start, end = _random_track(rng, int(rng.integers(1, 80)), laminar=trial % 3 == 0)
        n = len(start)
        parent = np.where(rng.random(n) < 0.5, rng.integers(-1, n, n), -1).astype(np.int64)
        codes, lanes, opened = _sweep(start.data, end.data, parent.data)
        order = np.arange(n, dtype=np.int64)
        c_codes, c_lanes, c_opened = _perfetto_columns._cperfetto.sweep(
            order, np.zeros(n, dtype=np.int32), start, end, parent, np.array([0, n], dtype=np.int64))
        assert np.frombuffer(c_codes, dtype=np.int64).tolist() == np.frombuffer(codes, dtype=np.int64).tolist()
        assert (np.frombuffer(c_lanes, dtype=np.int32) + 1).tolist() == np.frombuffer(lanes, dtype=np.int64).tolist()
        assert [(place, lane) for place, _t, lane in c_opened] == opened


def test_compiled_encoder_refuses_bad_columns():
    """Columns that do not fit together are a ValueError, never a read past a buffer."""
    import numpy as np

    from cirron.export import _perfetto_columns

    c = _perfetto_columns._cperfetto
    if c is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    one = dict(name_off=np.array([0, 1], dtype=np.int64), names=b"a", pid=np.zeros(1, dtype=np.int32),
               tid=np.zeros(1, dtype=np.int64), starts=b"[0.0]", ends=b"[1.0]", attr=np.zeros(1, dtype=np.int32),
               args_off=np.array([0, 0], dtype=np.int64), args=b"", slow=np.zeros(1, dtype=np.uint8),
               index=np.zeros(1, dtype=np.int64), has_index=np.zeros(1, dtype=np.uint8),
               id_off=np.array([0, 1], dtype=np.int64), ids=b"x", has_id=np.ones(1, dtype=np.uint8),
               open=np.zeros(1, dtype=np.uint8), exact={})
    spans = c.Spans(**one)
    assert spans.encode(np.array([0, 1], dtype=np.int64), [], 0) == (
        b'{"ph":"B","name":"a","cat":"cirron","pid":0,"tid":0,"ts":0.0},'
        b'{"ph":"E","name":"a","cat":"cirron","pid":0,"tid":0,"ts":1.0,"args":{"span_id":"x"}}', 1)
    for bad in (dict(name_off=np.array([0, 5], dtype=np.int64)), dict(starts=b"[0.0,1.0]"), dict(ends=b"0.0"),
                dict(attr=np.ones(1, dtype=np.int32)), dict(pid=np.zeros(2, dtype=np.int32))):
        with pytest.raises(ValueError):
            c.Spans(**{**one, **bad})
    with pytest.raises(ValueError, match="tid: 12 bytes is not a whole number of 8-byte values"):
        c.Spans(**{**one, "tid": b"\0" * 12})  # a buffer cut inside a value
    with pytest.raises(ValueError):
        spans.encode(np.array([4], dtype=np.int64), [], 0)  # row 1: not in these columns
    with pytest.raises(ValueError):
        spans.encode(np.array([3], dtype=np.int64), [], 0)  # text 0: none given
    with pytest.raises(ValueError):
        c.sweep(np.array([5], dtype=np.int64), np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int64),
                np.zeros(1, dtype=np.int64), np.full(1, -1, dtype=np.int64), np.array([0, 1], dtype=np.int64))


def test_perfetto_without_the_compiled_encoder(tmp_path: Path):
    """With CIRRON_PURE_PYTHON=1, or where the module was not built (its import fails), the
    pure-Python twin writes the same file."""
    import os
    import subprocess

    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 3_000, 3_000, 6, n_sessions=2)
    root = Path(__file__).resolve().parents[2]
    code = ("import sys\n"
            "if sys.argv[2] == 'absent': sys.modules['cirron.export._cperfetto'] = None\n"
            "from cirron.export import _perfetto_columns\n"
            "from cirron.spool.catalog import open_catalog\n"
            "from cirron import export\n"
            "infos = list(open_catalog([sys.argv[1]], lambda m: None).sessions)\n"
            "export.write_perfetto(infos, sys.argv[3], base_ns=min(s.started_ns for s in infos))\n"
            "print(_perfetto_columns._cperfetto is None)\n")
    outs = {}
    for how in ("default", "pure", "absent"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "cli")]))
        env.pop("CIRRON_PURE_PYTHON", None)
        if how == "pure":
            env["CIRRON_PURE_PYTHON"] = "1"
        out = tmp_path / f"{how}.json"
        r = subprocess.run([sys.executable, "-c", code, str(spool), how, str(out)], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs[how] = (r.stdout.strip(), out.read_bytes())
    assert outs["pure"][0] == outs["absent"][0] == "True"
    assert outs["pure"][1] == outs["absent"][1] == outs["default"][1]


def _one_span_columns(n: int, **over):
    import numpy as np

    cols = dict(name_off=np.zeros(n + 1, dtype=np.int64), names=b"", pid=np.zeros(n, dtype=np.int32),
                tid=np.zeros(n, dtype=np.int64), starts=np.zeros(n, dtype=np.int64), ends=np.zeros(n, dtype=np.int64),
                attr=np.zeros(n, dtype=np.int32), args_off=np.array([0, 0], dtype=np.int64), args=b"",
                slow=np.zeros(1, dtype=np.uint8), index=np.zeros(n, dtype=np.int64), has_index=np.zeros(n, dtype=np.uint8),
                id_off=np.zeros(n + 1, dtype=np.int64), ids=b"", has_id=np.zeros(n, dtype=np.uint8),
                open=np.zeros(n, dtype=np.uint8), exact={})
    cols.update(over)
    return cols


def test_compiled_times_are_orjsons():
    """Times within TIME_INT_LIMIT of the base, which the compiled encoder writes itself, read
    exactly as orjson writes (ns - base) / 1000.0: every magnitude, both signs, the limit."""
    import numpy as np
    import orjson

    from cirron.export import _perfetto_columns, _perfetto_native

    c = _perfetto_columns._cperfetto
    if c is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    rng = np.random.default_rng(11)
    limit = _perfetto_native.TIME_INT_LIMIT
    k = np.concatenate([np.arange(-3000, 3000)] + [rng.integers(-(2**e), 2**e, 3000) for e in range(10, 53)]
                       + [np.arange(10**p - 1500, 10**p + 1500) for p in range(3, 16)]
                       + [np.array([limit - 1, 1 - limit, limit - 1000, limit - 999])]).astype(np.int64)
    k = k[np.abs(k) < limit]
    n = len(k)
    events = np.arange(n, dtype=np.int64) * 4  # a begin event per span
    mine, _ = c.Spans(**_one_span_columns(n, starts=k)).encode(events, [], 0)
    ref, _ = c.Spans(**_one_span_columns(n, starts=orjson.dumps(k.astype(np.float64) / 1000.0,
                                                                option=orjson.OPT_SERIALIZE_NUMPY))).encode(events, [], 0)
    assert mine == ref
    with pytest.raises(ValueError):
        c.Spans(**_one_span_columns(1, starts=np.array([limit], dtype=np.int64)))


def test_compiled_tie_order_is_the_sort():
    """Rows sorted by thread and start, then longest first and by row: the quick sort of the
    compiled path equals the lexsort of the pure-Python one, big runs of equal starts included."""
    import numpy as np

    from cirron.export import _perfetto_columns

    c = _perfetto_columns._cperfetto
    if c is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    rng = np.random.default_rng(5)
    for _trial in range(60):
        n = int(rng.integers(1, 3000))
        start = rng.integers(0, int(rng.choice([3, 50, 10**9])), n).astype(np.int64)
        end = start + rng.integers(0, int(rng.choice([2, 100])), n)
        track = rng.integers(0, int(rng.choice([1, 3])), n).astype(np.int32)
        want = np.lexsort((np.arange(n), -end, start, track))
        order = np.argsort(start, kind="stable")
        order = order[np.argsort(track[order], kind="stable")].astype(np.int64)
        c.sort_ties(order, track, start, end)
        assert order.tolist() == want.tolist()


def test_perfetto_thread_ids_beyond_overlap_track_ids(factory: SpoolFactory, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, perfetto_encoder: str):
    """A thread id whose overlap tracks' ids an int64 cannot hold: the compiled encoder leaves the
    session to the per-record one, the same file comes out."""
    root = factory.span("cirron.session", dur_ns=10 * MS)
    kids = [factory.span("step", parent_id=root["id"], start_ns=BASE_NS + i * MS, dur_ns=MS, thread_id=2**60 + i % 2)
            for i in range(4)]
    factory.write_batch([root, *kids], [factory.mark(kids[0]["id"], "loss", 0.5)], session_id=root["id"])
    assert_same(factory.spool_dir, tmp_path, "perfetto", monkeypatch)
    assert b'"tid":1152921504606846977' in (tmp_path / "fast.json").read_bytes()


def test_compiled_encoders_write_without_the_gil_and_take_it_back_for_given_texts():
    """A span whose args are given whole, a thread name, a mark given whole: the encoder takes
    the GIL back for them; a missing one is an error, after which the same columns encode again;
    several threads encode their own columns at once, each getting what one thread gets."""
    import threading

    import numpy as np

    from cirron.export import _perfetto_columns

    c = _perfetto_columns._cperfetto
    if c is None:
        pytest.skip("the compiled perfetto encoder is not built here")
    n = 2000
    names = b"".join(b"s%d" % i for i in range(n))
    name_off = np.concatenate([[0], np.cumsum([len(b"s%d" % i) for i in range(n)])]).astype(np.int64)
    attr = (np.arange(n) % 2).astype(np.int32)  # code 1: args given whole
    cols = dict(name_off=name_off, names=names, pid=np.zeros(n, dtype=np.int32), tid=np.ones(n, dtype=np.int64),
                starts=np.arange(n, dtype=np.int64) * 1000, ends=np.arange(n, dtype=np.int64) * 1000 + 500,
                attr=attr, args_off=np.array([0, 8, 8], dtype=np.int64), args=b'"a":1.5,',
                slow=np.array([0, 1], dtype=np.uint8), index=np.arange(n, dtype=np.int64),
                has_index=np.ones(n, dtype=np.uint8), id_off=np.arange(n + 1, dtype=np.int64) * 2,
                ids=b"ab" * n, has_id=np.ones(n, dtype=np.uint8), open=np.zeros(n, dtype=np.uint8),
                exact={i: b'{"given":%d}' % i for i in range(1, n, 2)})
    events = np.concatenate([[3], np.arange(n, dtype=np.int64) * 4, np.arange(n, dtype=np.int64) * 4 + 1])
    spans = c.Spans(**cols)
    data, begun = spans.encode(events, [b'{"thread":"t"}'], 0)
    assert begun == n
    got = data.split(b",{")
    assert got[0] == b'{"thread":"t"}'
    assert b'"ts":0.5,"args":{"a":1.5,"index":0,"span_id":"ab"}}' in data
    assert data.endswith(b'"ts":1999.5,"args":{"given":1999}}')
    broken = c.Spans(**{**cols, "exact": {}})
    with pytest.raises(KeyError):
        broken.encode(events, [b"{}"], 0)
    assert broken.encode(events[:n + 1], [b"{}"], 0)[1] == n  # begins only: no args needed; usable again

    results: dict[int, bytes] = {}

    def encode(k: int) -> None:
        own = c.Spans(**cols)
        results[k] = b"".join(own.encode(events[a:a + 97], [b'{"thread":"t"}'], 0)[0] for a in range(0, len(events), 97))

    threads = [threading.Thread(target=encode, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    one = b"".join(spans.encode(events[a:a + 97], [b'{"thread":"t"}'], 0)[0] for a in range(0, len(events), 97))
    assert results == dict.fromkeys(range(4), one)

    marks = c.Marks(name_off=np.array([0, 1, 2], dtype=np.int64), names=b"ab", pid=np.zeros(2, dtype=np.int32),
                    ts=np.array([0, 1000], dtype=np.int64), values=b"[1.0,2.0]", plain=np.array([1, 0], dtype=np.uint8),
                    exact={1: b'{"given":"mark"}'})
    assert marks.encode(0, 2) == b'{"ph":"C","name":"a","pid":0,"ts":0.0,"args":{"a":1.0}},{"given":"mark"}'
    lost = c.Marks(name_off=np.array([0, 1, 2], dtype=np.int64), names=b"ab", pid=np.zeros(2, dtype=np.int32),
                   ts=np.array([0, 1000], dtype=np.int64), values=b"[1.0,2.0]", plain=np.array([1, 0], dtype=np.uint8),
                   exact={1: "not bytes"})
    with pytest.raises(TypeError):
        lost.encode(0, 2)
    assert lost.encode(0, 1).startswith(b'{"ph":"C"')


def test_encoded_ahead_keeps_the_order_and_raises_in_turn():
    """Slices encoded one ahead in a worker thread come out in order, empty ones left out, events
    already encoded passed through; a failing slice raises when its turn comes, after the ones before."""
    import threading

    from cirron.export._perfetto_columns import Encoded
    from cirron.export._perfetto_native import encoded_ahead

    workers = set()

    def slice_(k: int):
        def job():
            workers.add(threading.current_thread().name)
            return None if k == 2 else Encoded(b"%d" % k, 1)
        return job

    got = list(encoded_ahead([slice_(0), b"made", slice_(1), slice_(2), Encoded(b"x", 0), slice_(3)]))
    assert [g if isinstance(g, bytes) else g.data for g in got] == [b"0", b"made", b"1", b"x", b"3"]
    assert workers and threading.current_thread().name not in workers

    def boom():
        raise ValueError("slice 2")

    out = []
    with pytest.raises(ValueError, match="slice 2"):
        for ev in encoded_ahead([slice_(0), slice_(1), boom, slice_(3)]):
            out.append(ev.data)
    assert out == [b"0", b"1"]
