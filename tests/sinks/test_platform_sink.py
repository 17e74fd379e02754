"""The ``platform`` sink and ``cirron spool flush`` against a real (fake) platform HTTP server."""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

import cirron
from cirron.sinks.upload import UploadState
from cirron.spool.reader import list_batch_files
from cirron_cli.app import app

from .conftest import Receiver, free_port, wait_for

runner = CliRunner()


def _run(spool: Path, endpoint: str, api_key: str = "sk-test-0123456789", workspace: str = "ws-1") -> cirron.Cirron:
    c = cirron.Cirron(spool_dir=spool, output=["platform"], api_key=api_key, api_endpoint=endpoint,
                      workspace_id=workspace, flush_interval=0.05, shutdown_timeout=3.0)
    c.profile()
    with c.scope("train"):
        for i in range(3):
            with c.scope("step", i=i):
                c.mark("loss", 0.5)
    return c


def test_batches_uploaded_with_headers_and_marked(platform_receiver: Receiver, tmp_path: Path) -> None:
    rcv = platform_receiver
    spool = tmp_path / "spool"
    c = _run(spool, rcv.url)
    c.shutdown()
    assert [s.name for s in c._sinks] == ["spool", "platform"]  # platform brings the spool along
    files = list_batch_files(spool)
    assert files and len(rcv.requests) == len(files)
    by_id = {r.headers["idempotency-key"]: r for r in rcv.requests}
    assert set(by_id) == {bf.batch_id for bf in files}
    for bf in files:
        r = by_id[bf.batch_id]
        assert r.path == "/v1/batches"
        assert r.headers["authorization"] == "Bearer sk-test-0123456789"
        assert r.headers["x-cirron-workspace"] == "ws-1"
        assert orjson.loads(r.body) == orjson.loads(bf.path.read_bytes())  # the batch, as spooled
    assert UploadState(spool).uploaded_ids() == {bf.batch_id for bf in files}
    h = c.health()["sinks"]["platform"]
    assert h["batches_written"] == len(files) and h["batches_deferred"] == 0

    # Nothing left to do for spool flush, and it sends nothing.
    n = len(rcv.requests)
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url],
                        env={"CIRRON_API_KEY": "sk-test-0123456789"})
    assert res.exit_code == 0, res.output
    assert "Nothing to upload" in res.output
    assert len(rcv.requests) == n


def test_platform_down_loses_nothing_then_spool_flush_resumes(platform_receiver: Receiver, tmp_path: Path) -> None:
    rcv = platform_receiver
    spool = tmp_path / "spool"
    dead = f"http://127.0.0.1:{free_port()}"
    c = _run(spool, dead)
    c.shutdown()
    files = list_batch_files(spool)
    assert files and UploadState(spool).uploaded_ids() == set()
    h = c.health()["sinks"]["platform"]
    assert h["batches_deferred"] == len(files) and h["last_error"]

    # The platform answers 503 to the first request, then accepts: retried, everything uploaded.
    rcv.plan = [("status", 503, {"Retry-After": "0"}, b""), ("ok",)]
    env = {"CIRRON_API_KEY": "sk-test-0123456789", "CIRRON_WORKSPACE_ID": "ws-9"}
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url], env=env)
    assert res.exit_code == 0, res.output
    assert f"Uploaded {len(files)} batch file" in res.output
    assert {r.headers["idempotency-key"] for r in rcv.requests} == {bf.batch_id for bf in files}
    assert all(r.headers["x-cirron-workspace"] == "ws-9" for r in rcv.requests)
    assert UploadState(spool).uploaded_ids() == {bf.batch_id for bf in files}

    # Idempotent: a second flush uploads nothing.
    n = len(rcv.requests)
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url, "--json"], env=env)
    assert res.exit_code == 0
    doc = orjson.loads(res.output)
    assert doc["pending"] == 0 and doc["already_uploaded"] == len(files)
    assert len(rcv.requests) == n


def test_spool_flush_errors_are_one_line(platform_receiver: Receiver, tmp_path: Path) -> None:
    rcv = platform_receiver
    spool = tmp_path / "spool"
    c = _run(spool, f"http://127.0.0.1:{free_port()}")
    c.shutdown()
    # No API key.
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url])
    assert res.exit_code == 1
    assert res.output.strip().startswith("Error: No API key configured")
    assert "Traceback" not in res.output
    # Refused key: stops at the first file, nothing marked; the message says to fix the key first.
    rcv.plan = [("status", 401, {}, b'{"error":"bad key"}')]
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url],
                        env={"CIRRON_API_KEY": "wrong-key-000000"})
    assert res.exit_code == 1
    assert "Error:" in res.output and "HTTP 401" in res.output and "refused the API key" in res.output
    assert "cirron auth login" in res.output and "again to resume" not in res.output
    assert rcv.attempts == 1 and UploadState(spool).uploaded_ids() == set()
    # Bad endpoint.
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", "ftp://x"],
                        env={"CIRRON_API_KEY": "k"})
    assert res.exit_code == 1 and res.output.startswith("Error: Invalid platform endpoint")
    # Dry run lists, sends nothing.
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url, "--dry-run"])
    assert res.exit_code == 0 and "Would upload" in res.output and rcv.attempts == 1


def test_corrupt_batch_is_skipped_with_warning(platform_receiver: Receiver, tmp_path: Path) -> None:
    rcv = platform_receiver
    spool = tmp_path / "spool"
    c = _run(spool, f"http://127.0.0.1:{free_port()}")
    c.shutdown()
    bad = spool / f"{1}-{'a' * 32}.json"
    bad.write_bytes(b'{"schema_version": 1, "spans": [')
    res = runner.invoke(app, ["spool", "flush", "--spool", str(spool), "--endpoint", rcv.url],
                        env={"CIRRON_API_KEY": "sk-test-0123456789"})
    assert res.exit_code == 0, res.output
    assert "Warning: Skipping" in res.output
    assert "a" * 32 not in {r.headers["idempotency-key"] for r in rcv.requests}
    wait_for(lambda: rcv.requests)
