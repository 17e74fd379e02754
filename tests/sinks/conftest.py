"""Real HTTP receivers for the live sinks: an OTLP/HTTP traces receiver and a fake platform.

Both are ``http.server`` servers in a daemon thread on 127.0.0.1 (free port). The OTLP receiver
decodes what it gets with the official ``opentelemetry-proto`` messages (``json_format`` for
``http/json``), so a test sees exactly what a real collector would. Behaviour is scripted per
request (``plan``): answer normally, answer a status with headers, hang, or drop the connection.
"""

from __future__ import annotations

import gzip
import http.server
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netutil import free_port, self_signed_cert, server_tls  # noqa: F401  (free_port: re-exported)


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it is truthy or ``timeout`` passes (no fixed sleeps in the tests)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    message: Any = None  # decoded ExportTraceServiceRequest (OTLP receiver)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    #: one entry per request, consumed in order; the last one repeats. Entries:
    #: ("ok",) | ("status", code, headers, body) | ("hang",) | ("close",)
    plan: list[tuple] = field(default_factory=lambda: [("ok",)])
    attempts: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> tuple:
        with self.lock:
            self.attempts += 1
            return self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]

    # -- OTLP helpers ------------------------------------------------------------------------------

    def spans(self) -> list[dict[str, Any]]:
        """Every span received (in order), flattened to plain dicts with hex ids."""
        out = []
        with self.lock:
            msgs = [r.message for r in self.requests if r.message is not None]
        for msg in msgs:
            for rs in msg.resource_spans:
                res = {kv.key: _any(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out.append({
                            "name": sp.name,
                            "kind": sp.kind,
                            "trace_id": sp.trace_id.hex(),
                            "span_id": sp.span_id.hex(),
                            "parent": sp.parent_span_id.hex() or None,
                            "attrs": {kv.key: _any(kv.value) for kv in sp.attributes},
                            "events": [{"name": e.name, "attrs": {kv.key: _any(kv.value) for kv in e.attributes}}
                                       for e in sp.events],
                            "start": sp.start_time_unix_nano,
                            "end": sp.end_time_unix_nano,
                            "status": sp.status.code,
                            "resource": res,
                        })
        return out

    def span_names(self) -> list[str]:
        return [s["name"] for s in self.spans()]


def _any(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


try:  # imported once, here: a test may hide the module from cirron (sys.modules[...] = None)
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
except ImportError:  # pragma: no cover - the OTLP sink tests skip without it
    json_format = trace_service_pb2 = None


def _decode_otlp(headers: dict[str, str], body: bytes) -> Any:
    msg = trace_service_pb2.ExportTraceServiceRequest()
    ctype = headers.get("content-type", "")
    if "json" in ctype:
        json_format.Parse(body.decode(), msg)
    else:
        msg.ParseFromString(body)
    return msg


def _make_handler(rcv: Receiver, otlp: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_a: Any) -> None:
            pass

        def _read(self) -> tuple[dict[str, str], bytes]:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            return headers, body

        def _answer(self, code: int, body: bytes = b"", ctype: str = "application/json",
                    headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(200, b'{"ok":true}')

        def do_POST(self) -> None:  # noqa: N802
            headers, body = self._read()
            action = rcv.next_action()
            if action[0] == "hang":
                rcv.release.wait(30)
                self.close_connection = True
                return
            if action[0] == "close":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if action[0] == "status":
                _, code, extra, text = action
                self._answer(code, text, headers=extra)
                return
            rec = Received(self.path, headers, body)
            if otlp:
                rec.message = _decode_otlp(headers, body) if body else None
            with rcv.lock:
                rcv.requests.append(rec)
            if otlp and "protobuf" in headers.get("content-type", ""):
                self._answer(200, b"", ctype="application/x-protobuf")
            else:
                self._answer(200, b"{}")

    return Handler


def _serve(otlp: bool, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    rcv = Receiver(url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(rcv, otlp))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    rcv.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield rcv
    finally:
        rcv.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def otlp_receiver() -> Iterator[Receiver]:
    yield from _serve(otlp=True)


@pytest.fixture
def https_otlp_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, Path]]:
    """An OTLP receiver over HTTPS with a self-signed certificate (handed back with it)."""
    cert, key = self_signed_cert(tmp_path, "receiver")
    for rcv in _serve(otlp=True, tls=server_tls(cert, key)):
        yield rcv, cert


@pytest.fixture
def platform_receiver() -> Iterator[Receiver]:
    yield from _serve(otlp=False)


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch, otlp_receiver: Receiver) -> Receiver:
    """Point the ``otlp`` sink at the test receiver (and nothing else from the host's env)."""
    without_host_settings(monkeypatch, ("OTEL_EXPORTER_OTLP_", "CIRRON_"),
                          OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.url + "/v1/traces")
    return otlp_receiver


def without_host_settings(monkeypatch: pytest.MonkeyPatch, prefixes: tuple[str, ...] = ("OTEL_", "CIRRON_"),
                          **settings: str) -> None:
    """Forget the host's variables starting with ``prefixes``, but keep the isolated
    ``CIRRON_CONFIG_FILE`` (so no test reads the developer's own config), then set ``settings``."""
    for k in list(os.environ):
        if k.startswith(prefixes) and k != "CIRRON_CONFIG_FILE":
            monkeypatch.delenv(k)
    monkeypatch.setenv("CIRRON_NO_PROJECT_FILE", "1")
    for k, v in settings.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(tmp_path_factory.mktemp("cfg") / "config.toml"))
    monkeypatch.setenv("CIRRON_NO_PROJECT_FILE", "1")




