"""`cirron traces export`: parquet (read back with DuckDB), OTLP/JSON, CSV, JSON, Perfetto."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory
from typer.testing import CliRunner

from cirron.export import CSV_COLUMNS
from cirron.export._otlp import derive_span_id, derive_trace_id, encode_resource_spans
from cirron.export.otlp_http import request_to_protobuf
from cirron_cli.app import app

runner = CliRunner()


def run(*args: str):
    r = runner.invoke(app, list(args))
    assert "Traceback" not in r.output
    return r


def export(factory: SpoolFactory, fmt: str, out: Path, *extra: str):
    r = run("traces", "export", "--format", fmt, "--output", str(out), "--spool", str(factory.spool_dir), *extra)
    assert r.exit_code == 0, r.output
    return r


def test_parquet_three_files_readable_by_duckdb(factory: SpoolFactory, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    s = factory.session(snapshots=True, split=True)
    out = tmp_path / "exported"
    export(factory, "parquet", out)
    assert sorted(p.name for p in out.iterdir()) == ["marks.parquet", "snapshots.parquet", "spans.parquet"]
    con = duckdb.connect()
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{out}/spans.parquet')").fetchall())
    for c in ("start_ns", "end_ns", "duration_ns", "cpu_ns"):
        assert types[c] == "BIGINT"
    rows = con.execute(f"SELECT name, COUNT(*), AVG(duration_ns)/1e6 FROM '{out}/spans.parquet' GROUP BY name ORDER BY name").fetchall()
    assert {r[0]: r[1] for r in rows} == {"cirron.session": 1, "epoch": 2, "data_load": 2, "forward": 2,
                                              "backward": 2, "optimizer_step": 2}
    assert {r[0]: r[2] for r in rows}["forward"] == pytest.approx(5.1)
    sid = con.execute(f"SELECT DISTINCT session_id FROM '{out}/spans.parquet'").fetchall()
    assert sid == [(s["root"],)]
    attrs = con.execute(f"SELECT attrs_json FROM '{out}/spans.parquet' WHERE name='data_load' LIMIT 1").fetchone()[0]
    assert json.loads(attrs) == {"data_load_ns": 4541667}
    m = con.execute(f"SELECT name, value, kind, ts_ns FROM '{out}/marks.parquet' ORDER BY ts_ns").fetchall()
    assert len(m) == 4 and m[0][0] == "loss" and m[0][1] == pytest.approx(0.6841)
    assert con.execute(f"SELECT COUNT(*), MIN(mean) FROM '{out}/snapshots.parquet'").fetchone()[0] == 2


def test_otlp_json_shape(factory: SpoolFactory, tmp_path):
    s = factory.session(epochs=1)
    root = s["root"]
    # an error span, a NaN mark and non-hex ids
    err = factory.span("step", id="not-hex-id", parent_id=root, start_ns=BASE_NS + 90 * MS,
                       attrs={"error": "ValueError: boom", "ratio": float("inf"), "tags": ["a", 1], "nested": {"k": True}})
    mark = factory.mark("not-hex-id", "loss", "NaN", value_type="float")
    doc = {"schema_version": 1, "session_id": root, "spans": [err], "marks": [mark]}
    factory.write_raw(factory.batch_name(), json.dumps(doc).encode())  # bare Infinity: a non-strict writer
    out = tmp_path / "t.otlp.json"
    export(factory, "otel", out)
    doc = json.loads(out.read_text())
    (rs,) = doc["resourceSpans"]
    rattrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
    assert rattrs["service.name"] == {"stringValue": "cirron"}
    assert rattrs["cirron.session.id"] == {"stringValue": root}
    assert rattrs["telemetry.sdk.name"] == {"stringValue": "cirron"}
    assert rattrs["telemetry.sdk.language"] == {"stringValue": "python"}
    assert rattrs["telemetry.sdk.version"] == {"stringValue": "0.1.0"}  # the session's writer, not the exporter
    assert rattrs["process.pid"] == {"intValue": "1797"}
    (ss,) = rs["scopeSpans"]
    assert ss["scope"]["name"] == "cirron"
    spans = {sp["name"]: sp for sp in ss["spans"]}
    trace_id = derive_trace_id(root)
    for sp in ss["spans"]:
        assert sp["traceId"] == trace_id and len(sp["traceId"]) == 32
        assert re.fullmatch("[0-9a-f]{16}", sp["spanId"])
        assert isinstance(sp["startTimeUnixNano"], str) and isinstance(sp["endTimeUnixNano"], str)
        assert sp["kind"] == 1
    assert "parentSpanId" not in spans["cirron.session"]
    assert spans["epoch"]["parentSpanId"] == derive_span_id(root)
    step = spans["step"]
    assert step["spanId"] == derive_span_id("not-hex-id")
    assert step["status"] == {"code": 2, "message": "ValueError: boom"}
    assert "status" not in spans["forward"]
    a = {x["key"]: x["value"] for x in step["attributes"]}
    assert a["ratio"] == {"doubleValue": "Infinity"}
    assert a["tags"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}
    assert a["nested"] == {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": True}}]}}
    (ev,) = step["events"]
    assert ev["name"] == "loss" and ev["timeUnixNano"] == str(BASE_NS)
    ea = {x["key"]: x["value"] for x in ev["attributes"]}
    assert ea["value"] == {"doubleValue": "NaN"} and ea["kind"] == {"stringValue": "point"}
    epoch_events = {e["name"] for e in spans["epoch"]["events"]}
    assert epoch_events == {"loss", "epoch_accuracy"}


def test_otlp_protobuf_roundtrip(factory: SpoolFactory):
    pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    root = factory.span("cirron.session")
    child = factory.span("x", parent_id=root["id"], attrs={"n": 3, "f": float("nan")})
    req = {"resourceSpans": [encode_resource_spans(root["id"], {"pid": 1}, [root, child], [])]}
    msg = pb2.ExportTraceServiceRequest()
    msg.ParseFromString(request_to_protobuf(req))
    spans = msg.resource_spans[0].scope_spans[0].spans
    assert spans[1].parent_span_id.hex() == derive_span_id(root["id"])
    assert spans[1].trace_id.hex() == derive_trace_id(root["id"])
    assert spans[1].start_time_unix_nano == child["start_ns"]
    assert math.isnan(spans[1].attributes[1].value.double_value)


def test_open_spans_get_an_end_and_flag(factory: SpoolFactory, tmp_path):
    s = factory.session(open_root=True, epochs=1)
    out = tmp_path / "o.json"
    export(factory, "otlp", out)
    spans = json.loads(out.read_text())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root = next(sp for sp in spans if sp["name"] == "cirron.session")
    assert {"key": "cirron.open", "value": {"boolValue": True}} in root["attributes"]
    assert int(root["endTimeUnixNano"]) >= max(int(sp["endTimeUnixNano"]) for sp in spans if sp is not root)
    assert s


def test_csv_columns_and_rows(factory: SpoolFactory, tmp_path):
    s = factory.session(split=True)
    out = tmp_path / "spans.csv"
    export(factory, "csv", out)
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0] == ["session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns",
                       "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json",
                       "writer", "sdk_version"]
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert len(body) == len(s["spans"])  # the root written twice (open, closed) appears once
    root = next(r for r in body if r["name"] == "cirron.session")
    assert root["end_ns"] != "" and root["duration_ns"] == "561700000"
    dl = next(r for r in body if r["name"] == "data_load")
    assert json.loads(dl["attrs_json"]) == {"data_load_ns": 4541667}
    assert {r["session_id"] for r in body} == {s["root"]}
    assert {(r["writer"], r["sdk_version"]) for r in body} == {("cirron", "0.1.0")}


def test_csv_session_filter_and_unknown_prefix(factory: SpoolFactory, tmp_path):
    a = factory.session(epochs=1)
    factory.session(epochs=1, start_ns=BASE_NS + 10**9)
    out = tmp_path / "a.csv"
    export(factory, "csv", out, "--session", a["root"][:8])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["session_id"] for r in rows} == {a["root"]} and len(rows) == 6
    r = run("traces", "export", "--format", "csv", "--output", str(tmp_path / "b.csv"), "--session", "nope",
            "--spool", str(factory.spool_dir))
    assert r.exit_code == 1 and r.stderr.strip() == "Error: No session found matching nope"
    assert not (tmp_path / "b.csv").exists()


def test_json_merged_batch(factory: SpoolFactory, tmp_path):
    s = factory.session(split=True, snapshots=True)
    mark = factory.mark(s["epochs"][0], "nan_loss", float("nan"))
    mark["value"] = "NaN"
    factory.write_batch([], [mark], session_id=s["root"])
    out = tmp_path / "t.json"
    export(factory, "json", out)
    doc = json.loads(out.read_text())
    assert set(doc) == {"schema_version", "sdk_version", "sessions", "spans", "marks", "snapshots"}
    assert doc["schema_version"] == 1
    assert doc["sessions"] == [{"session_id": s["root"], "writer": "cirron", "sdk_version": "0.1.0"}]
    assert len(doc["spans"]) == len({sp["id"] for sp in doc["spans"]}) == len(s["spans"])
    assert next(sp for sp in doc["spans"] if sp["name"] == "cirron.session")["end_ns"] is not None
    nan = next(m for m in doc["marks"] if m["name"] == "nan_loss")
    assert nan["value"] == "NaN" and nan["value_type"] == "float"
    assert len(doc["snapshots"]) == 2
    assert "batch_session" not in doc["marks"][0] and "session" not in doc["spans"][0]


def _slices(events: list[dict]) -> list[dict]:
    """Rebuild the slices a viewer sees from B/E/X events, per track (checks proper nesting)."""
    out, stacks = [], {}
    order = {"E": 0, "X": 1, "B": 1}
    for e in sorted((e for e in events if e["ph"] in "BEX"), key=lambda e: (e["ts"], order[e["ph"]])):
        track = (e["pid"], e["tid"])
        if e["ph"] == "X":
            out.append({"name": e["name"], "ts": e["ts"], "dur": e["dur"], "args": e["args"], "track": track,
                        "depth": len(stacks.get(track, []))})
        elif e["ph"] == "B":
            stacks.setdefault(track, []).append(dict(e, depth=len(stacks.get(track, []))))
        else:
            b = stacks[track].pop()
            assert b["name"] == e["name"] and "args" not in b  # begin events carry no args (speedscope's key)
            out.append({"name": e["name"], "ts": b["ts"], "dur": e["ts"] - b["ts"], "args": e["args"],
                        "track": track, "depth": b["depth"]})
    assert all(not s for s in stacks.values())
    return out


def test_perfetto_trace_events(factory: SpoolFactory, tmp_path):
    s = factory.session(epochs=2)
    factory.write_batch([], [factory.mark(s["epochs"][0], "phase", "warmup")], session_id=s["root"])
    out = tmp_path / "t.perfetto.json"
    export(factory, "perfetto", out)
    doc = json.loads(out.read_text())
    assert doc["displayTimeUnit"] == "ns"
    ev = doc["traceEvents"]
    slices = _slices(ev)
    assert len(slices) == len(s["spans"])
    fwd = next(e for e in slices if e["name"] == "forward")
    assert fwd["dur"] == pytest.approx(5100.0) and isinstance(fwd["ts"], float)
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in ev)
    assert any(e["ph"] == "M" and e["name"] == "thread_name" for e in ev)
    assert any(e["ph"] == "C" and e["name"] == "loss" for e in ev)
    assert any(e["ph"] == "i" and e["name"] == "phase=warmup" for e in ev)
    # grouped by name: the index and the unique id are args, never part of the name
    epochs = [e for e in slices if e["name"] == "epoch"]
    assert [e["args"]["index"] for e in epochs] == [0, 1]
    assert {e["args"]["span_id"] for e in epochs} == set(s["epochs"])
    assert not any("[" in e["name"] for e in slices)
    assert {e["depth"] for e in epochs} == {1} and fwd["depth"] == 2  # under the session root


def test_perfetto_overlapping_spans_get_their_own_track(factory: SpoolFactory, tmp_path):
    root = factory.span("cirron.session", dur_ns=100 * MS)
    # two requests interleaved on one event-loop thread: neither nests in the other
    a = factory.span("request", parent_id=root["id"], start_ns=BASE_NS + 10 * MS, dur_ns=30 * MS)
    b = factory.span("request", parent_id=root["id"], start_ns=BASE_NS + 20 * MS, dur_ns=30 * MS)
    inner = factory.span("tokenize", parent_id=b["id"], start_ns=BASE_NS + 45 * MS, dur_ns=MS)
    zero = factory.span("tick", parent_id=root["id"], start_ns=BASE_NS + 60 * MS, dur_ns=0)
    factory.write_batch([root, a, b, inner, zero], session_id=root["id"])
    out = tmp_path / "t.perfetto.json"
    export(factory, "perfetto", out)
    ev = json.loads(out.read_text())["traceEvents"]
    slices = {e["args"]["span_id"]: e for e in _slices(ev)}
    assert slices[a["id"]]["track"] != slices[b["id"]]["track"]
    assert slices[inner["id"]]["track"] == slices[b["id"]]["track"]
    assert slices[inner["id"]]["depth"] == slices[b["id"]]["depth"] + 1
    assert slices[zero["id"]]["dur"] == 0
    names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "thread 140245" in names and "thread 140245 (overlapping 1)" in names


def test_default_outputs_and_session_prefix(factory: SpoolFactory, monkeypatch):
    a = factory.session(epochs=1)
    factory.session(epochs=1, start_ns=BASE_NS + 10**9)
    monkeypatch.chdir(factory.root)
    for fmt, name in (("json", "cirron-traces.json"), ("otel", "cirron-traces.otlp.json"), ("csv", "cirron-traces.csv"),
                      ("perfetto", "cirron-traces.perfetto.json")):
        r = run("traces", "export", "--format", fmt, "--session", a["root"][:8])
        assert r.exit_code == 0, r.output
        assert (factory.root / name).is_file()
    r = run("traces", "export", "--format", "parquet")
    assert r.exit_code == 0 and (factory.root / "cirron-traces" / "spans.parquet").is_file()
    doc = json.loads((factory.root / "cirron-traces.json").read_text())
    assert len(doc["spans"]) == 6


def test_export_empty_spool_fails(tmp_path):
    for fmt in ("parquet", "csv", "json", "otel"):
        r = run("traces", "export", "--format", fmt, "--output", str(tmp_path / "o"), "--spool", str(tmp_path / "none"))
        assert r.exit_code == 1
        assert r.stderr.strip().splitlines() == [f"Warning: spool directory {tmp_path / 'none'} does not exist",
                                                 "No traces found. Run ci.profile() from Python to produce some."]
    assert not (tmp_path / "o").exists()


def test_unknown_format(factory: SpoolFactory, tmp_path):
    r = run("traces", "export", "--format", "xml", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2 and "Invalid value for '--format'" in r.stderr
    assert "'xml' is not one of" in r.stderr and "'perfetto'" in r.stderr


def test_write_members_joins_small_items_and_writes_big_ones_whole():
    """Members come out comma-separated in order whatever their sizes, continuing an array that
    has members already; the count is of the items."""
    import io

    from cirron.export._common import write_members

    items = [b"1", b"22", b"x" * 50, b"3", b"y" * 10, b"z" * 10, b"4"]
    for already in (0, 2):
        for chunk, chunk_bytes in ((2, 1 << 20), (100, 8), (1, 1), (100, 1 << 20)):
            fh = io.BytesIO()
            assert write_members(fh, iter(items), already=already, chunk=chunk, chunk_bytes=chunk_bytes) == len(items)
            assert fh.getvalue() == (b"," if already else b"") + b",".join(items)
    fh = io.BytesIO()
    assert write_members(fh, iter([]), already=3) == 0 and fh.getvalue() == b""
