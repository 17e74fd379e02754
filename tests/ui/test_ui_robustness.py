"""``cirron ui`` on bad input and awkward spools: one-line errors, no tracebacks, no hangs, and
whatever can be read is shown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ui_helpers import LiveRun, Runs, UIServer

TIMEOUT = 30.0


def run_ui(*args: str) -> subprocess.CompletedProcess:
    """``cirron ui ARGS`` that must fail at once (bounded: a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "cirron_cli.app", "ui", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def sessions(server: UIServer) -> dict:
    r = httpx.get(server.url + "/api/sessions", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


@pytest.mark.parametrize(("args", "code", "error"), [
    (["--port", "70000"], 2, "Error: Invalid --port: 70000 (expected 0-65535)"),
    (["--host", "no-such-host.invalid", "--port", "0"], 1, "Error: cannot resolve host no-such-host.invalid"),
    (["--spool", "nowhere-*/spool", "--port", "0"], 1, "Error: No spool directory matches nowhere-*/spool"),
])
def test_bad_options_are_one_line_errors(args: list[str], code: int, error: str, tmp_path: Path) -> None:
    r = run_ui(*args, *([] if "--spool" in args else ["--spool", str(tmp_path)]))
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(error), r.stderr
    assert r.stdout == ""


def test_missing_spool_is_served_empty_until_a_run_writes_there(tmp_path: Path, runs: Runs) -> None:
    spool = tmp_path / "later" / "spool"
    server = UIServer("--spool", str(spool))
    try:
        assert sessions(server)["sessions"] == []
        page = httpx.get(server.url + "/", timeout=TIMEOUT)
        assert page.status_code == 200
        shutil.copytree(runs.train, spool)  # a run writes there now
        assert len(sessions(server)["sessions"]) == 1
    finally:
        code, _out, err = server.stop()
    assert code == 0
    assert err.strip() == f"Warning: spool directory {spool} does not exist"


def test_empty_spool_lists_no_sessions(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    server = UIServer("--spool", str(spool))
    try:
        doc = sessions(server)
        assert doc["sessions"] == [] and doc["warnings"] == []
        r = httpx.get(server.url + "/api/session/0123/timeline", timeout=TIMEOUT)
        assert r.status_code == 404 and "0123" in r.json()["error"]
    finally:
        code, _out, err = server.stop()
    assert code == 0 and err == ""
    from cirron.spool.index import INDEX_NAME

    assert [p.name for p in spool.iterdir() if p.name != INDEX_NAME] == []


def test_corrupt_batch_file_is_skipped_and_reported(tmp_path: Path, runs: Runs) -> None:
    """A truncated batch file (a crash mid-write, a full disk): the sessions and views of the rest
    are served, the page names the file, the server keeps going."""
    spool = tmp_path / "spool"
    shutil.copytree(runs.train, spool)
    batch = sorted(spool.glob("*.json"))[-1]
    before = batch.read_bytes()
    batch.write_bytes(before[: len(before) // 2])
    server = UIServer("--spool", str(spool))
    try:
        doc = sessions(server)
        assert len(doc["sessions"]) == 1
        assert any(batch.name in w for w in doc["warnings"]), doc["warnings"]
        sid = doc["sessions"][0]["id"]
        for view in ("timeline", "steps", "snapshots", "requests"):
            r = httpx.get(f"{server.url}/api/session/{sid}/{view}", timeout=TIMEOUT)
            assert r.status_code == 200, (view, r.text)
        assert httpx.get(f"{server.url}/api/marks", params={"session": sid}, timeout=TIMEOUT).status_code == 200
    finally:
        code, _out, err = server.stop()
    assert code == 0 and "Traceback" not in err, err
    assert batch.read_bytes() == before[: len(before) // 2]  # read-only, even of a broken file


@pytest.mark.parametrize("path", ["/", "/api/sessions", "/session/x/timeline", "/static/app.js", "/api/marks"])
def test_only_get_is_answered(ui_server: UIServer, path: str) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = httpx.request(method, ui_server.url + path, timeout=TIMEOUT)
        assert r.status_code == 405, (method, path, r.status_code)
        assert r.json()["error"]
    assert httpx.head(ui_server.url + "/api/sessions", timeout=TIMEOUT).status_code == 200


def test_unknown_paths_are_404_json(ui_server: UIServer) -> None:
    for path in ("/nope", "/session/x/nope", "/static/nope.js", "/api/nope"):
        r = httpx.get(ui_server.url + path, timeout=TIMEOUT)
        assert r.status_code == 404, path
        assert r.json()["error"], path


def test_live_run_is_badged_and_its_data_grows(tmp_path: Path) -> None:
    """A process still writing: its session is live, and each look sees more of it."""
    run = LiveRun(tmp_path / "live")
    server = None
    try:
        wait_until(lambda: any(run.spool.glob("*.json")), "the live run's first batch file", 60)
        server = UIServer("--spool", str(run.spool))
        wait_until(lambda: [s["status"] for s in sessions(server)["sessions"]] == ["live"], "a live session")
        sid = sessions(server)["sessions"][0]["id"]

        def losses() -> int:
            doc = httpx.get(server.url + "/api/marks", params={"session": sid}, timeout=TIMEOUT).json()
            return len(doc["sessions"][0]["series"].get("loss", {"y": []})["y"])

        first = losses()
        wait_until(lambda: losses() > first, "new loss marks of the live run")
        run.stop()
        wait_until(lambda: sessions(server)["sessions"][0]["status"] == "ended", "the session to end")
    finally:
        if run.proc.poll() is None:
            run.stop()
        if server is not None:
            code, _out, err = server.stop()
            assert code == 0, err


def test_parent_cycle_is_served_not_hung(tmp_path: Path) -> None:
    """A foreign or corrupt spool whose parent_id links loop (a -> b -> a, a step under them, no
    epoch on the way): every view is answered within the timeout (parent links are followed at
    most MAX_DEPTH deep), the spans shown as the reader groups them."""
    from spool_factory import BASE_NS, MS, SpoolFactory, new_id

    factory = SpoolFactory(tmp_path)
    a, b, step = new_id(), new_id(), new_id()
    spans = [factory.span("loop_a", id=a, parent_id=b, dur_ns=10 * MS),
             factory.span("loop_b", id=b, parent_id=a, start_ns=BASE_NS + MS, dur_ns=5 * MS),
             factory.span("batch", id=step, parent_id=a, index=7, start_ns=BASE_NS + 2 * MS, dur_ns=2 * MS),
             factory.span("forward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=MS)]
    factory.write_batch(spans, [factory.mark(step, "loss", 0.5, ts_ns=BASE_NS + 3 * MS)], session_id=new_id())
    factory.close()
    server = UIServer("--spool", str(factory.spool_dir))
    try:
        listed = sessions(server)["sessions"]
        assert [s["spans"] for s in listed] == [4]
        sid = listed[0]["id"]
        for view in ("timeline", "steps", "snapshots", "requests"):
            r = httpx.get(f"{server.url}/api/session/{sid}/{view}", timeout=TIMEOUT)
            assert r.status_code == 200, (view, r.text)
        steps = httpx.get(f"{server.url}/api/session/{sid}/steps", timeout=TIMEOUT).json()
        assert steps["labels"] == ["batch[7]"] and steps["bars"]["forward"] == [MS]  # no epoch above it
        assert httpx.get(f"{server.url}/api/marks", params={"session": sid}, timeout=TIMEOUT).status_code == 200
    finally:
        code, _out, err = server.stop()
    assert code == 0 and "Traceback" not in err, err
