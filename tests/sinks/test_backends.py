"""Opt-in: the same spool sent by the live ``otlp`` sink and by ``cirron traces export --endpoint``
lands identically in real backends — Arize Phoenix (``CIRRON_TEST_PHOENIX=1``) and MLflow
(``CIRRON_TEST_MLFLOW=1``) — as each backend stores it: the spans (names, parents, times,
attributes, events, status, kind), the resource, and the token totals.

Each backend runs in a virtual environment of its own (made on first use under
``~/.cache/cirron-test-venvs``, or ``$CIRRON_TEST_VENVS``; see ``tests/receiver_venv.py``), started
by the test on 127.0.0.1 on a free port and stopped after it. A backend keeps one copy of a trace
id, so the test clears what the live run left (Phoenix: deletes the project; MLflow: deletes the
traces) before the export sends the same spool again, and compares the two readings.

    CIRRON_TEST_PHOENIX=1 CIRRON_TEST_MLFLOW=1 pytest tests/sinks/test_backends.py
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli
from netutil import free_port
from receiver_venv import BackendServer, backend_python, run_in

import cirron
from cirron.export._otlp import derive_trace_id

from .conftest import wait_for, without_host_settings

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

PHOENIX_VERSION = "20.26.1"
MLFLOW_VERSION = "3.17.2"
#: Prompt → (prompt tokens, completion tokens) the fake model reports.
USAGE = {"a": (18, 29), "bb": (31, 40), "ccc": (47, 52)}
IN_TOKENS = sum(i for i, _ in USAGE.values())
OUT_TOKENS = sum(o for _, o in USAGE.values())
SPAN_NAMES = sorted(["cirron.session", "serve", "postprocess", *["request"] * 3, *["tokenize"] * 3])
#: How long a backend may take to show what it was sent (it may ingest in the background).
INGEST_TIMEOUT_S = 60


def _clean_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, service: str) -> None:
    without_host_settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME=service,
                          OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")


def _serve_requests(spool: Path) -> str:
    """A small profiled LLM server run, sent live; returns its session id."""
    c = cirron.Cirron(spool_dir=spool, output=["spool", "otlp"], flush_interval=0.05, shutdown_timeout=60.0)
    c.profile()

    @c.inference(name="chat")
    def chat(prompt: str) -> dict:
        with c.scope("tokenize"):
            pass
        tokens_in, tokens_out = USAGE[prompt]
        return {"text": prompt.upper(), "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}

    with c.scope("serve", model="fake-llm"):
        for prompt in USAGE:
            chat(prompt)
        c.mark("requests", len(USAGE))
        try:
            with c.scope("postprocess"):
                raise ValueError("bad output")
        except ValueError:
            pass
    assert c.shutdown() is True
    h = c.health()["sinks"]["otlp"]
    assert h["errors"] == 0 and not h["dropped"] and h["spans_written"] == len(SPAN_NAMES), h
    return c.session_id


def _live_then_exported(spool: Path, read: Callable[[], Any], clear: Callable[[], None]) -> tuple[Any, Any]:
    session_id = _serve_requests(spool)
    live = read()
    clear()
    r = run_cli("traces", "export", "--format", "otel", "--endpoint", "env", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    exported = read()
    assert session_id
    return live, exported


# ------------------------------------------------------------------------------------- Phoenix


@pytest.mark.slow
@pytest.mark.phoenix
@pytest.mark.timeout(2400)
@pytest.mark.skipif(os.environ.get("CIRRON_TEST_PHOENIX") != "1",
                    reason="set CIRRON_TEST_PHOENIX=1 to run it against Arize Phoenix (installed in its own venv)")
def test_phoenix_stores_the_same_trace_live_and_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    python = backend_python("phoenix", "arize-phoenix", PHOENIX_VERSION)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(free_port()),
           "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"), "PHOENIX_TELEMETRY_ENABLED": "false"}
    project = "cirron-phoenix-test"  # the service name: cirron sets it as Phoenix's project
    _clean_env(monkeypatch, base, project)

    with BackendServer([str(python.parent / "phoenix"), "serve"], base + "/healthz", tmp_path / "phoenix.log",
                       env=env), httpx.Client(base_url=base, timeout=30) as http:

        def totals() -> dict[str, Any] | None:
            q = "{ projects { edges { node { name traceCount tokenCountPrompt tokenCountCompletion tokenCountTotal } } } }"
            r = http.post("/graphql", json={"query": q})
            r.raise_for_status()
            return next((e["node"] for e in r.json()["data"]["projects"]["edges"] if e["node"]["name"] == project),
                        None)

        def stored() -> dict[str, Any] | None:
            node = totals()
            if node is None:
                return None
            r = http.get(f"/v1/projects/{project}/spans", params={"limit": 1000})
            r.raise_for_status()
            spans = r.json()["data"]
            if len(spans) < len(SPAN_NAMES) or node["tokenCountTotal"] < IN_TOKENS + OUT_TOKENS:
                return None  # still being ingested
            by_id = {}
            for s in spans:
                s = dict(s)
                s.pop("id")  # Phoenix's own row id
                by_id[s["context"]["span_id"]] = s
            return {"project": node, "spans": by_id}

        def read() -> dict[str, Any]:
            return wait_for(stored, timeout=INGEST_TIMEOUT_S, what=f"the run's spans in Phoenix project {project}")

        def clear() -> None:
            http.delete(f"/v1/projects/{project}").raise_for_status()
            assert totals() is None

        live, exported = _live_then_exported(tmp_path / "spool", read, clear)

    assert exported == live
    spans = list(live["spans"].values())
    assert sorted(s["name"] for s in spans) == SPAN_NAMES
    assert {s["context"]["trace_id"] for s in spans} == {next(iter(spans))["context"]["trace_id"]}
    by_name = {s["name"]: s for s in spans}
    root, serve = by_name["cirron.session"], by_name["serve"]
    assert root["parent_id"] is None and serve["parent_id"] == root["context"]["span_id"]
    requests = [s for s in spans if s["name"] == "request"]
    assert {s["parent_id"] for s in requests} == {serve["context"]["span_id"]}
    assert {s["span_kind"] for s in requests} == {"LLM"}
    assert all(s["attributes"]["endpoint"] == "chat" and s["attributes"]["gen_ai.operation.name"] == "chat"
               for s in requests)
    assert sum(s["attributes"]["llm.token_count.prompt"] for s in requests) == IN_TOKENS
    assert [e["name"] for e in serve["events"]] == ["requests"]
    assert by_name["postprocess"]["status_code"] == "ERROR"
    assert "bad output" in by_name["postprocess"]["status_message"]
    # Phoenix keeps no resource attributes but files the trace under the service's project
    assert live["project"] == {"name": project, "traceCount": 1, "tokenCountPrompt": IN_TOKENS,
                               "tokenCountCompletion": OUT_TOKENS, "tokenCountTotal": IN_TOKENS + OUT_TOKENS}


# -------------------------------------------------------------------------------------- MLflow

_MLFLOW_CLIENT = """
import json, sys
from mlflow import MlflowClient

uri, action, arg = sys.argv[1:4]
client = MlflowClient(uri)
if action == "create":
    print(json.dumps(client.create_experiment(arg)))
elif action == "delete":
    ids = [t.info.trace_id for t in client.search_traces(locations=[arg])]
    if ids:
        client.delete_traces(arg, trace_ids=ids)
    print(json.dumps(len(ids)))
else:
    out = []
    for found in client.search_traces(locations=[arg]):
        t = client.get_trace(found.info.trace_id)
        out.append({"info": t.info.to_dict(), "token_usage": t.info.token_usage,
                    "spans": [s.to_dict() for s in t.data.spans]})
    print(json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(os.environ.get("CIRRON_TEST_MLFLOW") != "1",
                    reason="set CIRRON_TEST_MLFLOW=1 to run it against MLflow (installed in its own venv)")
def test_mlflow_stores_the_same_trace_live_and_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = backend_python("mlflow", "mlflow", MLFLOW_VERSION)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(python.parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--default-artifact-root", str(tmp_path / "artifacts")]
    _clean_env(monkeypatch, base, "cirron-mlflow-test")

    with BackendServer(argv, base + "/health", tmp_path / "mlflow.log", cwd=tmp_path):
        experiment = run_in(python, _MLFLOW_CLIENT, base, "create", "cirron")
        # MLflow files OTLP traces under the experiment named by this header (it answers 422 without it)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-mlflow-experiment-id={experiment}")

        def stored() -> list[dict] | None:
            traces = run_in(python, _MLFLOW_CLIENT, base, "read", experiment)
            return traces if traces and len(traces[0]["spans"]) == len(SPAN_NAMES) else None

        def read() -> list[dict]:
            return wait_for(stored, timeout=INGEST_TIMEOUT_S, what="the run's trace in MLflow")

        def clear() -> None:
            assert run_in(python, _MLFLOW_CLIENT, base, "delete", experiment) == 1
            assert run_in(python, _MLFLOW_CLIENT, base, "read", experiment) == []

        live, exported = _live_then_exported(tmp_path / "spool", read, clear)

    assert exported == live
    (trace,) = live
    info, spans = trace["info"], trace["spans"]
    assert info["trace_id"] == "tr-" + derive_trace_id(info["tags"]["cirron.session.id"])
    assert info["state"] == "OK"
    assert trace["token_usage"] == {"input_tokens": IN_TOKENS, "output_tokens": OUT_TOKENS,
                                    "total_tokens": IN_TOKENS + OUT_TOKENS}
    # MLflow keeps the resource as trace tags
    tags = info["tags"]
    assert tags["service.name"] == "cirron-mlflow-test" and tags["deployment.environment"] == "test"
    assert tags["cirron.writer"] == "cirron"
    assert sorted(s["name"] for s in spans) == SPAN_NAMES
    by_name = {s["name"]: s for s in spans}
    root, serve = by_name["cirron.session"], by_name["serve"]
    assert root["parent_span_id"] is None and serve["parent_span_id"] == root["span_id"]
    requests = [s for s in spans if s["name"] == "request"]
    assert {s["parent_span_id"] for s in requests} == {serve["span_id"]}
    assert {s["attributes"]["mlflow.spanType"] for s in requests} == {'"LLM"'}
    assert all(s["attributes"]["endpoint"] == '"chat"' for s in requests)
    assert sum(int(s["attributes"]["gen_ai.usage.input_tokens"]) for s in requests) == IN_TOKENS
    assert [e["name"] for e in serve["events"]] == ["requests"]
    assert by_name["postprocess"]["status"]["code"] == "STATUS_CODE_ERROR"
