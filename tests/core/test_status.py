"""cirron.status: what `cirron status` reports, computed without the CLI."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from spool_factory import SpoolFactory

from cirron._errors import CirronConfigError
from cirron.export.otlp_http import OtlpSettings
from cirron.status import probe, probe_collector, resolve_status


@pytest.fixture
def server() -> Iterator[str]:
    """A local HTTP server that answers every GET and POST with 200."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _ok(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _ok

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def test_offline_report_masks_secrets_and_counts_the_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_API_KEY", "sk-very-secret-key")
    factory = SpoolFactory(tmp_path)
    factory.session()
    doc = resolve_status(str(factory.spool_dir), offline=True)
    assert "sk-very-secret-key" not in str(doc)
    assert doc["config"]["api_key"]["source"].startswith("env")
    spool = doc["spool"]
    assert spool["exists"] and spool["batch_files"] >= 1 and spool["not_uploaded"] == spool["batch_files"]
    assert spool["bytes"] > 0 and "platform" not in doc and "collector" not in doc


def test_bad_configuration_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRRON_FLUSH_INTERVAL", "soon")
    with pytest.raises(CirronConfigError):
        resolve_status(offline=True)


def test_probes_tell_reachable_from_not(server: str) -> None:
    up = probe("GET", server, 5.0)
    assert up["reachable"] and up["status"] == 200 and up["ok"]
    settings = OtlpSettings(endpoint=server + "/v1/traces", headers={"x-k": "v"}, sources={})
    assert probe_collector(settings, 5.0)["ok"]
    from netutil import free_port

    down = probe("GET", f"http://127.0.0.1:{free_port()}", 2.0)
    assert not down["reachable"] and down["error"]
