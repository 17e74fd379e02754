"""The viewer's JSON API and server behaviour, over HTTP against a real ``cirron ui`` (uvicorn)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from ui_helpers import Runs, UIServer

TIMEOUT = 30.0


def get(server: UIServer, path: str, **params) -> dict:
    r = httpx.get(server.url + path, params=params, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def session_of(server: UIServer, spool: Path) -> dict:
    found = [s for s in get(server, "/api/sessions")["sessions"] if s["spool"] == str(spool)]
    assert found, f"no session from {spool}"
    return found[0]


def test_sessions_table_lists_every_spool(ui_server: UIServer, runs: Runs) -> None:
    doc = get(ui_server, "/api/sessions")
    assert doc["spools"] == [str(p) for p in (runs.train, runs.inference, runs.ranks)]
    sessions = doc["sessions"]
    assert len(sessions) == 4  # train, inference, two ranks
    starts = [s["started_ns"] for s in sessions]
    assert starts == sorted(starts, reverse=True)  # newest first
    train = session_of(ui_server, runs.train)
    assert train["status"] == "ended" and not train["live"]
    assert train["spans"] > 100 and train["marks"] >= 4 * 12 * 2 + 4 and train["snapshots"] > 0
    ranked = [s for s in sessions if s["run_id"] == "run-42"]
    assert sorted(s["rank"] for s in ranked) == [0, 1]


def test_timeline_sends_only_the_window_and_aggregates_the_rest(ui_server: UIServer, runs: Runs) -> None:
    sid = session_of(ui_server, runs.train)["id"]
    full = get(ui_server, f"/api/session/{sid}/timeline", px=200)
    assert full["t0"] == 0 and full["t1"] == full["duration_ns"]
    # every visible span is either drawn or counted in a block, never lost
    assert len(full["spans"]) + sum(b["count"] for b in full["blocks"]) == full["visible"]
    assert full["blocks"], "at 200 px the millisecond-long batch spans must be merged"
    assert {s["name"] for s in full["spans"]} >= {"cirron.session", "epoch"}
    assert full["marks"] and all(0 <= m["t"] <= full["t1"] for m in full["marks"])
    # zoom into the first batch: fewer spans overall, the ones drawn are the ones in the window
    first_batch = min((s for s in full["spans"] + full["blocks"] if s["name"] == "batch"), key=lambda s: s["start"])
    t0, t1 = first_batch["start"], first_batch["end"]
    zoom = get(ui_server, f"/api/session/{sid}/timeline", t0=t0, t1=t1, px=1000)
    assert zoom["visible"] < full["visible"]
    assert len(zoom["spans"]) + sum(b["count"] for b in zoom["blocks"]) == zoom["visible"]
    assert all(s["end"] >= t0 and s["start"] <= t1 for s in zoom["spans"])
    # a span of at least a pixel comes one by one, a smaller one in a block named after its spans:
    # which phases are under a pixel depends on the machine's load (a loaded machine stretches a
    # batch to 100+ ms while its optimizer_step stays near 0.1 ms, under a pixel of 1000)
    ns_per_px = (t1 - t0) / 1000
    assert all(s["end"] - s["start"] >= ns_per_px for s in zoom["spans"])
    names = {s["name"] for s in zoom["spans"]} | {b["name"] for b in zoom["blocks"]}
    assert {"batch", "forward", "backward", "optimizer_step", "data_load"} <= names
    fwd = next(s for s in zoom["spans"] if s["name"] == "forward")
    assert fwd["cpu_ns"] is not None and fwd["depth"] == 3 and fwd["label"] == "forward"


def test_steps_split_each_batch_into_phases(ui_server: UIServer, runs: Runs) -> None:
    sid = session_of(ui_server, runs.train)["id"]
    doc = get(ui_server, f"/api/session/{sid}/steps")
    assert doc["steps"] == 4 * 12 and doc["step_name"] == "batch"
    assert set(doc["bars"]) == {"data_load", "forward", "backward", "optimizer_step", "other"}
    assert all(len(v) == 48 for v in doc["bars"].values())
    assert doc["labels"][0] == "epoch[0] batch[0]" and doc["labels"][-1] == "epoch[3] batch[11]"
    # the loader sleeps 1 ms per batch: data_load is never less than that
    assert min(doc["bars"]["data_load"]) >= 1_000_000
    slow = doc["slowest"]
    assert len(slow) == 20 and [s["wall_ns"] for s in slow] == sorted((s["wall_ns"] for s in slow), reverse=True)
    for s in slow:
        assert sum(s[p] for p in ("data_load", "forward", "backward", "optimizer_step", "other")) == s["wall_ns"]


def test_marks_series_and_summary_overlaid(ui_server: UIServer, runs: Runs) -> None:
    a = session_of(ui_server, runs.train)["id"]
    ranks = [s["id"] for s in get(ui_server, "/api/sessions")["sessions"] if s["run_id"] == "run-42"]
    doc = get(ui_server, "/api/marks", session=[a, *ranks])
    assert [s["session"] for s in doc["sessions"]] == [a, *ranks]
    train = doc["sessions"][0]
    assert {"loss", "lr"} <= set(train["series"])
    loss = train["series"]["loss"]
    assert loss["x"] == list(range(48)) and len(loss["y"]) == 48 and all(0 < y < 2 for y in loss["y"])
    assert [r["name"] for r in train["summary"]] == ["epoch_loss"] * 4
    assert [r["span"] for r in train["summary"]] == [f"epoch[{i}]" for i in range(4)]
    assert all("loss" in s["series"] for s in doc["sessions"][1:])
    by_time = get(ui_server, "/api/marks", session=a, x="time")
    xs = by_time["sessions"][0]["series"]["loss"]["x"]
    assert xs == sorted(xs) and xs[0] > 0


def test_snapshots_stats_and_histograms_per_tensor(ui_server: UIServer, runs: Runs) -> None:
    sid = session_of(ui_server, runs.train)["id"]
    doc = get(ui_server, f"/api/session/{sid}/snapshots")
    tensors = {(t["tensor"], t["role"]): t for t in doc["tensors"]}
    w = tensors[("0.weight", "weight")]
    assert w["x"] == [0, 1, 2, 3] and w["labels"] == [f"epoch[{i}]" for i in range(4)]
    assert all(v is not None and v > 0 for v in w["norm"] + w["std"])
    assert len(w["hist_z"]) == len(w["hist_edges"]) == 48
    for col in range(4):  # each epoch's histogram is a distribution over the common grid
        assert sum(row[col] for row in w["hist_z"]) == pytest.approx(1.0)


def _bounded_sorted(values: list[float], low: list[float], high: list[float]) -> None:
    """Each of ``values`` lies between its request's ``low`` and ``high``, which of the lists are
    unordered: then the k-th smallest value lies between the k-th smallest bounds."""
    assert len(values) == len(low) == len(high)
    for v, lo, hi in zip(sorted(values), sorted(low), sorted(high)):
        assert lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9), (v, lo, hi)


def test_requests_of_a_real_fastapi_server_match_what_was_sent(ui_server: UIServer, runs: Runs) -> None:
    """The spool of a FastAPI app under uvicorn, stopped by SIGTERM: every request the client sent
    is there, and each figure lies between what the server was told to take and what the client saw."""
    import numpy as np

    served = runs.served
    assert served.exit_code in (0, -15) and "Traceback" not in served.stderr, served.stderr
    info = session_of(ui_server, runs.inference)
    assert info["status"] == "ended"  # SIGTERM: uvicorn's graceful stop closed the session
    doc = get(ui_server, f"/api/session/{info['id']}/requests")
    sent = served.sent
    assert doc["requests"] == len(sent) == 83
    assert sum(w["count"] for w in doc["windows"]) == len(sent)
    assert all(w["p50"] <= w["p95"] <= w["p99"] for w in doc["windows"])
    low = np.array([r.min_ns for r in sent], dtype=float)
    high = np.array([r.client_ns for r in sent], dtype=float)
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert np.percentile(low, q) <= doc["overall"][name] <= np.percentile(high, q), name
    streams = [r for r in sent if r.kind == "stream"]
    _bounded_sorted(doc["ttft_ns"], [r.min_ttft_ns for r in streams], [r.client_ttft_ns for r in streams])
    _bounded_sorted(doc["tokens_per_s"], [r.tokens / r.client_ns * 1e9 for r in sent],
                    [r.tokens / r.min_ns * 1e9 for r in sent])
    by_id = {r.request_id: r for r in sent}
    slowest = doc["slowest"]
    assert len(slowest) == 20 and [r["latency_ns"] for r in slowest] == sorted((r["latency_ns"] for r in slowest), reverse=True)
    # each request made slow on purpose ranks no lower than the others that could have beaten it
    # (whose client-side time exceeds its server-side sleep): exact on a quiet machine, still true
    # under load, where a quick request may take longer than a slow one was told to
    ranked = [by_id[r["request_id"]] for r in slowest]
    for want in (300_000_000, 150_000_000, 80_000_000):
        slow = next(r for r in sent if r.min_ns == want)
        rivals = sum(1 for r in sent if r is not slow and r.client_ns > slow.min_ns)
        if rivals < len(slowest):
            assert slow in ranked and ranked.index(slow) <= rivals, (want, rivals)
    for row in slowest:
        mine = by_id[row["request_id"]]
        assert mine.min_ns <= row["latency_ns"] <= mine.client_ns
        assert row["tokens"] == mine.tokens
        if mine.kind == "stream":
            assert row["stream_end"] == "exhausted" and mine.min_ttft_ns <= row["ttft_ns"] <= mine.client_ttft_ns
        else:
            assert row["ttft_ns"] is None and row["stream_end"] is None
    # the slowest request's window on the timeline holds its span
    top = slowest[0]
    view = get(ui_server, f"/api/session/{info['id']}/timeline", t0=top["start"], t1=top["end"], px=1000)
    assert any(s["name"] == "request" and top["request_id"] in s["attrs"] and s["start"] == top["start"]
               for s in view["spans"])
    # a training session has no requests: an empty answer, not an error
    train = session_of(ui_server, runs.train)["id"]
    assert get(ui_server, f"/api/session/{train}/requests")["requests"] == 0


def test_ranks_flag_the_slow_rank(ui_server: UIServer) -> None:
    doc = get(ui_server, "/api/run/run-42/ranks")
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    r0, r1 = doc["ranks"]
    assert r0["steps"] == r1["steps"] == 60
    assert r1["straggler"] and not r0["straggler"]
    assert r1["data_load_share"] > r0["data_load_share"]


def test_pages_and_assets_are_served_locally(ui_server: UIServer, runs: Runs) -> None:
    sid = session_of(ui_server, runs.train)["id"]
    for path in ["/", f"/session/{sid}/timeline", f"/session/{sid}/steps", f"/session/{sid}/marks",
                 f"/session/{sid}/snapshots", f"/session/{sid}/requests", f"/marks?session={sid}", "/run/run-42"]:
        r = httpx.get(ui_server.url + path, timeout=TIMEOUT)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], path
        assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    r = httpx.get(ui_server.url + f"/session/{sid}", timeout=TIMEOUT, follow_redirects=True)
    assert r.status_code == 200 and str(r.url).endswith("/timeline")
    js = httpx.get(ui_server.url + "/static/plotly.min.js", timeout=TIMEOUT)
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    for asset in ("app.js", "style.css"):
        assert httpx.get(ui_server.url + "/static/" + asset, timeout=TIMEOUT).status_code == 200
    assert httpx.get(ui_server.url + "/static/..%2fapp.py", timeout=TIMEOUT).status_code == 404


def test_pages_name_their_assets_by_version_and_only_those_are_cached_for_good(ui_server: UIServer) -> None:
    import re

    page = httpx.get(ui_server.url + "/", timeout=TIMEOUT).text
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert sorted(u.split("?")[0] for u in urls) == ["/static/app.js", "/static/favicon.svg", "/static/plotly.min.js",
                                                    "/static/style.css"]
    for url in urls:
        assert re.fullmatch(r"/static/[\w.]+\?v=[0-9a-f]{12}", url), url
        r = httpx.get(ui_server.url + url, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=31536000, immutable", url
        # the same file without its version, or at another one (a page from before an upgrade): revalidated
        for stale in (url.split("?")[0], url.split("?")[0] + "?v=000000000000"):
            r = httpx.get(ui_server.url + stale, timeout=TIMEOUT)
            assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", stale
    assert "defer" in next(line for line in page.splitlines() if "plotly.min.js" in line)


def test_errors_are_json_and_writes_are_refused(ui_server: UIServer) -> None:
    r = httpx.get(ui_server.url + "/api/session/nope/steps", timeout=TIMEOUT)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.get(ui_server.url + "/api/run/nope/ranks", timeout=TIMEOUT)
    assert r.status_code == 404
    sid = get(ui_server, "/api/sessions")["sessions"][0]["id"]
    r = httpx.get(ui_server.url + f"/api/session/{sid}/timeline", params={"t0": "soon"}, timeout=TIMEOUT)
    assert r.status_code == 400 and "t0" in r.json()["error"]
    r = httpx.get(ui_server.url + "/api/marks", params={"session": sid, "x": "bogus"}, timeout=TIMEOUT)
    assert r.status_code == 400
    for method in ("POST", "PUT", "DELETE"):
        assert httpx.request(method, ui_server.url + "/api/sessions", timeout=TIMEOUT).status_code == 405


def _snapshot_tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but the spool index (a cache any reader may refresh, see cirron.spool.index)."""
    from cirron.spool.index import INDEX_NAME

    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.name != INDEX_NAME}


def test_server_is_read_only_and_stops_cleanly_on_ctrl_c(runs: Runs) -> None:
    cirron_dir = runs.train.parent
    before = _snapshot_tree(cirron_dir)
    server = UIServer("--spool", str(runs.train))
    try:
        sid = get(server, "/api/sessions")["sessions"][0]["id"]
        for view in ("timeline", "steps", "snapshots", "requests"):
            get(server, f"/api/session/{sid}/{view}")
        get(server, "/api/marks", session=sid)
    finally:
        code, out, err = server.stop()
    assert code == 0, err
    assert "http://127.0.0.1:" in out and "Traceback" not in err
    assert _snapshot_tree(cirron_dir) == before


def test_live_session_is_badged_and_new_sessions_appear(tmp_path: Path, runs: Runs) -> None:
    """A session written later shows up without a restart; one whose root is open is live while
    its writer holds the liveness lock, and crashed once the lock is gone."""
    import fcntl
    import json
    import shutil

    from cirron.spool import paths

    spool = tmp_path / "spool"
    shutil.copytree(runs.inference, spool)
    server = UIServer("--spool", str(spool))
    try:
        assert len(get(server, "/api/sessions")["sessions"]) == 1
        for f in runs.train.iterdir():  # a second run writes into the same spool
            if f.is_file():
                shutil.copy(f, spool / f.name)
        sessions = get(server, "/api/sessions")["sessions"]
        assert len(sessions) == 2
        sid = sessions[0]["id"]
        for f in spool.glob("*.json"):  # the newest session's root never closed, as in a running process
            d = json.loads(f.read_text())
            d["spans"] = [dict(s, end_ns=None) if s["id"] == sid else s for s in d["spans"]]
            f.write_text(json.dumps(d))
        lock_path = paths.live_lock_path(spool, sid)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            status = {s["id"]: s["status"] for s in get(server, "/api/sessions")["sessions"]}
            assert status[sid] == "live"
        status = {s["id"]: s["status"] for s in get(server, "/api/sessions")["sessions"]}
        assert status[sid] == "crashed"
    finally:
        code, _out, err = server.stop()
    assert code == 0, err


def test_non_loopback_bind_warns(runs: Runs) -> None:
    server = UIServer("--spool", str(runs.train), "--host", "0.0.0.0")
    code, _out, err = server.stop()
    assert code == 0
    assert "Warning: listening on 0.0.0.0" in err and "no authentication" in err


def test_busy_port_is_a_one_line_error(runs: Runs) -> None:
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "cirron_cli.app", "ui", "--spool", str(runs.train), "--port", str(port)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"Error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr


def test_spool_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "not-a-dir"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "cirron_cli.app", "ui", "--spool", str(f), "--port", "0"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"Error: Spool path {f} is not a directory"


def test_missing_extra_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from cirron_cli.app import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 1
    assert "cirron ui needs plotly: pip install 'cirron-trace[ui]'" in result.output


def _recording_browser(where: Path, record: Path) -> str:
    """An executable that writes the URL it is given to ``record``: a ``$BROWSER`` for the tests
    (Python's webbrowser runs ``$BROWSER URL``; the variable names one program, no arguments)."""
    import sys

    script = where / "browser"
    script.write_text(f"#!{sys.executable}\nimport os, sys\nopen({str(record)!r} + '.part', 'w').write(sys.argv[1])\n"
                      f"os.replace({str(record)!r} + '.part', {str(record)!r})\n")  # whole, or not there
    script.chmod(0o755)
    return str(script)


def test_open_flag_opens_the_served_url_in_the_browser(tmp_path: Path, runs: Runs) -> None:
    """``--open`` hands the URL it prints to the user's browser: ``$BROWSER`` (which Python's
    webbrowser module honours) is a script that records what it was given."""
    import time

    got = tmp_path / "opened.txt"
    server = UIServer("--spool", str(runs.train), "--open", env={"BROWSER": _recording_browser(tmp_path, got)})
    try:
        deadline = time.monotonic() + 30
        while not got.exists():
            assert time.monotonic() < deadline, "cirron ui --open did not start the browser within 30 s"
            assert server.proc.poll() is None, "cirron ui exited"
            time.sleep(0.05)
        opened = got.read_text()
        assert opened == server.url + "/"
        r = httpx.get(opened, timeout=TIMEOUT)
        assert r.status_code == 200 and 'data-page="runs"' in r.text
    finally:
        code, _out, err = server.stop()
    assert code == 0, err


def test_open_without_a_browser_says_so(tmp_path: Path, runs: Runs) -> None:
    """Where no browser can be started (a headless box: nothing on PATH, no display, a $BROWSER
    that fails), --open says so in one line and the server keeps serving."""
    failing = tmp_path / "no-browser"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    server = UIServer("--spool", str(runs.train), "--open",
                      env={"BROWSER": str(failing), "PATH": str(empty), "DISPLAY": "", "WAYLAND_DISPLAY": ""})
    try:
        server.wait_for("stderr", f"Warning: --open: no web browser could be started here; open {server.url}/ yourself")
        get(server, "/api/sessions")  # still serving
    finally:
        code, _out, err = server.stop()
    assert code == 0 and "Traceback" not in err, err


def test_without_open_no_browser_is_started(tmp_path: Path, runs: Runs) -> None:
    got = tmp_path / "opened.txt"
    server = UIServer("--spool", str(runs.train), env={"BROWSER": _recording_browser(tmp_path, got)})
    try:
        get(server, "/api/sessions")  # served and answering, yet no browser
    finally:
        code, _out, err = server.stop()
    assert code == 0, err
    assert not got.exists()


def test_connections_the_server_accepts_send_without_nagle_delay() -> None:
    """An answer goes out as its headers then its body: with Nagle's algorithm on, the body waited
    for the ACK of the headers, 40 ms of delayed ACK on every request after a connection's first."""
    import asyncio

    from cirron.ui.server import bind

    async def accepted_nodelay() -> int:
        sock = bind("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        try:
            _r, w = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, TIMEOUT)
            finally:
                w.close()
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
