"""`cirron traces ranks` and `view --run` on a 4-rank run made by real processes, one spool per node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import run_cli as run

RANK_SCRIPT = textwrap.dedent("""
    import os, time
    import cirron as ci
    ci.profile(spool_dir=os.environ["SPOOL"])
    slow = os.environ["RANK"] == "2"
    def loader():
        for i in range(6):
            if slow:
                time.sleep(0.25)
            yield i
    for epoch in ci.epochs(range(2)):
        for b in ci.batches(loader()):
            with ci.scope("forward"):
                time.sleep(0.003)
            with ci.scope("backward"):
                time.sleep(0.004)
    ci.shutdown()
""")




@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> str:
    """Four processes of run ``job-42`` (rank 2's data loader sleeps), each with its own spool."""
    root = tmp_path_factory.mktemp("nodes")
    script = root / "rank.py"
    script.write_text(RANK_SCRIPT)
    procs = []
    for r in range(4):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="4", LOCAL_RANK=str(r), CIRRON_RUN_ID="job-42",
                   SPOOL=str(root / f"node{r}" / ".cirron" / "spool"))
        env.pop("TORCHELASTIC_RUN_ID", None)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    return str(root / "node*" / ".cirron" / "spool")


def test_ranks_flags_the_slow_rank_and_blames_data_loading(four_ranks):
    # Rank 2 waits 250 ms per batch on input, about 35x the others' 7 ms of work; a threshold of 4
    # (five times the median) keeps a loaded machine's noise on the other ranks out of the answer.
    r = run("traces", "ranks", "--json", "--threshold", "4", "--spool", four_ranks)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["run_id"] == "job-42" and rep["step"] == "batch"
    assert [x["rank"] for x in rep["ranks"]] == [0, 1, 2, 3]
    assert rep["stragglers"] == [2]
    slow = rep["ranks"][2]
    assert slow["straggler"] and slow["vs_median"] > 4.0
    assert slow["data_load_share"] > 0.5 > max(x["data_load_share"] for x in rep["ranks"] if x["rank"] != 2)
    for x in rep["ranks"]:
        steps = x["steps"]
        assert steps["batch"]["count"] == 12 and steps["epoch"]["count"] == 2
        assert steps["forward"]["count"] == steps["backward"]["count"] == steps["data_load"]["count"] == 12
        w = steps["batch"]["wall_ns"]
        assert 0 < w["p50"] <= w["p95"] <= w["max"]
        assert steps["batch"]["cpu_ns"]["p50"] is not None
    text = run("traces", "ranks", "--no-color", "--threshold", "4", "--spool", four_ranks).stdout
    assert "Straggler: rank 2 is" in text and "it is waiting on input" in text


def test_threshold_and_unknown_run(four_ranks):
    rep = json.loads(run("traces", "ranks", "--json", "--threshold", "1000", "--spool", four_ranks).stdout)
    assert rep["stragglers"] == []
    r = run("traces", "ranks", "--run", "nope", "--spool", four_ranks)
    assert r.exit_code == 1 and r.stderr.strip() == "Error: No run found matching nope"
    r = run("traces", "ranks", "--threshold", "-1", "--spool", four_ranks)
    assert r.exit_code == 2


def test_list_groups_the_run(four_ranks):
    data = json.loads(run("traces", "list", "--json", "--spool", four_ranks).stdout)
    assert [r["id"] for r in data["runs"]] == ["job-42"] and sorted(data["runs"][0]["ranks"]) == [0, 1, 2, 3]
    assert {(s["rank"], s["world_size"], s["run_id"]) for s in data["sessions"]} == {(r, 4, "job-42") for r in range(4)}
    text = run("traces", "list", "--no-color", "--spool", four_ranks).stdout
    assert "Runs (1):" in text and "│ job-42 │" in text and "0-3" in text


def test_view_run_shows_each_rank_under_a_header(four_ranks):
    r = run("traces", "view", "--run", "job", "--depth", "1", "--no-color", "--spool", four_ranks)
    assert r.exit_code == 0, r.output
    headers = [line for line in r.stdout.splitlines() if line.startswith("── rank")]
    assert [h.split()[2] for h in headers] == ["0/4", "1/4", "2/4", "3/4"]
    r = run("traces", "view", "--run", "job-42", "--session", "x", "--spool", four_ranks)
    assert r.exit_code == 2


def test_ranks_without_runs(tmp_path: Path):
    r = run("traces", "ranks", "--spool", str(tmp_path / "none"))
    assert r.exit_code == 1 and "No traces found" in r.stderr
