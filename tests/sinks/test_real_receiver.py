"""cirron's OTLP against a receiver we did not write: ``oteltest``'s OTLP/HTTP sink (from the
OpenTelemetry Python contrib project, installed from the package index with the ``dev`` extra).
Both roads — the live ``otlp`` sink and ``cirron traces export --endpoint`` — must give it
the same spans, resource, GenAI attributes and token totals."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import cirron
from cirron_cli.app import app

from .conftest import free_port, wait_for, without_host_settings

sink_mod = pytest.importorskip("oteltest.sink")


class _Listener:
    """What oteltest hands every decoded ``ExportTraceServiceRequest`` to."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, dict]] = []
        self.lock = threading.Lock()

    def handle_trace(self, request: Any, headers: dict) -> None:
        with self.lock:
            self.requests.append((request, headers))

    def handle_metrics(self, *_a: Any) -> None:
        pass

    def handle_logs(self, *_a: Any) -> None:
        pass

    def spans(self) -> dict[str, dict]:
        out = {}
        with self.lock:
            msgs = [m for m, _h in self.requests]
        for msg in msgs:
            for rs in msg.resource_spans:
                res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out[sp.span_id.hex()] = {
                            "name": sp.name, "kind": sp.kind, "parent": sp.parent_span_id.hex(),
                            "start": sp.start_time_unix_nano, "end": sp.end_time_unix_nano,
                            "attrs": {kv.key: _value(kv.value) for kv in sp.attributes},
                            "events": [(e.name, e.time_unix_nano) for e in sp.events], "resource": res,
                        }
        return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind and kind not in ("array_value", "kvlist_value") else str(v)


@pytest.fixture
def oteltest_receiver(monkeypatch: pytest.MonkeyPatch) -> Any:
    # oteltest listens on every interface; keep the test on loopback.
    monkeypatch.setattr(sink_mod, "HTTPServer",
                        lambda addr, handler: http.server.HTTPServer(("127.0.0.1", addr[1]), handler))
    listener = _Listener()
    port = free_port()
    sink = sink_mod.HttpSink(listener, __import__("logging").getLogger("oteltest"), port=port)
    sink.start()
    wait_for(lambda: sink.httpd is not None, what="oteltest sink listening")
    without_host_settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                          OTEL_SERVICE_NAME="llm-server")
    yield listener
    sink.stop()


def test_oteltest_receives_the_same_trace_live_and_exported(oteltest_receiver: _Listener, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    c = cirron.Cirron(spool_dir=spool, output=["spool", "otlp"], flush_interval=0.05, shutdown_timeout=3.0)
    c.profile()

    @c.inference
    def chat(prompt: str) -> dict:
        with c.scope("tokenize"):
            pass
        return {"text": prompt.upper(), "usage": {"prompt_tokens": 18, "completion_tokens": 29}}

    try:
        for p in ("a", "bb", "ccc"):
            chat(p)
        c.mark("requests", 3)
    finally:
        assert c.shutdown() is True
    live = oteltest_receiver.spans()
    oteltest_receiver.requests.clear()
    r = CliRunner().invoke(app, ["traces", "export", "--format", "otel", "--endpoint", "env", "--spool", str(spool)])
    assert r.exit_code == 0, r.output
    exported = oteltest_receiver.spans()

    assert len(live) == 7  # session, 3 requests, 3 tokenize
    assert live == exported
    requests = [s for s in live.values() if s["name"] == "request"]
    assert len(requests) == 3 and {s["kind"] for s in requests} == {2}
    root = next(s for s in live.values() if s["name"] == "cirron.session")
    assert {s["parent"] for s in requests} == {next(k for k, v in live.items() if v is root)}
    assert sum(s["attrs"]["gen_ai.usage.input_tokens"] for s in requests) == 54
    assert sum(s["attrs"]["gen_ai.usage.output_tokens"] for s in requests) == 87
    assert all(s["attrs"]["gen_ai.operation.name"] == "chat" for s in requests)
    assert root["events"] and root["events"][0][0] == "requests"
    res = root["resource"]
    assert res["service.name"] == "llm-server" and res["telemetry.sdk.name"] == "cirron"
    assert res["telemetry.sdk.version"] == cirron.__version__ and res["cirron.session.id"] == c.session_id
