"""`cirron auth login | logout` and `cirron status` (config sources, masking, spool, reachability)."""

from __future__ import annotations

import http.server
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from cirron_cli.app import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()


@pytest.fixture
def cfg_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for k in list(os.environ):
        if k.startswith(("CIRRON_", "OTEL_EXPORTER_OTLP_")):
            monkeypatch.delenv(k)
    path = tmp_path / "home" / ".cirron" / "config.toml"
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(path))
    monkeypatch.setenv("CIRRON_NO_PROJECT_FILE", "1")
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def http_ok() -> Iterator[str]:
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _ok(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _ok  # noqa: N815

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_login_creates_0600_file_and_preserves_other_keys(cfg_file: Path) -> None:
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text('# mine\nspool_dir = "/data/spool"\napi_key = "old"\n\n[team]\nname = "vision"\n')
    res = runner.invoke(app, ["auth", "login", "--api-key", "sk-live-0123456789abcdef", "--endpoint",
                              "https://cirron.example.com/", "--workspace", "ws-42"])
    assert res.exit_code == 0, res.output
    assert "sk-l…cdef" in res.output and "0123456789" not in res.output
    assert stat.S_IMODE(cfg_file.stat().st_mode) == 0o600
    text = cfg_file.read_text()
    assert text.startswith("# mine\n")
    doc = tomllib.loads(text)
    assert doc == {"spool_dir": "/data/spool", "api_key": "sk-live-0123456789abcdef",
                   "api_endpoint": "https://cirron.example.com", "workspace_id": "ws-42",
                   "team": {"name": "vision"}}
    assert not [p for p in cfg_file.parent.iterdir() if p.name != "config.toml"]  # no temp file left

    res = runner.invoke(app, ["auth", "logout"])
    assert res.exit_code == 0 and "Removed the API key" in res.output
    doc = tomllib.loads(cfg_file.read_text())
    assert "api_key" not in doc and doc["workspace_id"] == "ws-42" and doc["team"] == {"name": "vision"}
    assert stat.S_IMODE(cfg_file.stat().st_mode) == 0o600
    res = runner.invoke(app, ["auth", "logout"])
    assert res.exit_code == 0 and "Not logged in" in res.output


def test_login_new_file_and_stdin(cfg_file: Path) -> None:
    res = runner.invoke(app, ["auth", "login", "--api-key", "-"], input="key-from-stdin-123\n")
    assert res.exit_code == 0, res.output
    assert tomllib.loads(cfg_file.read_text()) == {"api_key": "key-from-stdin-123"}
    assert stat.S_IMODE(cfg_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("args, msg", [
    (["--api-key", "has space"], "Error: Invalid --api-key"),
    (["--api-key", ""], "Error: Invalid --api-key"),
    (["--api-key", "k-123", "--endpoint", "not a url"], "Error: Invalid --endpoint"),
    ([], "Error: Missing --api-key"),
])
def test_login_bad_input_is_one_line_error(cfg_file: Path, args: list[str], msg: str) -> None:
    res = runner.invoke(app, ["auth", "login", *args])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip().splitlines()[0]]
    assert res.output.startswith(msg)
    assert not cfg_file.exists()


def test_login_refuses_to_clobber_invalid_toml(cfg_file: Path) -> None:
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text("api_key = [unclosed\n")
    res = runner.invoke(app, ["auth", "login", "--api-key", "k-123456"])
    assert res.exit_code == 1 and res.output.startswith("Error:") and "not valid TOML" in res.output
    assert cfg_file.read_text() == "api_key = [unclosed\n"


def test_status_json_sources_masking_spool_and_reachability(cfg_file: Path, http_ok: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runner.invoke(app, ["auth", "login", "--api-key", "sk-live-0123456789abcdef", "--endpoint", http_ok])
    monkeypatch.setenv("CIRRON_WORKSPACE_ID", "ws-env")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_ok)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20tok")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"1776486598051509000-{'b' * 32}.json").write_text('{"schema_version":1}')
    res = runner.invoke(app, ["status", "--json", "--spool", str(spool)])
    assert res.exit_code == 0, res.output
    assert "0123456789" not in res.output and "tok" not in res.output
    doc = orjson.loads(res.output)
    cfg = doc["config"]
    assert cfg["api_key"] == {"value": "sk-l…cdef", "source": str(cfg_file)}
    assert cfg["api_endpoint"]["source"] == str(cfg_file)
    assert cfg["workspace_id"] == {"value": "ws-env", "source": "env CIRRON_WORKSPACE_ID"}
    assert cfg["spool_dir"]["source"] == "argument"
    assert cfg["flush_interval"] == {"value": 1.0, "source": "default"}
    assert doc["otlp"]["endpoint"] == {"value": http_ok + "/v1/traces", "source": "env OTEL_EXPORTER_OTLP_ENDPOINT"}
    assert doc["otlp"]["headers"]["value"] == {"authorization": "****"}
    assert doc["spool"]["batch_files"] == 1 and doc["spool"]["not_uploaded"] == 1 and doc["spool"]["bytes"] > 0
    assert doc["platform"]["reachable"] and doc["platform"]["status"] == 200
    assert doc["collector"]["reachable"] and doc["collector"]["ok"]

    res = runner.invoke(app, ["status", "--spool", str(spool), "--no-color"])
    assert res.exit_code == 0, res.output
    assert "sk-l…cdef" in res.output and "\x1b[" not in res.output
    assert f"Platform: {http_ok}  reachable (HTTP 200" in res.output
    assert "Spool: " in res.output and "1 batch file" in res.output


def test_status_unreachable_and_offline(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from netutil import free_port

    port = free_port()
    monkeypatch.setenv("CIRRON_API_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    res = runner.invoke(app, ["status", "--json", "--timeout", "1"])
    assert res.exit_code == 0, res.output
    doc = orjson.loads(res.output)
    assert not doc["platform"]["reachable"] and "ConnectError" in doc["platform"]["error"]
    assert not doc["collector"]["reachable"]
    assert doc["config"]["api_key"]["value"] is None and doc["spool"]["exists"] is False
    res = runner.invoke(app, ["status", "--offline", "--json"])
    assert "platform" not in orjson.loads(res.output)


def test_status_bad_config_is_one_line_error(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_FLUSH_INTERVAL", "often")
    res = runner.invoke(app, ["status", "--offline"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: flush_interval (from env CIRRON_FLUSH_INTERVAL)")
    assert len(res.output.strip().splitlines()) == 1
    monkeypatch.delenv("CIRRON_FLUSH_INTERVAL")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    res = runner.invoke(app, ["status", "--offline", "--json"])
    assert res.exit_code == 0 and "grpc" in orjson.loads(res.output)["otlp"]["error"]
