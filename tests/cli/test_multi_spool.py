"""`--spool` given several times and as a glob, on every `cirron traces` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli as run
from spool_factory import BASE_NS, SpoolFactory


@pytest.fixture
def three_runs(tmp_path: Path):
    """runs/a, runs/b, runs/c: one spool each, one session each, b and c with snapshots."""
    facs = []
    for i, name in enumerate("abc"):
        f = SpoolFactory(tmp_path / "runs" / name)
        f._created += i * 10**9
        ids = f.session(start_ns=BASE_NS + i * 10**9, snapshots=name != "a")
        facs.append((f, ids))
    yield facs
    for f, _ in facs:
        f.close()


def test_list_reads_a_glob_of_spools(three_runs, tmp_path):
    pattern = str(tmp_path / "runs" / "*" / ".cirron" / "spool")
    data = json.loads(run("traces", "list", "--json", "--spool", pattern).stdout)
    assert [s["id"] for s in data["sessions"]] == [ids["root"] for _f, ids in reversed(three_runs)]
    assert data["dirs"] == [str(f.spool_dir.resolve()) for f, _ in three_runs]
    assert [s["spool"] for s in data["sessions"]] == [str(f.spool_dir.resolve()) for f, _ in reversed(three_runs)]
    text = run("traces", "list", "--spool", pattern, "--no-color").stdout
    assert text.startswith("Spools: 3 directories  (3 sessions)")
    assert "SPOOL" in text.splitlines()[2]


def test_repeated_spool_option_and_duplicates_read_once(three_runs):
    (fa, a), (fb, b), _c = three_runs
    data = json.loads(run("traces", "list", "--json", "--spool", str(fa.spool_dir), "--spool", str(fb.spool_dir),
                          "--spool", str(fa.spool_dir)).stdout)
    assert sorted(s["id"] for s in data["sessions"]) == sorted([a["root"], b["root"]])


def test_glob_matching_nothing_warns_and_shows_no_traces(tmp_path):
    r = run("traces", "list", "--spool", str(tmp_path / "nowhere-*" / "spool"))
    assert r.exit_code == 0
    assert "no spool directory matches" in r.stderr
    assert "No traces found" in r.stdout


def test_view_session_from_any_spool(three_runs):
    (fa, a), (fb, b), _c = three_runs
    r = run("traces", "view", "--session", b["root"][:10], "--spool", str(fa.spool_dir), "--spool", str(fb.spool_dir))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("cirron.session — 561.7ms")
    r = run("traces", "view", "--last", "2", "--json", "--spool", str(fa.spool_dir), "--spool", str(fb.spool_dir))
    assert [v["id"] for v in json.loads(r.stdout)] == [a["root"], b["root"]]


def test_export_every_format_across_spools(three_runs, tmp_path):
    pattern = str(tmp_path / "runs" / "*" / ".cirron" / "spool")
    roots = {ids["root"] for _f, ids in three_runs}
    n_spans = sum(len(ids["spans"]) for _f, ids in three_runs)
    out = tmp_path / "out"
    out.mkdir()
    r = run("traces", "export", "--format", "json", "--output", str(out / "t.json"), "--spool", pattern)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "t.json").read_text())
    assert len(doc["spans"]) == n_spans and len(doc["marks"]) == sum(len(i["marks"]) for _f, i in three_runs)
    assert len(doc["snapshots"]) == 4
    r = run("traces", "export", "--format", "csv", "--output", str(out / "t.csv"), "--spool", pattern)
    assert r.exit_code == 0 and f"Exported {n_spans} spans" in r.stdout
    rows = (out / "t.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0] for row in rows} == roots
    pq = pytest.importorskip("pyarrow.parquet")
    r = run("traces", "export", "--format", "parquet", "--output", str(out / "pq"), "--spool", pattern)
    assert r.exit_code == 0, r.output
    spans = pq.read_table(out / "pq" / "spans.parquet")
    assert spans.num_rows == n_spans and set(spans.column("session_id").to_pylist()) == roots
    for fmt in ("otel", "perfetto"):
        r = run("traces", "export", "--format", fmt, "--output", str(out / f"t.{fmt}.json"), "--spool", pattern)
        assert r.exit_code == 0, r.output
    otlp = json.loads((out / "t.otel.json").read_text())
    assert len(otlp["resourceSpans"]) == 3


def test_snapshots_across_spools(three_runs, tmp_path):
    pattern = str(tmp_path / "runs" / "*" / ".cirron" / "spool")
    data = json.loads(run("traces", "snapshots", "--json", "--spool", pattern).stdout)
    assert {g["session_id"] for g in data["spans"]} == {ids["root"] for _f, ids in three_runs[1:]}
    (_fc, c) = three_runs[2]
    r = run("traces", "snapshot", c["epochs"][0][:12], "--json", "--spool", pattern)
    # The factory's blobs are placeholders: what matters is that spool c's blob was the one opened.
    assert f"runs/c/.cirron/snapshots/{c['epochs'][0]}/weights.safetensors" in r.stderr


def test_clear_across_spools_keeps_the_newest(three_runs, tmp_path):
    pattern = str(tmp_path / "runs" / "*" / ".cirron" / "spool")
    r = run("traces", "clear", "--keep", "1", "--yes", "--spool", pattern)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("Deleted 2 sessions")
    left = json.loads(run("traces", "list", "--json", "--spool", pattern).stdout)["sessions"]
    assert [s["id"] for s in left] == [three_runs[2][1]["root"]]
    fb = three_runs[1][0]
    assert not any(fb.snapshots_dir.iterdir())
    assert not list((tmp_path / "runs").glob("*/.cirron/.cirron-trash-*"))


def test_a_file_given_as_spool_fails_cleanly(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run("traces", "list", "--spool", str(tmp_path), "--spool", str(f))
    assert r.exit_code == 1
    assert r.stderr.strip() == f"Error: Spool path {f} is not a directory"
