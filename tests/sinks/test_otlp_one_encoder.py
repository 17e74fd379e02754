"""The live ``otlp`` sink and ``cirron traces export --endpoint`` are one encoder: the same spool
sent both ways gives a receiver the same spans, resource and token counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cirron
from cirron_cli.app import app

from .conftest import Receiver

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


def _llm_work(c: cirron.Cirron) -> None:
    @c.inference
    def chat(prompt: str) -> dict:
        return {"text": prompt[::-1], "usage": {"prompt_tokens": 18, "completion_tokens": 29}}

    @c.inference
    def stream(n: int):  # a stream without usage: its chunk count is not a token count
        for i in range(n):
            yield f"chunk {i}"

    with c.scope("serve"):
        chat("hello")
        list(stream(3))
        c.mark("loss", 0.5)


def _by_id(spans: list[dict]) -> dict[str, dict]:
    return {s["span_id"]: s for s in spans}


def test_live_and_exported_spans_are_identical(otlp_env: Receiver, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-api")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    spool = tmp_path / "spool"
    c = cirron.Cirron(spool_dir=spool, output=["spool", "otlp"], flush_interval=0.05, shutdown_timeout=3.0)
    c.profile()
    try:
        _llm_work(c)
    finally:
        assert c.shutdown() is True
    live = _by_id(otlp_env.spans())
    otlp_env.requests.clear()

    r = CliRunner().invoke(app, ["traces", "export", "--format", "otel", "--endpoint", "env", "--spool", str(spool)])
    assert r.exit_code == 0, r.output
    exported = _by_id(otlp_env.spans())

    assert len(live) == 4 and live.keys() == exported.keys()  # session, serve, two requests
    for sid, span in live.items():
        assert span == exported[sid], span["name"]
    requests = [s for s in live.values() if s["name"] == "request"]
    assert {s["kind"] for s in requests} == {2}  # SERVER
    usage = next(s for s in requests if "gen_ai.usage.input_tokens" in s["attrs"])
    assert (usage["attrs"]["gen_ai.usage.input_tokens"], usage["attrs"]["gen_ai.usage.output_tokens"]) == (18, 29)
    assert usage["attrs"]["llm.token_count.total"] == 47 and usage["attrs"]["gen_ai.operation.name"] == "chat"
    assert usage["attrs"]["endpoint"] == "_llm_work.<locals>.chat"  # the endpoint travels too
    streamed = next(s for s in requests if s is not usage)
    assert "gen_ai.usage.output_tokens" not in streamed["attrs"]
    res = usage["resource"]
    assert res["service.name"] == "chat-api" and res["deployment.environment"] == "test"
    assert res["telemetry.sdk.name"] == "cirron" and res["telemetry.sdk.language"] == "python"
    assert res["cirron.session.id"] == c.session_id
