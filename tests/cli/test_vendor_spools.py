"""Every `cirron traces` command on spools written by another writer of the format: the vendor's
``cirron-sdk`` 0.3.0 (made by tests/fixtures/vendor/make_vendor_spools.py, counts in its
manifest.json). Every record that writer wrote must be shown or exported."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli as run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vendor"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
RUNS = {r["run"]: r for r in MANIFEST["runs"]}
TOTAL = {k: sum(r[k] for r in MANIFEST["runs"]) for k in ("spans", "marks", "snapshots")}
ROOTLESS = ("no_shutdown", "killed")  # their cirron.session root was never written





@pytest.fixture
def spool(tmp_path: Path) -> Path:
    dst = tmp_path / "project"
    shutil.copytree(FIXTURE / "project", dst, symlinks=True)
    return dst / ".cirron" / "spool"


def sessions_json(spool: Path) -> list[dict]:
    r = run("traces", "list", "--json", "--spool", str(spool))
    assert r.exit_code == 0
    return json.loads(r.stdout)["sessions"]


def test_manifest_is_what_the_script_records():
    assert MANIFEST["writer"] == "cirron-sdk" and MANIFEST["sdk_version"] == "0.3.0"
    assert set(RUNS) == {"train", "threads", "inference", "no_shutdown", "killed"}
    assert RUNS["train"]["snapshots"] > 0 and RUNS["killed"]["spans"] > 0


def test_list_accounts_for_every_record(spool: Path):
    r = run("traces", "list", "--json", "--spool", str(spool))
    sessions = json.loads(r.stdout)["sessions"]
    assert sum(s["spans"] for s in sessions) == TOTAL["spans"]
    assert sum(s["marks"] for s in sessions) == TOTAL["marks"]
    assert sum(s["snapshots"] for s in sessions) == TOTAL["snapshots"]
    rooted = [s for s in sessions if s["id"] != "(orphan spans)"]
    assert sorted((s["spans"], s["marks"], s["snapshots"]) for s in rooted) == sorted(
        (RUNS[n]["spans"], RUNS[n]["marks"], RUNS[n]["snapshots"]) for n in ("train", "threads", "inference"))
    (orphans,) = [s for s in sessions if s["id"] == "(orphan spans)"]
    assert orphans["spans"] == sum(RUNS[n]["spans"] for n in ROOTLESS)
    assert orphans["marks"] == sum(RUNS[n]["marks"] for n in ROOTLESS)
    assert all(s["writer"] == "other" and s["sdk_version"] == "0.3.0" for s in sessions)
    assert orphans["unfinished"] is True
    # what could not be placed is counted in a warning, never dropped silently
    n_spans = orphans["spans"]
    assert f"{n_spans} span(s), {orphans['marks']} mark(s)" in r.stderr
    again = run("traces", "list", "--json", "--spool", str(spool))  # answered from the index this time
    assert json.loads(again.stdout)["sessions"] == sessions and f"{n_spans} span(s)" in again.stderr
    table = run("traces", "list", "--spool", str(spool)).stdout
    assert "(orphan spans)" in table and "(unfinished)" in table


def test_view_shows_every_span_and_mark(spool: Path):
    r = run("traces", "view", "--json", "--last", "10", "--spool", str(spool))
    views = json.loads(r.stdout)
    nodes = [n for v in views for n in v["nodes"]]
    assert sum(n["type"] == "span" for n in nodes) == TOTAL["spans"]
    assert sum(n["type"] == "mark" for n in nodes) == TOTAL["marks"]
    marks = [n for n in nodes if n["type"] == "mark"]
    nan = [m for m in marks if m["name"] == "epoch_nan"]
    assert nan and all(m["value"] == "NaN" and m["value_type"] == "float" for m in nan)
    assert {m["value_type"] for m in marks if m["name"] == "phase"} == {"str"}
    inf = [m for m in marks if m["name"] == "inf_value"]
    assert inf and all(m["value"] == "Infinity" for m in inf)
    # thread and request spans hang under their session's root, not beside it
    text = run("traces", "view", "--last", "10", "--no-color", "--spool", str(spool)).stdout
    assert "\n  worker[" in text and "\n  request — " in text
    assert "ci.mark epoch_nan=NaN" in text


def test_export_json_keeps_every_record_and_its_writer(spool: Path, tmp_path: Path):
    out = tmp_path / "t.json"
    r = run("traces", "export", "--format", "json", "--output", str(out), "--spool", str(spool))
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert (len(doc["spans"]), len(doc["marks"]), len(doc["snapshots"])) == (TOTAL["spans"], TOTAL["marks"],
                                                                             TOTAL["snapshots"])
    assert {(s["writer"], s["sdk_version"]) for s in doc["sessions"]} == {("other", "0.3.0")}
    snap = doc["snapshots"][0]
    assert snap["tensor"] and snap["role"] in ("weight", "gradient")
    assert "min" in snap["stats"]["histogram"] and "max" in snap["stats"]["histogram"]


def test_export_otel_stamps_the_writers_version(spool: Path, tmp_path: Path):
    out = tmp_path / "t.otlp.json"
    assert run("traces", "export", "--format", "otel", "--output", str(out), "--spool", str(spool)).exit_code == 0
    doc = json.loads(out.read_text())
    n_events = 0
    real_spans = 0
    for rs in doc["resourceSpans"]:
        attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
        assert attrs["telemetry.sdk.version"] == {"stringValue": "0.3.0"}
        assert attrs["cirron.writer"] == {"stringValue": "other"}
        for sp in rs["scopeSpans"][0]["spans"]:
            n_events += len(sp.get("events", []))
            placeholder = any(a["key"] == "cirron.placeholder" for a in sp["attributes"])
            real_spans += not placeholder
    assert real_spans == TOTAL["spans"]
    assert n_events == TOTAL["marks"]


def test_export_csv_perfetto_parquet(spool: Path, tmp_path: Path):
    out = tmp_path / "t.csv"
    r = run("traces", "export", "--format", "csv", "--output", str(out), "--spool", str(spool))
    assert r.exit_code == 0, r.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == TOTAL["spans"]
    assert sum(row["session_id"] == "(orphan spans)" for row in rows) == sum(RUNS[n]["spans"] for n in ROOTLESS)
    assert {(row["writer"], row["sdk_version"]) for row in rows} == {("other", "0.3.0")}

    pf = tmp_path / "t.perfetto.json"
    assert run("traces", "export", "--format", "perfetto", "--output", str(pf), "--spool", str(spool)).exit_code == 0
    events = json.loads(pf.read_text())["traceEvents"]
    assert sum(e["ph"] == "B" for e in events) == TOTAL["spans"]
    assert {e["args"]["labels"] for e in events if e["name"] == "process_labels"} == {"writer other 0.3.0"}
    assert sum(e["ph"] in ("C", "i") for e in events) == TOTAL["marks"]

    pq = pytest.importorskip("pyarrow.parquet")
    pdir = tmp_path / "pq"
    assert run("traces", "export", "--format", "parquet", "--output", str(pdir), "--spool", str(spool)).exit_code == 0
    spans = pq.read_table(pdir / "spans.parquet")
    marks = pq.read_table(pdir / "marks.parquet")
    snaps = pq.read_table(pdir / "snapshots.parquet")
    assert (spans.num_rows, marks.num_rows, snaps.num_rows) == (TOTAL["spans"], TOTAL["marks"], TOTAL["snapshots"])
    writers = json.loads(pq.read_metadata(pdir / "spans.parquet").metadata[b"cirron.writers"])
    assert {w["sdk_version"] for w in writers} == {"0.3.0"}
    values = marks.column("value").to_pylist()
    assert any(isinstance(v, float) and math.isnan(v) for v in values)


def test_snapshots_and_snapshot_read_vendor_blobs(spool: Path):
    r = run("traces", "snapshots", "--json", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    groups = json.loads(r.stdout)
    groups = groups if isinstance(groups, list) else groups.get("spans", groups)
    assert sum(g["tensors"] for g in groups) == TOTAL["snapshots"]
    span = groups[0]["span_id"]
    r = run("traces", "snapshot", span, "--json", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {f["path"].rsplit("/", 1)[1] for f in doc["files"]} == {"weights.safetensors", "gradients.safetensors"}
    # absolute file:// URIs of the machine that wrote them still resolve inside this .cirron/
    r = run("traces", "snapshot", span, "0.weight.grad", "--preview", "3", "--json", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["tensor"]
    assert t["blob"]["path"] == str((spool.parent / "snapshots" / span / "gradients.safetensors").resolve())
    assert len(t["first"]) == 3
    r = run("traces", "snapshot", span, "0.weight", "--no-color", "--spool", str(spool))
    assert "histogram:" in r.stdout and "[" in r.stdout.split("histogram:")[1]


def test_clear_never_deletes_a_run_that_may_still_be_writing(spool: Path):
    before = sessions_json(spool)
    r = run("traces", "clear", "--yes", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    assert "Keeping unfinished session (orphan spans)" in r.stderr
    after = sessions_json(spool)
    assert [s["id"] for s in after] == ["(orphan spans)"]
    (orphans,) = after
    assert orphans["spans"] == sum(RUNS[n]["spans"] for n in ROOTLESS)
    for n in ROOTLESS:
        assert all((spool / f).exists() for f in RUNS[n]["files"])
    assert len(before) == 4
    r = run("traces", "clear", "--keep", "0", "--yes", "--spool", str(spool))
    assert [s["id"] for s in sessions_json(spool)] == ["(orphan spans)"]


def test_spool_clear_keeps_the_files_of_a_run_that_may_still_be_writing(spool: Path):
    r = run("spool", "clear", "--yes", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    assert "of 1 unfinished session" in r.stderr
    for n in ROOTLESS:
        assert all((spool / f).exists() for f in RUNS[n]["files"])
    finished = [n for n in RUNS if n not in ROOTLESS]
    assert finished and not any((spool / f).exists() for n in finished for f in RUNS[n]["files"])
