"""ci.secret(): names never become paths outside the mount, and values read through it never
appear in anything cirron writes (spool, logs, health(), CLI errors, response bodies)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import cirron as ci
from cirron import _redact
from cirron._env import secret
from cirron._errors import CirronConfigError, CirronSecretNotFound

TOKEN = "sk-live-7f3a9c2e51d04b8a"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redact, "_values", frozenset())
    monkeypatch.setattr(_redact, "_pattern", None)


@pytest.mark.parametrize("name", ["../../etc/hostname", "a/b", "..", ".hidden", "", "a\\b", "x" * 129, "a..b",
                                  "tok\x00en", "/etc/passwd"])
def test_invalid_names_are_refused(name: str, tmp_path: Path):
    (tmp_path / "etc").mkdir()
    with pytest.raises(CirronConfigError, match="invalid secret name"):
        secret(name, mount=tmp_path / "mount")


def test_valid_names_read_env_then_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIRRON_SECRET_API_KEY", TOKEN)
    assert secret("api-key", mount=tmp_path) == TOKEN
    (tmp_path / "db.password").write_text("hunter2-long\n")
    assert secret("db.password", mount=tmp_path) == "hunter2-long"
    os.mkfifo(tmp_path / "fifo")  # never blocks: not a regular file, so not a secret
    with pytest.raises(CirronSecretNotFound):
        secret("fifo", mount=tmp_path)


def test_values_read_are_redacted_in_text(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CIRRON_SECRET_TOKEN", TOKEN)
    assert _redact.redact(f"auth failed for {TOKEN}") == f"auth failed for {TOKEN}"  # not read yet
    ci.secret("token")
    assert _redact.redact(f"auth failed for {TOKEN}!") == "auth failed for ***!"
    body = "x" * 1000 + TOKEN
    snippet = _redact.body_snippet(f"{TOKEN}\n{body}")
    assert TOKEN not in snippet and snippet.startswith("*** x") and len(snippet) <= _redact.BODY_SNIPPET_CHARS


def test_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setenv("CIRRON_SECRET_TOKEN", TOKEN)
    ci.secret("token")
    from cirron.export import otlp_http

    with caplog.at_level(logging.WARNING, logger="cirron.export"):
        otlp_http._log.warning("retrying with %s", TOKEN)
    assert TOKEN not in caplog.text and "retrying with ***" in caplog.text


def test_secret_in_exception_or_internal_error_never_reaches_spool_or_health(tmp_path: Path):
    code = """
import cirron as ci
ci.profile()
tok = ci.secret("token")
try:
    with ci.scope("call"):
        raise RuntimeError("401 for key " + tok)
except RuntimeError:
    pass
ci._DEFAULT._rec.note_internal_error(ValueError("leaked " + tok))
import json
health = ci.health()
assert "leaked ***" in json.dumps(health), health
print(json.dumps(health, default=str))
ci.shutdown()
"""
    env = {**os.environ, "CIRRON_SECRET_TOKEN": TOKEN}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stdout and TOKEN not in r.stderr
    written = "".join(p.read_text() for p in (tmp_path / ".cirron" / "spool").glob("*.json"))
    assert TOKEN not in written
    spans = [s for p in (tmp_path / ".cirron" / "spool").glob("*.json") for s in json.loads(p.read_text())["spans"]]
    (call,) = [s for s in spans if s["name"] == "call"]
    assert call["attrs"]["error"] == "RuntimeError: 401 for key ***"


class _Refuser:
    """A receiver that answers 400 with a long body quoting the secret."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Refuser:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_response_body_is_cut_and_redacted_in_cli_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from spool_factory import SpoolFactory
    from typer.testing import CliRunner

    from cirron_cli.app import app

    monkeypatch.setenv("CIRRON_SECRET_TOKEN", TOKEN)
    ci.secret("token")
    factory = SpoolFactory(tmp_path)
    factory.session(epochs=1)
    body = (f'{{"error": "invalid api key {TOKEN}", "detail": "' + "y" * 5000 + '"}').encode()
    with _Refuser(body) as rx:
        r = CliRunner().invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url,
                                     "--protocol", "http/json", "--spool", str(factory.spool_dir)])
    assert r.exit_code == 1
    assert TOKEN not in r.output and "invalid api key ***" in r.stderr
    assert len(r.stderr) < 600 and len(r.stderr.strip().splitlines()) == 1
