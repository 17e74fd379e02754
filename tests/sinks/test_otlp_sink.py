"""The live ``otlp`` sink against a real OTLP/HTTP receiver, including faults."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import cirron
from cirron._errors import CirronConfigError, CirronDependencyError
from cirron.export._otlp import derive_span_id
from cirron.export.otlp_http import OtlpSettings

from .conftest import Receiver, free_port, wait_for, without_host_settings


def _profiler(tmp_path: Path, **kw: Any) -> cirron.Cirron:
    kw.setdefault("shutdown_timeout", 3.0)
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output=["otlp"], flush_interval=0.05, **kw)
    c.profile()
    return c


def _dropped(h: dict, prefix: str) -> int:
    return sum(v for k, v in h["sinks"]["otlp"]["dropped"].items() if k.startswith(prefix))


def _work(c: cirron.Cirron, steps: int = 3) -> None:
    with c.scope("train", lr=0.1):
        for i in range(steps):
            with c.scope("step", i=i):
                c.mark("loss", 1.0 / (i + 1))
        with c.scope("request"):
            c.mark("prompt_tokens", 12, kind="summary")
            c.mark("completion_tokens", 34, kind="summary")


def test_tree_events_and_genai_over_protobuf(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    c = _profiler(tmp_path)
    try:
        _work(c)
        # Live: the closed spans arrive while the session is still running.
        wait_for(lambda: "train" in rcv.span_names(), what="train span exported live")
        assert "cirron.session" not in rcv.span_names()
        assert all(r.headers["content-type"] == "application/x-protobuf" for r in rcv.requests)
        assert all(r.path == "/v1/traces" for r in rcv.requests)
    finally:
        assert c.shutdown() is True
    spans = {s["name"] + str(s["attrs"].get("i", "")): s for s in rcv.spans()}
    root, train, req = spans["cirron.session"], spans["train"], spans["request"]
    assert root["parent"] is None
    assert root["span_id"] == derive_span_id(c.session_id)
    assert train["parent"] == root["span_id"]
    assert req["parent"] == train["span_id"]
    assert len({s["trace_id"] for s in spans.values()}) == 1
    for i in range(3):
        step = spans[f"step{i}"]
        assert step["parent"] == train["span_id"]
        assert [e["name"] for e in step["events"]] == ["loss"]
        assert step["events"][0]["attrs"]["value"] == pytest.approx(1.0 / (i + 1))
        assert step["end"] >= step["start"] > 0
    assert req["attrs"]["gen_ai.usage.input_tokens"] == 12
    assert req["attrs"]["gen_ai.usage.output_tokens"] == 34
    assert train["attrs"]["lr"] == pytest.approx(0.1)
    assert "gen_ai.usage.input_tokens" not in train["attrs"]
    h = c.health()["sinks"]["otlp"]
    assert h["spans_written"] == 6 and h["marks_written"] == 5
    assert not h["dropped"] and h["errors"] == 0


def test_http_json_headers_gzip_and_generic_endpoint(otlp_env: Receiver, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rcv = otlp_env
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.url)  # + /v1/traces
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s%20ecret,x-other=1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    c = _profiler(tmp_path)
    try:
        with c.scope("a"):
            with c.scope("b"):
                c.mark("n", 3)
    finally:
        c.shutdown()
    assert sorted(rcv.span_names()) == ["a", "b", "cirron.session"]
    r = rcv.requests[0]
    assert r.path == "/v1/traces"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["x-api-key"] == "s ecret" and r.headers["x-other"] == "1"
    b = next(s for s in rcv.spans() if s["name"] == "b")
    assert b["events"][0]["attrs"]["value"] == 3


def test_mark_on_open_span_waits_for_it(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    c = _profiler(tmp_path)
    try:
        with c.scope("outer"):
            c.mark("early", 1)
            with c.scope("inner"):
                pass
            wait_for(lambda: "inner" in rcv.span_names(), what="inner exported")
            assert "outer" not in rcv.span_names()
            c.mark("late", 2)
        outer = wait_for(lambda: next((s for s in rcv.spans() if s["name"] == "outer"), None), what="outer")
        assert [e["name"] for e in outer["events"]] == ["early", "late"]
        c.mark("top", 5)  # no scope: waits for the session root, sent at shutdown
    finally:
        c.shutdown()
    root = next(s for s in rcv.spans() if s["name"] == "cirron.session")
    assert [e["name"] for e in root["events"]] == ["top"]


def test_retry_after_503_is_honoured_and_nothing_lost(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    rcv.plan = [("status", 503, {"Retry-After": "1"}, b"busy"), ("ok",)]
    c = _profiler(tmp_path)
    try:
        with c.scope("work"):
            c.mark("x", 1.5)
        t0 = time.monotonic()
        wait_for(lambda: "work" in rcv.span_names(), what="delivery after 503")
        assert time.monotonic() - t0 >= 0.8  # waited for Retry-After
    finally:
        c.shutdown()
    h = c.health()["sinks"]["otlp"]
    assert h["retries"] >= 1 and h["spans_written"] == 2 and not h["dropped"]


def test_dropped_connection_is_retried(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    rcv.plan = [("close",), ("close",), ("ok",)]
    c = _profiler(tmp_path)
    try:
        with c.scope("work"):
            pass
        # two retries with backoff: allow for a loaded machine
        wait_for(lambda: "work" in rcv.span_names(), timeout=30, what="delivery after dropped connections")
    finally:
        c.shutdown()
    assert rcv.attempts >= 3
    assert not c.health()["sinks"]["otlp"]["dropped"]


def test_400_is_not_retried_and_counted(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    rcv.plan = [("status", 400, {}, b'{"message":"bad"}')]
    c = _profiler(tmp_path)
    try:
        with c.scope("work"):
            pass
        wait_for(lambda: _dropped(c.health(), "spans_export_failed") == 1, what="drop counted")
        assert rcv.attempts == 1
    finally:
        c.shutdown()
    h = c.health()["sinks"]["otlp"]
    assert "HTTP 400" in h["last_error"]
    assert rcv.attempts == 2  # the session root's own request at shutdown, also refused once


def test_partial_success_logged_once_not_retried(otlp_env: Receiver, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rcv = otlp_env
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    body = b'{"partialSuccess":{"rejectedSpans":"1","errorMessage":"too old"}}'
    rcv.plan = [("status", 200, {}, body)]
    c = _profiler(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cirron.otlp"):
        try:
            for name in ("a", "b"):
                with c.scope(name):
                    pass
                c.flush()
            wait_for(lambda: rcv.attempts >= 2, what="two exports")
        finally:
            c.shutdown()
    assert rcv.attempts == 3  # a, b, root: one attempt each
    assert len([r for r in caplog.records if "partially" in r.getMessage()]) == 1
    assert c.health()["sinks"]["otlp"]["spans_rejected"] == 3


def test_hanging_receiver_never_blocks_user_and_shutdown_is_bounded(otlp_env: Receiver, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rcv = otlp_env
    rcv.plan = [("hang",)]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "400")
    n = 20_000
    base = cirron.Cirron(spool_dir=tmp_path / "base", output=["none"], flush_interval=0.05)
    base.profile()
    t0 = time.perf_counter()
    for i in range(n):
        with base.scope("s"):
            base.mark("m", i)
    baseline = time.perf_counter() - t0
    base.shutdown()

    c = _profiler(tmp_path, shutdown_timeout=2.0)
    wait_for(lambda: True)
    t0 = time.perf_counter()
    for i in range(n):
        with c.scope("s"):
            c.mark("m", i)
    elapsed = time.perf_counter() - t0
    # The loop must not wait on the hanging receiver; the margin over the baseline is for a loaded machine.
    assert elapsed < max(3 * baseline, baseline + 2.0), (elapsed, baseline)
    wait_for(lambda: rcv.attempts >= 1, what="a request in flight")
    t0 = time.perf_counter()
    c.shutdown()
    took = time.perf_counter() - t0
    assert took < 2.0 + 3.0, took  # shutdown_timeout, plus a loaded machine's margin
    h = c.health()
    otlp = h["sinks"]["otlp"]
    assert otlp["spans_written"] == 0
    # Nothing silently lost: every closed span (n + the root) is counted as dropped.
    assert _dropped(h, "spans_") == n + 1, otlp["dropped"]


def test_receiver_down_drops_are_counted_and_bounded(otlp_env: Receiver, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{free_port()}/v1/traces")
    c = _profiler(tmp_path, shutdown_timeout=1.5)
    n = 5_000
    for i in range(n):
        with c.scope("s"):
            c.mark("m", i)
    t0 = time.perf_counter()
    c.shutdown()
    assert time.perf_counter() - t0 < 1.5 + 1.5
    h = c.health()
    assert h["sinks"]["otlp"]["spans_written"] == 0
    assert _dropped(h, "spans_") == n + 1
    assert _dropped(h, "marks_") == n


def test_missing_protobuf_dependency_fails_at_profile(otlp_env: Receiver, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.trace.v1.trace_service_pb2", None)
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output=["otlp"], flush_interval=0.05)
    with pytest.raises(CirronDependencyError, match=r"pip install 'cirron-trace\[otlp\]'"):
        c.profile()
    c.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")  # json needs no extra
    c2 = _profiler(tmp_path)
    with c2.scope("ok"):
        pass
    c2.shutdown()
    assert "ok" in otlp_env.span_names()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(CirronConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(CirronConfigError, match="milliseconds"):
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
    with pytest.raises(CirronConfigError, match="gzip or none"):
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})
    with pytest.raises(CirronConfigError, match="key=value"):
        OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"})


def test_settings_precedence_and_defaults() -> None:
    s = OtlpSettings.from_env({})
    assert (s.endpoint, s.protocol, s.timeout, s.compression) == (
        "http://localhost:4318/v1/traces", "http/protobuf", 10.0, None)
    s = OtlpSettings.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://gen:4318/",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tr:9999/custom",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "250",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=%3D2",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
    })
    assert s.endpoint == "http://tr:9999/custom"  # the traces-specific URL is used as is
    assert s.timeout == 0.25 and s.headers == {"b": "=2"} and s.protocol == "http/json"
    assert OtlpSettings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gen:4318/"}).endpoint == \
        "http://gen:4318/v1/traces"


def test_outage_queues_then_delivers_in_order(otlp_env: Receiver, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import cirron.sinks.otlp as otlp_mod

    rcv = otlp_env
    monkeypatch.setattr(otlp_mod, "MAX_ATTEMPTS", 2)
    rcv.plan = [("close",), ("close",), ("ok",)]
    c = _profiler(tmp_path)
    try:
        with c.scope("first"):
            pass
        wait_for(lambda: c.health()["sinks"]["otlp"]["receiver_down"], what="receiver marked down")
        assert c.health()["sinks"]["otlp"]["queued_requests"] == 1
        assert c.health()["sinks"]["otlp"]["spans_pending"] >= 1  # "first" waits in the queue

        def record_and_check() -> bool:
            with c.scope("later"):
                pass
            return "later" in rcv.span_names()

        wait_for(record_and_check, what="queue sent after the pause")
        names = rcv.span_names()
        assert names.index("first") < names.index("later")
    finally:
        c.shutdown()
    assert not c.health()["sinks"]["otlp"]["dropped"]


def _reference_protobuf(request: dict) -> bytes:
    """The protobuf body by the slow, obviously right road: the protobuf JSON mapping (base64 ids)."""
    import base64

    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    converted = {"resourceSpans": []}
    for rs in request["resourceSpans"]:
        rs2 = dict(rs, scopeSpans=[])
        for ss in rs["scopeSpans"]:
            spans = []
            for sp in ss["spans"]:
                sp2 = dict(sp)
                for k in ("traceId", "spanId", "parentSpanId"):
                    if sp2.get(k):
                        sp2[k] = base64.b64encode(bytes.fromhex(sp2[k])).decode()
                spans.append(sp2)
            rs2["scopeSpans"].append(dict(ss, spans=spans))
        converted["resourceSpans"].append(rs2)
    return json_format.ParseDict(converted, trace_service_pb2.ExportTraceServiceRequest()).SerializeToString()


def test_fast_protobuf_body_matches_the_reference_encoding() -> None:
    from cirron.export._otlp import build_request, encode_resource_spans
    from cirron.export.otlp_http import request_to_protobuf

    spans = [{"id": f"{i + 1:032x}", "parent_id": f"{1:032x}" if i else None, "name": "s", "index": i,
              "start_ns": 10 + i, "end_ns": None if i == 3 else 20 + i, "cpu_ns": 5, "gpu_ns": None,
              "memory_peak_bytes": None, "thread_id": 1, "pid": 1, "rank": 0,
              "attrs": {"f": float("nan") if i == 2 else 1.5, "s": "x", "b": True, "l": [1, "a", None, []],
                        "d": {"k": {"z": 1}, "e": {}}, "big": 2**70, "error": "E: x" if i == 5 else None}}
             for i in range(8)]
    marks = [{"id": f"{i:032x}", "span_id": f"{i + 1:032x}", "name": "m", "value": "Infinity" if i == 1 else 0.5,
              "value_type": "float", "kind": "point", "ts_ns": 15, "thread_id": 1, "attrs": {"step": i}}
             for i in range(8)]
    req = build_request([encode_resource_spans("s" * 32, {"pid": 1, "host": "h"}, spans, marks, open_end_ns=99)])
    assert request_to_protobuf(req) == _reference_protobuf(req)


def test_root_marks_have_their_own_budget(otlp_env: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cirron.sinks.otlp as otlp_mod

    monkeypatch.setattr(otlp_mod, "MAX_ROOT_MARKS", 5)
    monkeypatch.setattr(otlp_mod, "MAX_HELD_MARKS", 5)
    c = _profiler(tmp_path)
    try:
        for i in range(8):
            c.mark("top", i)  # session root: 5 kept, 3 counted
        c.flush()
        with c.scope("work"):
            for i in range(4):
                c.mark("inner", i)
    finally:
        c.shutdown()
    spans = {s["name"]: s for s in otlp_env.spans()}
    assert [e["attrs"]["value"] for e in spans["cirron.session"]["events"]] == [0, 1, 2, 3, 4]
    assert len(spans["work"]["events"]) == 4
    assert c.health()["sinks"]["otlp"]["dropped"] == {"marks_root_overflow": 3}


def test_down_receiver_is_shown_at_once_and_flush_answers_at_once(otlp_env: Receiver, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A collector that is not there: every flush() says False at once (no 5 s wait), health()
    # shows it down with the error, and nothing is dropped while the queue has room.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{free_port()}/v1/traces")
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output=["otlp"], flush_interval=60, shutdown_timeout=3.0)
    c.profile()
    try:
        for i in range(5):
            with c.scope("work", i=i):
                pass
            t0 = time.monotonic()
            assert c.flush(timeout=5.0) is False
            assert time.monotonic() - t0 < 2.5  # at once: not the 5 s timeout (margin for a loaded machine)
        h = c.health()
        otlp = h["sinks"]["otlp"]
        assert otlp["receiver_down"] is True and otlp["errors"] >= 1 and otlp["last_error"]
        assert h["last_flush_ok"] is False and h["last_flush_problem"].startswith("otlp:")
        assert otlp["spans_pending"] == 5 and not otlp["dropped"]
    finally:
        c.shutdown(timeout=0.5)


def test_outage_is_retried_in_the_background_without_new_records(otlp_env: Receiver, tmp_path: Path) -> None:
    rcv = otlp_env
    rcv.plan = [("close",), ("close",), ("ok",)]
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output=["otlp"], flush_interval=60, shutdown_timeout=3.0)
    c.profile()
    try:
        with c.scope("work"):
            pass
        t0 = time.monotonic()
        assert c.flush() is False  # the first attempt failed: answered at once, receiver down
        assert time.monotonic() - t0 < 2.5
        assert c.health()["sinks"]["otlp"]["receiver_down"] is True
        wait_for(lambda: "work" in rcv.span_names(), what="delivery by the background retries")
        wait_for(lambda: not c.health()["sinks"]["otlp"]["receiver_down"], what="receiver shown up again")
        assert c.flush() is True
    finally:
        c.shutdown()
    assert not c.health()["sinks"]["otlp"]["dropped"]


def test_test_env_forgets_host_settings_but_keeps_the_isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    isolated = os.environ["CIRRON_CONFIG_FILE"]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-host")
    monkeypatch.setenv("CIRRON_SINKS", "console")
    without_host_settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert "OTEL_SERVICE_NAME" not in os.environ and "CIRRON_SINKS" not in os.environ
    assert os.environ["CIRRON_CONFIG_FILE"] == isolated and not Path(isolated).is_relative_to(Path.home())
    assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:9"
