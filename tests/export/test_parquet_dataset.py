"""Streaming export chunks, the analyst columns and the hive-partitioned Parquet dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli as run
from spool_factory import BASE_NS, MS, SpoolFactory, new_id

from cirron.spool.catalog import open_catalog
from cirron.spool.stream import iter_chunks

pq = pytest.importorskip("pyarrow.parquet")




def training_session(f: SpoolFactory, *, rank: int, run_id: str | None, start: int, slow: int = 1,
                     error_at: tuple[int, int] | None = None) -> dict:
    """root → epoch[e] → batch[b] → forward/backward, a loss mark per batch; the root is written
    open first and closed last (as the writer does), batches in their own files."""
    root_id = new_id()
    attrs = {"sdk_version": "0.1.0", "pid": 100 + rank, "rank": rank, "world_size": 4, "local_rank": rank}
    if run_id:
        attrs["run_id"] = run_id
    root = f.span("cirron.session", id=root_id, start_ns=start, dur_ns=None, attrs=attrs, rank=rank)
    f.write_batch([root], session_id=root_id)
    t = start + MS
    epochs = []
    for e in range(2):
        eid = new_id()
        e_start = t
        for b in range(3):
            bid = new_id()
            kids = []
            c = t
            for name, dur in (("data_load", MS * slow), ("forward", 2 * MS), ("backward", 3 * MS)):
                battrs = {"error": "ValueError: boom"} if error_at == (e, b) and name == "backward" else {}
                kids.append(f.span(name, parent_id=bid, start_ns=c, dur_ns=dur, attrs=battrs, rank=rank))
                c += dur
            batch = f.span("batch", id=bid, parent_id=eid, index=b, start_ns=t, dur_ns=c - t, rank=rank)
            mark = f.mark(bid, "loss", 1.0 / (e * 3 + b + 1), ts_ns=c)
            f.write_batch(kids + [batch], [mark], session_id=root_id)
            t = c + 1000
        epochs.append(f.span("epoch", id=eid, parent_id=root_id, index=e, start_ns=e_start, dur_ns=t - e_start,
                             rank=rank))
        f.write_batch([epochs[-1]], [f.mark("root", "lr", 0.1, ts_ns=t)], session_id=root_id)
    f.write_batch([dict(root, end_ns=t + MS)], session_id=root_id)
    return {"root": root_id}


@pytest.fixture
def ranks(tmp_path: Path):
    facs = []
    for r in range(4):
        f = SpoolFactory(tmp_path / "runs" / f"node{r}")
        training_session(f, rank=r, run_id="job-7", start=BASE_NS + r * 1000, error_at=(1, 2) if r == 2 else None)
        facs.append(f)
    other = SpoolFactory(tmp_path / "runs" / "solo")
    training_session(other, rank=0, run_id=None, start=BASE_NS + 10**9)
    facs.append(other)
    yield tmp_path / "runs" / "*" / ".cirron" / "spool"
    for f in facs:
        f.close()


def test_streamed_chunks_equal_the_rebuilt_session(ranks):
    cat = open_catalog([str(ranks)])
    assert len(cat.sessions) == 5 and all(s.streamable for s in cat.sessions)
    for info in cat.sessions:
        chunks = list(iter_chunks(cat, [info], "export"))
        assert len(chunks) > 1  # file by file
        whole = cat.load(info, "export")
        streamed_spans = [s.id for c in chunks for s in c.spans]
        assert sorted(streamed_spans) == sorted(s.id for s in whole.spans)
        assert len(streamed_spans) == len(set(streamed_spans)) == info.spans
        # the open root record lost to the closed one
        root = next(s for c in chunks for s in c.spans if s.id == info.id)
        assert root.end_ns is not None
        assert sorted(m.id for c in chunks for m in c.marks) == sorted(m.id for m in whole.marks)


def test_analyst_columns(ranks, tmp_path):
    out = tmp_path / "pq"
    assert run("traces", "export", "--format", "parquet", "--output", str(out), "--spool", str(ranks)).exit_code == 0
    spans = pq.read_table(out / "spans.parquet")
    assert spans.schema.metadata[b"cirron.parquet_schema_version"] == b"2"
    rows = spans.to_pylist()
    by_name: dict[str, list] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    assert {(r["epoch"], r["batch"]) for r in by_name["forward"]} == {(e, b) for e in range(2) for b in range(3)}
    assert {(r["epoch"], r["batch"]) for r in by_name["epoch"]} == {(0, None), (1, None)}
    assert all(r["epoch"] is None and r["batch"] is None for r in by_name["cirron.session"])
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 1 and errors[0]["error"] == "ValueError: boom" and errors[0]["rank"] == 2
    assert errors[0]["epoch"] == 1 and errors[0]["batch"] == 2
    r0 = by_name["forward"][0]
    assert r0["start"].timestamp() * 1e9 == pytest.approx(r0["start_ns"], abs=1000)
    assert {r["run_id"] for r in rows} == {"job-7", None}
    marks = pq.read_table(out / "marks.parquet").to_pylist()
    losses = [m for m in marks if m["name"] == "loss"]
    assert len(losses) == 5 * 6 and {(m["epoch"], m["batch"]) for m in losses} == {(e, b) for e in range(2) for b in range(3)}
    lr = [m for m in marks if m["name"] == "lr"]
    assert len(lr) == 10 and all(m["epoch"] is None for m in lr)
    assert {m["rank"] for m in marks} == {0, 1, 2, 3}


@pytest.mark.parametrize("by, column", [("session", "session_id"), ("rank", "rank"), ("run", "run_id")])
def test_partitioned_dataset_equals_the_single_files(ranks, tmp_path, by, column):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    flat, part = tmp_path / "flat", tmp_path / "part"
    assert run("traces", "export", "--format", "parquet", "--output", str(flat), "--spool", str(ranks)).exit_code == 0
    r = run("traces", "export", "--format", "parquet", "--partition-by", by, "--output", str(part), "--spool", str(ranks))
    assert r.exit_code == 0, r.output
    dirs = sorted(p.name for p in (part / "spans").iterdir())
    assert all(d.startswith(f"{column}=") for d in dirs)
    for table, key in (("spans", "span_id"), ("marks", "mark_id")):
        con = duckdb.connect()
        cols = list(pq.read_schema(flat / f"{table}.parquet").names)
        select = ", ".join(f'"{c}"' for c in cols)
        want = con.execute(f"SELECT {select} FROM '{flat}/{table}.parquet' ORDER BY {key}").fetchall()
        hive_type = {"rank": "BIGINT", "session_id": "VARCHAR", "run_id": "VARCHAR"}[column]
        got = con.execute(f"SELECT {select} FROM read_parquet('{part}/{table}/**/*.parquet', hive_partitioning=true,"
                          f" hive_types={{'{column}': {hive_type}}}) ORDER BY {key}").fetchall()
        assert got == want
        hive_schema = {"rank": pl.Int64, "session_id": pl.String, "run_id": pl.String}
        lf = pl.scan_parquet(str(part / table / "**" / "*.parquet"), hive_partitioning=True,
                             hive_schema={column: hive_schema[column]})
        pl_got = lf.select(cols).sort(key).collect()
        pl_want = pl.read_parquet(flat / f"{table}.parquet").select(cols).sort(key)
        assert pl_got.equals(pl_want)


def test_partition_by_needs_parquet_and_a_known_key(ranks, tmp_path):
    r = run("traces", "export", "--format", "csv", "--partition-by", "rank", "--spool", str(ranks))
    assert r.exit_code == 2 and "--partition-by works with --format parquet only" in r.stderr
    r = run("traces", "export", "--format", "parquet", "--partition-by", "host", "--spool", str(ranks),
            "--output", str(tmp_path / "x"))
    assert r.exit_code == 2 and "Invalid --partition-by: host" in r.stderr


def test_reexport_replaces_the_partitioned_dataset(ranks, tmp_path):
    part = tmp_path / "part"
    for by in ("session", "rank"):
        assert run("traces", "export", "--format", "parquet", "--partition-by", by, "--output", str(part),
                   "--spool", str(ranks)).exit_code == 0
    assert all(p.name.startswith("rank=") for p in (part / "spans").iterdir())
    assert not [p for p in part.iterdir() if p.name.startswith(".")]


def test_json_and_csv_streamed_match_counts(ranks, tmp_path):
    cat = open_catalog([str(ranks)])
    n_spans = sum(s.spans for s in cat.sessions)
    n_marks = sum(s.marks for s in cat.sessions)
    out = tmp_path / "t.json"
    assert run("traces", "export", "--format", "json", "--output", str(out), "--spool", str(ranks)).exit_code == 0
    doc = json.loads(out.read_text())
    assert len(doc["spans"]) == n_spans and len({s["id"] for s in doc["spans"]}) == n_spans
    assert len(doc["marks"]) == n_marks


def test_partitioned_table_without_rows_reads_as_empty(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    f = SpoolFactory(tmp_path / "one")
    try:
        root = f.span("cirron.session", attrs={"rank": 1})
        f.write_batch([root], session_id=root["id"])
        out = tmp_path / "ds"
        assert run("traces", "export", "--format", "parquet", "--partition-by", "rank", "--output", str(out),
                   "--spool", str(f.spool_dir)).exit_code == 0
        con = duckdb.connect()
        assert con.execute(f"SELECT COUNT(*) FROM read_parquet('{out}/marks/**/*.parquet', "
                           "hive_partitioning=true)").fetchone()[0] == 0
        assert con.execute(f"SELECT rank FROM read_parquet('{out}/spans/**/*.parquet', "
                           "hive_partitioning=true)").fetchall() == [(1,)]
    finally:
        f.close()
