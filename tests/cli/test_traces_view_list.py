"""`cirron traces view` and `cirron traces list`: output shapes from the reference, options, colour."""

from __future__ import annotations

import json
import re

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory
from typer.testing import CliRunner

from cirron_cli.app import app

runner = CliRunner()


def run(*args: str, **kw):
    result = runner.invoke(app, list(args), **kw)
    assert "Traceback" not in result.output
    return result


def test_view_tree_shape(factory: SpoolFactory):
    factory.session()
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "cirron.session — 561.7ms pid=1797 rank=0"
    assert lines[1] == "  epoch[0] — 42.1ms"
    assert lines[2] == "    data_load — 4.5ms data_load_ns=4541667"
    assert lines[3] == "    forward — 5.1ms"
    assert lines[4] == "    backward — 23.0ms"
    assert lines[5] == "    optimizer_step — 974.0us"
    assert lines[6] == "    ci.mark loss=0.6841"
    assert lines[7] == "    ci.mark epoch_accuracy=0.9 (summary)"
    assert lines[8] == "  epoch[1] — 42.1ms"
    assert "\x1b[" not in r.stdout  # not a TTY: no colour


def test_view_depth_collapses(factory: SpoolFactory):
    factory.session()
    r = run("traces", "view", "--depth", "1", "--spool", str(factory.spool_dir))
    assert r.stdout.splitlines() == [
        "cirron.session — 561.7ms pid=1797 rank=0",
        "  epoch[0] — 42.1ms",
        "    … 33.6ms (4 spans, collapsed)",
        "  epoch[1] — 42.1ms",
        "    … 33.6ms (4 spans, collapsed)",
    ]


def test_collapsed_counts_all_descendants_and_sums_direct_children(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=100 * MS)
    a = factory.span("a", parent_id=root["id"], start_ns=BASE_NS + 1, dur_ns=50 * MS)
    b = factory.span("b", parent_id=a["id"], start_ns=BASE_NS + 2, dur_ns=30 * MS)
    c = factory.span("c", parent_id=b["id"], start_ns=BASE_NS + 3, dur_ns=20 * MS)
    d = factory.span("d", parent_id=b["id"], start_ns=BASE_NS + 4, dur_ns=5 * MS)
    factory.write_batch([root, a, b, c, d], session_id=root["id"])
    r = run("traces", "view", "--depth", "1", "--spool", str(factory.spool_dir))
    assert r.stdout.splitlines()[-1] == "    … 30.0ms (3 spans, collapsed)"
    r = run("traces", "view", "--depth", "0", "--spool", str(factory.spool_dir))
    assert r.stdout.splitlines() == ["cirron.session — 100.0ms pid=1797 rank=0", "  … 50.0ms (4 spans, collapsed)"]


def test_view_name_keeps_ancestors(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=7_300_000, pid=96540)
    fit = factory.span("fit", parent_id=root["id"], start_ns=BASE_NS + 1, dur_ns=6_200_000, attrs={"estimator": "Pipeline"})
    ft = factory.span("fit_transform", parent_id=fit["id"], start_ns=BASE_NS + 2, dur_ns=803_100,
                      attrs={"estimator": "StandardScaler"})
    other = factory.span("fit_other", parent_id=fit["id"], start_ns=BASE_NS + 3, dur_ns=100)
    pred = factory.span("predict", parent_id=root["id"], start_ns=BASE_NS + 7 * MS, dur_ns=191_000,
                        attrs={"estimator": "Pipeline"})
    tr = factory.span("transform", parent_id=pred["id"], start_ns=BASE_NS + 7 * MS + 1, dur_ns=66_800,
                      attrs={"estimator": "StandardScaler"})
    factory.write_batch([root, fit, ft, other, pred, tr], session_id=root["id"])
    r = run("traces", "view", "--name", "transform", "--spool", str(factory.spool_dir))
    assert r.stdout.splitlines() == [
        "cirron.session — 7.3ms pid=96540 rank=0",
        "  fit — 6.2ms estimator=Pipeline",
        "    fit_transform — 803.1us estimator=StandardScaler",
        "  predict — 191.0us estimator=Pipeline",
        "    transform — 66.8us estimator=StandardScaler",
    ]


@pytest.mark.parametrize("value,visible", [("5.2ms", False), ("5200us", False), ("5200µs", False), ("5200000ns", False),
                                           ("1ms", True), ("0.001s", True), ("1m", False), ("1h", False)])
def test_min_wall_units(factory: SpoolFactory, value, visible):
    factory.session()
    r = run("traces", "view", "--min-wall", value, "--spool", str(factory.spool_dir))
    assert r.exit_code == 0
    assert ("forward — 5.1ms" in r.stdout) is visible
    assert r.stdout.startswith("cirron.session")


def test_min_wall_invalid(factory: SpoolFactory):
    factory.session()
    r = run("traces", "view", "--min-wall", "fast", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("Error: Invalid --min-wall duration: fast")


def test_last_and_session_prefix(factory: SpoolFactory):
    s1 = factory.session()
    s2 = factory.session(start_ns=BASE_NS + 10**9, epochs=1)
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert r.stdout.count("cirron.session") == 1 and "epoch[1]" not in r.stdout  # newest only
    r = run("traces", "view", "--last", "2", "--spool", str(factory.spool_dir))
    assert r.stdout.count("cirron.session") == 2
    r = run("traces", "view", "--session", s1["root"][:12], "--spool", str(factory.spool_dir))
    assert "epoch[1]" in r.stdout and r.stdout.count("cirron.session") == 1
    r = run("traces", "view", "--session", "zzzz", "--spool", str(factory.spool_dir))
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: No session found matching zzzz"
    assert s2


def test_live_and_crashed_sessions_shown(factory: SpoolFactory):
    live = factory.session(open_root=True, epochs=1)
    crashed = factory.session(open_root=True, epochs=1, start_ns=BASE_NS + 10**9)
    factory.hold_lock(live["root"])
    r = run("traces", "view", "--last", "2", "--spool", str(factory.spool_dir))
    assert "cirron.session — (live) pid=1797 rank=0" in r.stdout
    assert "cirron.session — (crashed) pid=1797 rank=0" in r.stdout
    r = run("traces", "list", "--spool", str(factory.spool_dir))
    assert re.search(r"│\s+\(live\)\s+│", r.stdout)
    assert re.search(r"│\s+\(crashed\)\s+│", r.stdout)
    data = json.loads(run("traces", "list", "--json", "--spool", str(factory.spool_dir)).stdout)
    by_id = {s["id"]: s for s in data["sessions"]}
    assert by_id[live["root"]]["live"] is True and by_id[live["root"]]["crashed"] is False
    assert by_id[crashed["root"]]["live"] is False and by_id[crashed["root"]]["crashed"] is True
    assert by_id[live["root"]]["ended_ns"] is None


def test_colour_only_when_asked(factory: SpoolFactory, monkeypatch):
    factory.session(epochs=1)
    monkeypatch.setattr("cirron_cli.traces.use_color", lambda no_color=False, stream=None: not no_color)
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert "\x1b[" in r.stdout
    r = run("traces", "view", "--no-color", "--spool", str(factory.spool_dir))
    assert "\x1b[" not in r.stdout


def test_use_color_rules(monkeypatch):
    from cirron_cli.render import use_color

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(False, Tty())
    assert not use_color(True, Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(False, Tty())


def test_view_json(factory: SpoolFactory):
    s = factory.session(epochs=1)
    r = run("traces", "view", "--json", "--depth", "1", "--spool", str(factory.spool_dir))
    data = json.loads(r.stdout)
    assert data[0]["id"] == s["root"]
    types = [n["type"] for n in data[0]["nodes"]]
    assert types == ["span", "span", "collapsed"]
    assert data[0]["nodes"][2]["spans"] == 4
    assert data[0]["nodes"][1]["start_ns"] == str(s["spans"][1]["start_ns"])


def test_list_table_exact_shape(factory: SpoolFactory):
    s = factory.session(snapshots=True)
    r = run("traces", "list", "--spool", str(factory.spool_dir))
    lines = r.stdout.splitlines()
    assert lines[0] == f"Spool: {factory.spool_dir.resolve()}  (1 session)"
    assert lines[1].startswith("┌───────────┬──────────────────────────┬──────────┬───────┬───────┬───────────┬")
    assert lines[2].startswith("│ SESSION   │ STARTED                  │ DURATION │ SPANS │ MARKS │ SNAPSHOTS │")
    row = lines[4]
    assert row.startswith(f"│ {s['root'][:8]}… │ 2026-04-18T04:29:58.051Z │  561.7ms │    11 │     4 │         2 │")
    assert lines[-1].startswith("└")


def test_list_json_keys(factory: SpoolFactory):
    s = factory.session()
    data = json.loads(run("traces", "list", "--json", "--spool", str(factory.spool_dir)).stdout)
    assert data["dir"] == str(factory.spool_dir.resolve())
    sess = data["sessions"][0]
    assert set(sess) == {"id", "started_ns", "ended_ns", "live", "crashed", "spans", "marks", "snapshots", "bytes",
                         "sdk_version", "spool", "run_id", "rank", "world_size", "local_rank", "writer", "unfinished"}
    assert sess["writer"] == "cirron" and sess["unfinished"] is False
    assert sess["id"] == s["root"]
    assert sess["started_ns"] == str(BASE_NS) and isinstance(sess["ended_ns"], str)
    assert sess["spans"] == 11 and sess["marks"] == 4 and sess["sdk_version"] == "0.1.0"
    assert sess["bytes"] == sum(p.stat().st_size for p in factory.spool_dir.glob("*.json"))


def test_list_newest_first(factory: SpoolFactory):
    old = factory.session(epochs=1)
    new = factory.session(epochs=1, start_ns=BASE_NS + 10**10)
    data = json.loads(run("traces", "list", "--json", "--spool", str(factory.spool_dir)).stdout)
    assert [s["id"] for s in data["sessions"]] == [new["root"], old["root"]]


@pytest.mark.parametrize("cmd", [["view"], ["list"]])
def test_empty_and_missing_spool(tmp_path, cmd):
    for spool in (tmp_path / "missing", tmp_path):
        r = run("traces", *cmd, "--spool", str(spool))
        assert r.exit_code == 0
        assert r.stdout.strip() == "No traces found. Run ci.profile() from Python to produce some."
    r = run("traces", "view", "--json", "--spool", str(tmp_path / "missing"))
    assert r.stdout.strip() == "[]"


def test_default_spool_is_cwd(factory: SpoolFactory, monkeypatch):
    factory.session(epochs=1)
    monkeypatch.chdir(factory.root)
    r = run("traces", "view")
    assert r.stdout.startswith("cirron.session — 561.7ms")


def test_orphan_session_view_and_list(factory: SpoolFactory):
    top = factory.span("train", parent_id="gone")
    kid = factory.span("step", parent_id=top["id"], start_ns=BASE_NS + 1)
    factory.write_batch([top, kid])
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert r.stdout.splitlines() == ["(orphan spans)", "  train — 1.0ms", "    step — 1.0ms"]
    r = run("traces", "list", "--spool", str(factory.spool_dir))
    assert "│ (orphan spans) │" in r.stdout


def test_deep_chain_and_cycle_render(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=10 * MS)
    spans = [root]
    prev = root["id"]
    for i in range(3000):
        s = factory.span("lvl", parent_id=prev, start_ns=BASE_NS + i, dur_ns=MS)
        spans.append(s)
        prev = s["id"]
    a = factory.span("a", id="cyc-a", parent_id="cyc-b")
    b = factory.span("b", id="cyc-b", parent_id="cyc-a")
    factory.write_batch(spans + [a, b], session_id=root["id"])
    r = run("traces", "view", "--depth", "5", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-1].strip() == "… 1.0ms (2,995 spans, collapsed)"
    r = run("traces", "view", "--json", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0 and len(json.loads(r.stdout)[0]["nodes"]) == 3001
