"""The live ``otlp`` sink and ``cirron traces export --endpoint`` against an HTTPS receiver with a
self-signed certificate: trusted through ``OTEL_EXPORTER_OTLP_CERTIFICATE`` both deliver the same
spans; an unverifiable certificate is one clear error (health() and one stderr line), never a
traceback, a retry loop or a wait in the user's program."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli

import cirron

from .conftest import Receiver, self_signed_cert, without_host_settings

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


@pytest.fixture
def https_env(monkeypatch: pytest.MonkeyPatch, https_otlp_receiver: tuple[Receiver, Path]) -> tuple[Receiver, Path]:
    rcv, cert = https_otlp_receiver
    without_host_settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=rcv.url)
    return rcv, cert


def _run(spool: Path) -> cirron.Cirron:
    c = cirron.Cirron(spool_dir=spool, output=["spool", "otlp"], flush_interval=0.05, shutdown_timeout=3.0)
    c.profile()
    with c.scope("train"):
        for i in range(2):
            with c.scope("step", i=i):
                c.mark("loss", 1.0 / (i + 1))
    return c


def _by_id(spans: list[dict]) -> dict[str, dict]:
    return {s["span_id"]: s for s in spans}


def test_live_sink_and_export_trust_the_receiver_through_otel_certificate(
        https_env: tuple[Receiver, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rcv, cert = https_env
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
    spool = tmp_path / "spool"
    c = _run(spool)
    assert c.shutdown() is True
    h = c.health()["sinks"]["otlp"]
    assert h["errors"] == 0 and not h["dropped"] and h["endpoint"].startswith("https://"), h
    live = _by_id(rcv.spans())
    assert sorted(s["name"] for s in live.values()) == ["cirron.session", "step", "step", "train"]
    rcv.requests.clear()
    r = run_cli("traces", "export", "--format", "otel", "--endpoint", "env", "--spool", str(spool))
    assert r.exit_code == 0, r.output
    assert "https://127.0.0.1" in r.stdout
    assert _by_id(rcv.spans()) == live


def test_live_sink_with_an_unverifiable_certificate_reports_it_once(
        https_env: tuple[Receiver, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rcv, _cert = https_env
    other, _ = self_signed_cert(tmp_path, "other")  # a CA that did not sign the receiver's certificate
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(other))
    with caplog.at_level(logging.WARNING, logger="cirron.otlp"):
        t0 = time.monotonic()
        c = _run(tmp_path / "spool")
        took = time.monotonic() - t0
        c.flush(timeout=5)
        assert c.shutdown() is True  # the user's program is not failed by it
    assert took < 1.0  # the user's code never waited on the receiver
    h = c.health()["sinks"]["otlp"]
    assert "CERTIFICATE_VERIFY_FAILED" in h["last_error"] and "OTEL_EXPORTER_OTLP_CERTIFICATE" in h["last_error"]
    assert "\n" not in h["last_error"] and "Traceback" not in h["last_error"]
    assert h["dropped"].get("spans_export_failed") == 4 and h["retries"] == 0, h  # refused, not retried
    warnings = [r.getMessage() for r in caplog.records if "CERTIFICATE_VERIFY_FAILED" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert rcv.requests == []
