"""Exports of big sessions read span by span (cirron.spool.outline) equal the rebuilt session's.

The spool here has what makes streaming hard: a root written open first and closed last, spans
rewritten in later batches, marks written before their span (on the root sentinel, on an open
epoch), a mark written after its span closed, a mark id rewritten, a request span whose token
counts arrive in two batches, an error status and non-finite values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory

from cirron import export as ex
from cirron._schema import ROOT_SENTINEL
from cirron.spool import outline
from cirron.spool.catalog import open_catalog


def hard_session(factory: SpoolFactory) -> str:
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=900 * MS, attrs={"sdk_version": "0.1.0", "rank": 0})
    rid = root["id"]
    e0 = f.span("epoch", parent_id=rid, index=0, start_ns=BASE_NS + MS, dur_ns=400 * MS)
    e1 = f.span("epoch", parent_id=rid, index=1, start_ns=BASE_NS + 500 * MS, dur_ns=300 * MS)
    b0 = f.span("batch", parent_id=e0["id"], index=0, start_ns=BASE_NS + 2 * MS, dur_ns=10 * MS)
    fwd = f.span("forward", parent_id=b0["id"], start_ns=BASE_NS + 3 * MS, dur_ns=5 * MS,
                 attrs={"error": "ValueError: boom"})
    req = f.span("request", parent_id=rid, start_ns=BASE_NS + 600 * MS, dur_ns=20 * MS,
                 attrs={"model": "m1", "provider": "acme"})
    dup_mark = f.mark(e0["id"], "lr", 0.1, ts_ns=BASE_NS + 5 * MS)
    # batch 1: root and epoch 0 open, first marks (sentinel, open epoch, a mark id rewritten later)
    f.write_batch([dict(root, end_ns=None), dict(e0, end_ns=None), b0, fwd],
                  [f.mark(ROOT_SENTINEL, "loss", 1.0, ts_ns=BASE_NS + 4 * MS),
                   f.mark(rid, "loss", 0.9, ts_ns=BASE_NS + 6 * MS), dup_mark,
                   f.mark(b0["id"], "acc", "NaN", value_type="float", ts_ns=BASE_NS + 7 * MS)],
                  session_id=rid)
    # batch 2: epoch 0 closes, the request with one token count; more root marks
    f.write_batch([e0, req, dict(e1, end_ns=None)],
                  [f.mark(req["id"], "prompt_tokens", 12, kind="summary", ts_ns=BASE_NS + 620 * MS),
                   f.mark(ROOT_SENTINEL, "loss", 0.5, ts_ns=BASE_NS + 610 * MS),
                   dict(dup_mark, value=0.2)],
                  session_id=rid)
    # batch 3: a mark on batch 0 after it closed two batches ago; the other token count late
    f.write_batch([e1],
                  [f.mark(b0["id"], "grad_norm", 3.5, kind="summary", ts_ns=BASE_NS + 810 * MS),
                   f.mark(req["id"], "completion_tokens", 30, kind="summary", ts_ns=BASE_NS + 811 * MS),
                   f.mark(e1["id"], "note", "text value", ts_ns=BASE_NS + 812 * MS)],
                  session_id=rid)
    # batch 4: the root closes
    f.write_batch([root], [f.mark(rid, "final", 1, kind="summary", ts_ns=BASE_NS + 899 * MS)], session_id=rid)
    return rid


@pytest.fixture
def spool(factory: SpoolFactory) -> Path:
    hard_session(factory)
    other = factory.session(start_ns=BASE_NS + 10**12, split=True)
    assert other
    return factory.spool_dir


@pytest.mark.parametrize("spill", [False, True])
def test_streamed_otlp_equals_the_rebuilt_sessions(spool: Path, tmp_path: Path, monkeypatch, spill: bool):
    if spill:
        monkeypatch.setattr(outline, "SPILL_BYTES", 0)
    cat = open_catalog([spool])
    assert len(cat.sessions) == 2 and all(cat.streamable(s) for s in cat.sessions)
    ex.write_otlp_json(list(cat.sessions), tmp_path / "streamed.json")
    ex.write_otlp_json([cat.load(s) for s in cat.sessions], tmp_path / "rebuilt.json")
    streamed = (tmp_path / "streamed.json").read_bytes()
    assert streamed == (tmp_path / "rebuilt.json").read_bytes()
    import json

    doc = json.loads(streamed)
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    by_name = {s["name"]: s for s in spans}
    assert len(spans) == 6
    root_events = [e["name"] for e in by_name["cirron.session"]["events"]]
    assert root_events == ["loss", "loss", "loss", "final"]
    batch_events = [e["name"] for e in by_name["batch"]["events"]]
    assert batch_events == ["acc", "grad_norm"]  # the late one is there too
    attrs = {a["key"]: a["value"] for a in by_name["request"]["attributes"]}
    assert attrs["gen_ai.usage.input_tokens"] == {"intValue": "12"}
    assert attrs["gen_ai.usage.output_tokens"] == {"intValue": "30"}
    assert by_name["forward"]["status"]["code"] == 2
    lr = [e for s in spans for e in s.get("events", []) if e["name"] == "lr"]
    assert len(lr) == 1 and lr[0]["attributes"][0]["value"] == {"doubleValue": 0.2}


def test_cli_otel_export_streams_and_matches(spool: Path, tmp_path: Path):
    from cli_helpers import run_cli

    out = tmp_path / "cli.json"
    r = run_cli("traces", "export", "--format", "otel", "--output", str(out), "--spool", str(spool))
    assert r.exit_code == 0, r.output
    cat = open_catalog([spool])
    ex.write_otlp_json([cat.load(s) for s in cat.sessions], tmp_path / "rebuilt.json")
    assert out.read_bytes() == (tmp_path / "rebuilt.json").read_bytes()
