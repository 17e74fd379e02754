"""OpenTelemetry conventions of every OTLP path: the resource (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, telemetry.sdk.*, the project), GenAI attributes and span kinds on
request spans, and ``export --endpoint`` honouring the OTEL_EXPORTER_OTLP_* variables (TLS too)."""

from __future__ import annotations

import gzip
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from netutil import self_signed_cert, server_tls
from spool_factory import BASE_NS, MS, SpoolFactory, new_id
from typer.testing import CliRunner

from cirron.export._otlp import encode_resource_spans, genai_attributes, resource_attributes
from cirron_cli.app import app

pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
json_format = pytest.importorskip("google.protobuf.json_format")

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("OTEL_"):
            monkeypatch.delenv(k)


def _attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


# ----------------------------------------------------------------------------------- resource


def test_resource_defaults_name_the_project_and_the_writer() -> None:
    res = {"pid": 7, "host": "gpu-1", "rank": 0, "world_size": 2, "project": "resnet", "project_version": "1.2"}
    a = resource_attributes("sess", res, "0.0.9", environ={})
    assert a["service.name"] == "resnet" and a["service.version"] == "1.2"
    assert (a["telemetry.sdk.name"], a["telemetry.sdk.language"], a["telemetry.sdk.version"]) == \
        ("cirron", "python", "0.0.9")
    assert a["process.pid"] == 7 and a["host.name"] == "gpu-1" and a["cirron.world_size"] == 2
    assert a["cirron.session.id"] == "sess"
    assert "sdk.version" not in a
    assert resource_attributes("s", {"pid": 1}, None, environ={})["service.name"] == "cirron"


def test_resource_follows_otel_service_name_and_resource_attributes() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod,host.name=h%2C2,"
                                       "cirron.session.id=forged,broken",
           "OTEL_SERVICE_NAME": ""}
    a = resource_attributes("sess", {"host": "gpu-1", "project": "resnet"}, "1", environ=env)
    assert a["service.name"] == "from-attrs"  # beats the project name
    assert a["deployment.environment"] == "prod" and a["host.name"] == "h,2"
    assert a["cirron.session.id"] == "sess"  # the session's identity is not overridable
    assert "broken" not in a
    assert a["openinference.project.name"] == "from-attrs"  # Phoenix files it under the service's project
    env["OTEL_SERVICE_NAME"] = "trainer"
    a = resource_attributes("sess", {}, "1", environ=env)
    assert a["service.name"] == a["openinference.project.name"] == "trainer"  # beats everything
    env["OTEL_RESOURCE_ATTRIBUTES"] = "openinference.project.name=chat-api"
    a = resource_attributes("sess", {}, "1", environ=env)
    assert a["service.name"] == "trainer" and a["openinference.project.name"] == "chat-api"  # set explicitly


def test_file_export_carries_the_env_resource(factory: SpoolFactory, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-a")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ml")
    factory.session(epochs=1)
    out = tmp_path / "t.otlp.json"
    r = runner.invoke(app, ["traces", "export", "--format", "otel", "--output", str(out),
                            "--spool", str(factory.spool_dir)])
    assert r.exit_code == 0, r.output
    (rs,) = json.loads(out.read_text())["resourceSpans"]
    a = {x["key"]: x["value"] for x in rs["resource"]["attributes"]}
    assert a["service.name"] == {"stringValue": "svc-a"} and a["team"] == {"stringValue": "ml"}


# ----------------------------------------------------------------------------------- GenAI


def _mark(span_id: str, name: str, value: Any) -> dict:
    vt = "int" if type(value) is int else "float"
    return {"id": new_id(), "span_id": span_id, "name": name, "value": value, "value_type": vt, "kind": "summary",
            "ts_ns": BASE_NS, "thread_id": 1, "attrs": {}}


def _encode(spans: list[dict], marks: list[dict]) -> dict[str, dict]:
    rs = encode_resource_spans("s" * 32, {"pid": 1}, spans, marks)
    return {sp["spanId"]: sp for sp in rs["scopeSpans"][0]["spans"]}


def _span_attrs(sp: dict) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in sp["attributes"]}


def test_request_spans_are_server_spans_with_genai_attributes(factory: SpoolFactory) -> None:
    root = factory.span("cirron.session")
    usage = factory.span("request", parent_id=root["id"], attrs={"request_id": "r1", "model": "gpt-x",
                                                                    "response_model": "gpt-x-0613", "provider": "openai"})
    stream = factory.span("request", parent_id=root["id"], attrs={"request_id": "r2", "stream_end": "exhausted"})
    plain = factory.span("request", parent_id=root["id"], attrs={"request_id": "r3"})
    step = factory.span("step", parent_id=root["id"])
    marks = [_mark(usage["id"], "prompt_tokens", 18), _mark(usage["id"], "completion_tokens", 29),
             _mark(usage["id"], "tokens", 29),
             # a stream without usage: "tokens" is the chunk count and must not become output tokens
             _mark(stream["id"], "chunks", 7), _mark(stream["id"], "tokens", 7), _mark(stream["id"], "ttft_ns", 5 * MS)]
    from cirron.export._otlp import derive_span_id

    out = _encode([root, usage, stream, plain, step], marks)
    u, s, p = (_span_attrs(out[derive_span_id(x["id"])]) for x in (usage, stream, plain))
    assert {out[derive_span_id(x["id"])]["kind"] for x in (usage, stream, plain)} == {2}  # SERVER
    assert out[derive_span_id(step["id"])]["kind"] == 1 and out[derive_span_id(root["id"])]["kind"] == 1
    assert u["gen_ai.operation.name"] == "chat"
    assert (u["gen_ai.usage.input_tokens"], u["gen_ai.usage.output_tokens"]) == ("18", "29")
    assert (u["llm.token_count.prompt"], u["llm.token_count.completion"], u["llm.token_count.total"]) == \
        ("18", "29", "47")
    assert u["gen_ai.request.model"] == "gpt-x" and u["gen_ai.response.model"] == "gpt-x-0613"
    assert u["gen_ai.system"] == "openai" and u["gen_ai.provider.name"] == "openai"
    assert u["openinference.span.kind"] == "LLM" and u["llm.model_name"] == "gpt-x-0613"
    assert s["gen_ai.operation.name"] == "chat" and s["openinference.span.kind"] == "LLM"
    assert not any(k.startswith(("gen_ai.usage", "llm.token_count")) for k in s)  # unknown usage: none sent
    assert p["gen_ai.operation.name"] == "inference"
    assert not any(k.startswith(("gen_ai.usage", "gen_ai.system", "openinference", "llm.")) for k in p)
    assert "gen_ai.operation.name" not in _span_attrs(out[derive_span_id(step["id"])])


def test_genai_operation_name_given_by_the_span_wins() -> None:
    a = genai_attributes({"gen_ai.operation.name": "embeddings"}, [_mark("x", "prompt_tokens", 3)])
    assert a["gen_ai.operation.name"] == "embeddings" and a["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in a and a["llm.token_count.total"] == 3


# ----------------------------------------------------------------------------------- --endpoint


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1 (optionally HTTPS) that records what arrives."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict] = []
        rcv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                raw_len = len(body)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                msg = pb2.ExportTraceServiceRequest()
                if self.headers.get("Content-Type") == "application/x-protobuf":
                    msg.ParseFromString(body)
                rcv.requests.append({"path": self.path, "headers": dict(self.headers), "msg": msg,
                                     "wire_bytes": raw_len, "body": body})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *a: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _export(spool: Path, *extra: str) -> Any:
    return runner.invoke(app, ["traces", "export", "--format", "otel", "--spool", str(spool), *extra])


def test_endpoint_defaults_to_protobuf_uncompressed(factory: SpoolFactory) -> None:
    factory.session(epochs=1)
    with Receiver() as rx:
        r = _export(factory.spool_dir, "--endpoint", rx.url)
    assert r.exit_code == 0, r.output
    (req,) = rx.requests
    assert req["headers"]["Content-Type"] == "application/x-protobuf"
    assert "Content-Encoding" not in req["headers"]
    assert len(req["msg"].resource_spans[0].scope_spans[0].spans) == 6  # root, epoch and its four children


def test_endpoint_honours_the_otel_variables_and_flags_win(factory: SpoolFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    factory.session(epochs=1)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=from-env,x-team=ml")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with Receiver() as rx:
        r = _export(factory.spool_dir, "--endpoint", rx.url)
        assert r.exit_code == 0, r.output
        r = _export(factory.spool_dir, "--endpoint", rx.url, "--compression", "none", "--protocol", "http/protobuf",
                    "--header", "x-api-key=from-flag")
        assert r.exit_code == 0, r.output
    env_req, flag_req = rx.requests
    assert env_req["headers"]["Content-Encoding"] == "gzip"
    assert env_req["headers"]["Content-Type"] == "application/json"
    assert env_req["headers"]["x-api-key"] == "from-env" and env_req["headers"]["x-team"] == "ml"
    assert b'"resourceSpans"' in env_req["body"]
    assert "Content-Encoding" not in flag_req["headers"]
    assert flag_req["headers"]["Content-Type"] == "application/x-protobuf"
    assert flag_req["headers"]["x-api-key"] == "from-flag" and flag_req["headers"]["x-team"] == "ml"


def test_endpoint_env_takes_the_url_from_the_variables(factory: SpoolFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    factory.session(epochs=1)
    with Receiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)  # + /v1/traces
        r = _export(factory.spool_dir, "--endpoint", "env")
        assert r.exit_code == 0, r.output
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.url + "/custom/traces")  # as is
        r = _export(factory.spool_dir, "--endpoint", "env")
        assert r.exit_code == 0, r.output
    assert [q["path"] for q in rx.requests] == ["/v1/traces", "/custom/traces"]
    assert f"to {rx.url}/custom/traces" in r.stdout


def test_bad_otel_variable_is_a_one_line_usage_error(factory: SpoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    factory.session(epochs=1)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")
    r = _export(factory.spool_dir, "--endpoint", "http://127.0.0.1:9")
    assert r.exit_code == 2 and "OTEL_EXPORTER_OTLP_COMPRESSION" in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_COMPRESSION")
    r = _export(factory.spool_dir, "--endpoint", "http://127.0.0.1:9", "--protocol", "grpc")
    assert r.exit_code == 2 and "Invalid value for '--protocol'" in r.stderr


# ----------------------------------------------------------------------------------- TLS


def test_endpoint_verifies_the_receiver_with_otel_certificate(factory: SpoolFactory, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    factory.session(epochs=1)
    cert, key = self_signed_cert(tmp_path)
    with Receiver(tls=server_tls(cert, key)) as rx:
        r = _export(factory.spool_dir, "--endpoint", rx.url)
        # an unknown CA is refused at once (no retries), in one line naming the variable to set
        assert r.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and "self-signed" in r.stderr
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in r.stderr and "after 1 attempt" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
        other, _ = self_signed_cert(tmp_path, "other")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(other))  # a CA that did not sign it
        r = _export(factory.spool_dir, "--endpoint", rx.url)
        assert r.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
        r = _export(factory.spool_dir, "--endpoint", rx.url)
        assert r.exit_code == 0, r.output
    assert len(rx.requests) == 1
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing.pem"))
    r = _export(factory.spool_dir, "--endpoint", rx.url)
    assert r.exit_code == 2 and "OTEL_EXPORTER_OTLP_CERTIFICATE" in r.stderr and "no such file" in r.stderr
