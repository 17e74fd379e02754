"""Opt-in: a profiled run exported live to a running Arize Phoenix keeps its tree.

Start Phoenix first (``pip install arize-phoenix`` in a separate venv; ``phoenix serve``), then
``CIRRON_TEST_PHOENIX=1 pytest tests/sinks/test_phoenix.py``. ``PHOENIX_URL`` overrides
``http://localhost:6006``. Phoenix takes ``http/protobuf`` on ``/v1/traces`` and lists spans at
``GET /v1/projects/default/spans``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cirron
from cirron.export._otlp import derive_span_id, derive_trace_id

from .conftest import wait_for

pytestmark = [
    pytest.mark.phoenix,
    pytest.mark.skipif(os.environ.get("CIRRON_TEST_PHOENIX") != "1", reason="set CIRRON_TEST_PHOENIX=1 "
                       "with a running Phoenix to run it"),
]


def test_profiled_run_appears_in_phoenix_with_its_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    base = os.environ.get("PHOENIX_URL", "http://localhost:6006").rstrip("/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", base + "/v1/traces")
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output=["otlp"], flush_interval=0.05)
    c.profile()
    with c.scope("train"):
        for i in range(2):
            with c.scope("epoch", i=i):
                c.mark("loss", 0.5 / (i + 1))
        with c.scope("request"):
            c.mark("prompt_tokens", 7, kind="summary")
            c.mark("completion_tokens", 21, kind="summary")
    assert c.shutdown() is True
    assert not c.health()["sinks"]["otlp"]["dropped"], c.health()["sinks"]["otlp"]
    trace_id = derive_trace_id(c.session_id)

    def ours() -> list[dict]:
        r = httpx.get(f"{base}/v1/projects/default/spans", params={"limit": 1000}, timeout=5)
        r.raise_for_status()
        spans = [s for s in r.json()["data"] if s["context"]["trace_id"] == trace_id]
        return spans if len(spans) == 5 else []

    spans = wait_for(ours, timeout=30, what="the 5 spans of the run in Phoenix")
    by_name: dict[str, list[dict]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    root = by_name["cirron.session"][0]
    train = by_name["train"][0]
    assert root["context"]["span_id"] == derive_span_id(c.session_id)
    assert not root.get("parent_id")
    assert train["parent_id"] == root["context"]["span_id"]
    for ep in by_name["epoch"]:
        assert ep["parent_id"] == train["context"]["span_id"]
        assert [e["name"] for e in ep.get("events", [])] == ["loss"]
    req = by_name["request"][0]
    assert req["parent_id"] == train["context"]["span_id"]
    assert req["attributes"]["gen_ai.usage.input_tokens"] == 7
    assert req["attributes"]["gen_ai.usage.output_tokens"] == 21
