"""OTLP/HTTP sending: a real receiver on 127.0.0.1 decodes with the official proto classes;
retry policy with fault injection."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from spool_factory import SpoolFactory
from typer.testing import CliRunner

from cirron.export._otlp import derive_span_id
from cirron.export.otlp_http import OTLPExportError, parse_retry_after, resolve_traces_url, send_otlp
from cirron_cli.app import app

pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
json_format = pytest.importorskip("google.protobuf.json_format")

runner = CliRunner()


class Receiver:
    """A tiny OTLP/HTTP receiver; ``script`` is a list of (status, headers, body) answers, then 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ctype = self.headers.get("Content-Type")
                if ctype == "application/x-protobuf":
                    msg = pb2.ExportTraceServiceRequest()
                    msg.ParseFromString(body)
                else:
                    msg = json_format.Parse(_json_ids_to_b64(body), pb2.ExportTraceServiceRequest())
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "msg": msg,
                                          "body": body})
                status, headers, payload = receiver.script.pop(0) if receiver.script else (200, {}, b"{}")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _json_ids_to_b64(body: bytes) -> str:
    """OTLP/JSON hex ids → the base64 the generic protobuf JSON parser expects."""
    import base64

    doc = json.loads(body)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if sp.get(k):
                        sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode()
    return json.dumps(doc)


def _tree_ok(msg, s):
    spans = msg.resource_spans[0].scope_spans[0].spans
    assert len(spans) == len(s["spans"])
    by_id = {sp.span_id.hex(): sp for sp in spans}
    root = by_id[derive_span_id(s["root"])]
    assert root.parent_span_id == b""
    for ep in s["epochs"]:
        assert by_id[derive_span_id(ep)].parent_span_id.hex() == derive_span_id(s["root"])
    attrs = {a.key: a.value.string_value for a in msg.resource_spans[0].resource.attributes}
    assert attrs["service.name"] == "cirron" and attrs["cirron.session.id"] == s["root"]


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_cli_posts_to_receiver(factory: SpoolFactory, protocol):
    s = factory.session()
    with Receiver() as rx:
        r = runner.invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url, "--protocol", protocol,
                                "--header", "x-api-key=secret", "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    (req,) = rx.requests
    assert req["path"] == "/v1/traces"
    assert "Content-Encoding" not in req["headers"]  # the OTel default: no compression
    assert req["headers"]["x-api-key"] == "secret"
    _tree_ok(req["msg"], s)


def _chunked_sessions(factory: SpoolFactory, monkeypatch, spans_per_request: int = 7) -> list[dict]:
    """Two sessions of 51 and 31 spans (the first in two batch files), sent 7 spans a request."""
    import cirron.export

    monkeypatch.setattr(cirron.export, "OTLP_REQUEST_SPANS", spans_per_request)
    return [factory.session(epochs=10, split=True), factory.session(epochs=6, start_ns=2_000_000_000_000_000_000)]


def _file_export(factory: SpoolFactory, tmp_path) -> dict:
    out = tmp_path / "single.otlp.json"
    r = runner.invoke(app, ["traces", "export", "--format", "otel", "--output", str(out),
                            "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0, r.output
    import orjson

    return orjson.loads(out.read_bytes())


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_big_sessions_arrive_in_several_requests_equal_to_the_file(factory: SpoolFactory, monkeypatch, tmp_path,
                                                                      protocol, compression):
    import orjson

    sessions = _chunked_sessions(factory, monkeypatch)
    doc = _file_export(factory, tmp_path)
    with Receiver() as rx:
        r = runner.invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url, "--protocol", protocol,
                                "--compression", compression, "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0, r.output
    n_spans = sum(len(s["spans"]) for s in sessions)
    assert n_spans == 82
    assert len(rx.requests) == 8 + 5  # ceil(51 / 7) + ceil(31 / 7): a session never shares a request
    assert f"Sent 82 spans from 2 sessions to {rx.url}/v1/traces (13 requests, HTTP 200, 13 attempts)" in r.stdout
    for req in rx.requests:
        assert ("Content-Encoding" in req["headers"]) == (compression == "gzip")
        assert len(req["msg"].resource_spans) == 1
        assert 1 <= len(req["msg"].resource_spans[0].scope_spans[0].spans) <= 7
    def session_of(rs):
        return next(a["value"]["stringValue"] for a in rs["resource"]["attributes"] if a["key"] == "cirron.session.id")

    resources = {session_of(rs): rs for rs in doc["resourceSpans"]}
    assert len(resources) == 2
    if protocol == "http/json":  # each span: the very bytes the single file holds
        sent = sorted(orjson.dumps(sp) for req in rx.requests for sp in
                      orjson.loads(req["body"])["resourceSpans"][0]["scopeSpans"][0]["spans"])
        assert sent == sorted(orjson.dumps(sp) for rs in doc["resourceSpans"] for sp in rs["scopeSpans"][0]["spans"])
        for req in rx.requests:  # and each request's resource is its session's
            rs = orjson.loads(req["body"])["resourceSpans"][0]
            assert {**rs, "scopeSpans": None} == {**resources[session_of(rs)], "scopeSpans": None}
    file_msg = json_format.Parse(_json_ids_to_b64(orjson.dumps(doc)), pb2.ExportTraceServiceRequest())
    want = sorted(sp.SerializeToString(deterministic=True)
                  for rs in file_msg.resource_spans for sp in rs.scope_spans[0].spans)
    got = sorted(sp.SerializeToString(deterministic=True)
                 for req in rx.requests for sp in req["msg"].resource_spans[0].scope_spans[0].spans)
    assert got == want
    file_resources = {rs.resource.SerializeToString(deterministic=True) for rs in file_msg.resource_spans}
    assert {req["msg"].resource_spans[0].resource.SerializeToString(deterministic=True)
            for req in rx.requests} == file_resources


def test_a_refusal_midway_stops_and_says_how_much_was_sent(factory: SpoolFactory, monkeypatch):
    _chunked_sessions(factory, monkeypatch)
    with Receiver([(200, {}, b"{}"), (200, {}, b"{}"), (400, {}, b'{"message": "too big"}')]) as rx:
        r = runner.invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url,
                                "--spool", str(factory.spool_dir)])
    assert r.exit_code == 1
    assert len(rx.requests) == 3  # nothing sent after the refusal
    assert "Traceback" not in r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: OTLP receiver at") and "HTTP 400" in line
    assert line.endswith("(14 of 82 spans sent in 2 requests before it)")


def test_requests_stay_under_the_byte_bound(factory: SpoolFactory):
    import orjson

    from cirron.export import iter_otlp_requests
    from cirron.spool.catalog import Catalog

    factory.session(epochs=10)
    cat = Catalog([factory.spool_dir], lambda _m: None)
    (info,) = cat.sessions
    whole = [sp for body, _ in iter_otlp_requests([info], max_spans=10_000, max_bytes=1 << 30)
             for sp in orjson.loads(body)["resourceSpans"][0]["scopeSpans"][0]["spans"]]
    biggest = max(len(orjson.dumps(sp)) for sp in whole)
    bound = 3 * biggest
    chunks = list(iter_otlp_requests([info], max_spans=10_000, max_bytes=bound))
    assert len(chunks) > 3
    spans = []
    for body, n in chunks:
        got = orjson.loads(body)["resourceSpans"][0]["scopeSpans"][0]["spans"]
        assert len(got) == n
        assert sum(len(orjson.dumps(sp)) + 1 for sp in got) <= bound
        spans += got
    assert spans == whole
    # a span bigger than the bound goes alone
    assert [n for _, n in iter_otlp_requests([info], max_bytes=1)] == [1] * len(whole)


def test_retry_after_then_success(factory: SpoolFactory):
    s = factory.session(epochs=1)
    delays = []
    from cirron.export import otlp_request
    from cirron.spool import load_spool

    req = otlp_request(load_spool(factory.spool_dir).sessions)
    with Receiver([(503, {"Retry-After": "2"}, b""), (429, {}, b"")]) as rx:
        res = send_otlp(req, rx.url + "/v1/traces", sleep=delays.append, deadline=30)
    assert res.status == 200 and res.attempts == 3
    assert delays[0] == 2.0  # Retry-After honoured
    assert 0 < delays[1] <= 1.0  # then exponential backoff with jitter
    assert len(rx.requests) == 3
    assert s


def test_no_retry_on_400(factory: SpoolFactory):
    factory.session(epochs=1)
    with Receiver([(400, {}, b'{"message": "bad"}')]) as rx:
        r = runner.invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url,
                                "--spool", str(factory.spool_dir)])
    assert r.exit_code == 1
    assert len(rx.requests) == 1
    assert r.stderr.startswith("Error: OTLP receiver at") and "HTTP 400" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_partial_success_is_a_warning_not_a_retry(factory: SpoolFactory):
    factory.session(epochs=1)
    body = json.dumps({"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}}).encode()
    with Receiver([(200, {}, body)]) as rx:
        r = runner.invoke(app, ["traces", "export", "--format", "otel", "--endpoint", rx.url + "/v1/traces",
                                "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0
    assert len(rx.requests) == 1
    assert "Warning:" in r.stderr and "2 span(s) rejected" in r.stderr


def test_gives_up_after_max_attempts():
    with Receiver([(502, {}, b"")] * 10) as rx:
        with pytest.raises(OTLPExportError) as ei:
            send_otlp({"resourceSpans": []}, rx.url, sleep=lambda _d: None, max_attempts=6)
    assert ei.value.attempts == 6 and len(rx.requests) == 6


def test_connection_refused_is_retried_then_reported():
    from netutil import free_port

    port = free_port()
    calls = []
    with pytest.raises(OTLPExportError) as ei:
        send_otlp({"resourceSpans": []}, f"http://127.0.0.1:{port}", sleep=calls.append, max_attempts=3)
    assert ei.value.attempts == 3 and len(calls) == 2


def test_url_and_retry_after_parsing():
    assert resolve_traces_url("http://h:4318") == "http://h:4318/v1/traces"
    assert resolve_traces_url("http://h:4318/") == "http://h:4318/v1/traces"
    assert resolve_traces_url("http://h/custom/v1/traces") == "http://h/custom/v1/traces"
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("garbage") is None
