"""Exports of big sessions read span by span (cirron.spool.outline) equal the rebuilt session's.

The spool here has what makes streaming hard: a root written open first and closed last, spans
rewritten in later batches, marks written before their span (on the root sentinel, on an open
epoch), a mark written after its span closed, a mark id rewritten, a request span whose token
counts arrive in two batches, an error status and non-finite values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from spool_factory import BASE_NS, SpoolFactory, hard_session, thread_mix

from cirron import export as ex
from cirron.export import _perfetto
from cirron.spool import outline
from cirron.spool.catalog import open_catalog


@pytest.fixture(autouse=True)
def _streamed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session too big for the columns, and not encoded piece by piece: these exports take
    the streamed path (the column path is compared with it in test_column_encoded_exports.py)."""
    from cirron.spool import columnar

    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 0)
    monkeypatch.setattr(ex, "_piece_spans", lambda _fh, _info: None)
    monkeypatch.setattr(_perfetto, "_piece_events", lambda *_a: None)


@pytest.fixture
def spool(factory: SpoolFactory) -> Path:
    hard_session(factory)
    other = factory.session(start_ns=BASE_NS + 10**12, split=True)
    assert other
    return factory.spool_dir


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("columns_on_disk", [False, True])
def test_streamed_otlp_equals_the_rebuilt_sessions(spool: Path, tmp_path: Path, monkeypatch, spill: bool,
                                                   columns_on_disk: bool):
    if spill:
        monkeypatch.setattr(outline, "SPILL_BYTES", 0)
    if columns_on_disk:
        monkeypatch.setattr(outline, "COLUMNS_IN_MEMORY", 0)
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


def test_ids_the_outline_cannot_sort_are_exported_from_the_rebuilt_session(factory: SpoolFactory, tmp_path: Path):
    root = factory.span("cirron.session", id="Root-Not-Hex")
    factory.write_batch([root, factory.span("step", id="Step-1", parent_id="Root-Not-Hex")],
                        [factory.mark("Step-1", "loss", 0.5)], session_id="Root-Not-Hex")
    cat = open_catalog([factory.spool_dir])
    ex.write_otlp_json(list(cat.sessions), tmp_path / "a.json")
    ex.write_otlp_json([cat.load(s) for s in cat.sessions], tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert b'"loss"' in (tmp_path / "a.json").read_bytes()




@pytest.mark.parametrize("given_base", [True, False])
@pytest.mark.parametrize("columns_on_disk", [False, True])
@pytest.mark.parametrize("few", [64, 0])
def test_streamed_perfetto_equals_the_rebuilt_sessions(spool: Path, factory: SpoolFactory, tmp_path: Path,
                                                       given_base: bool, columns_on_disk: bool, few: int,
                                                       monkeypatch):
    from cirron.export import _perfetto

    monkeypatch.setattr(_perfetto, "_FEW", few)  # 0: ranks and threads numbered by one sort
    if columns_on_disk:
        monkeypatch.setattr(outline, "COLUMNS_IN_MEMORY", 0)
    thread_mix(factory)
    cat = open_catalog([spool])
    assert len(cat.sessions) == 3 and all(cat.streamable(s) for s in cat.sessions)
    base = min(s.started_ns for s in cat.sessions) if given_base else None
    n = ex.write_perfetto(list(cat.sessions), tmp_path / "streamed.json", base_ns=base)
    m = ex.write_perfetto([cat.load(s) for s in cat.sessions], tmp_path / "rebuilt.json", base_ns=base)
    streamed = (tmp_path / "streamed.json").read_bytes()
    assert streamed == (tmp_path / "rebuilt.json").read_bytes()
    assert n == m == sum(s.spans for s in cat.sessions)
    assert b"(overlapping 1)" in streamed and b'"ph":"X"' in streamed and b'"cirron.open":true' in streamed


def test_cli_perfetto_export_matches(spool: Path, factory: SpoolFactory, tmp_path: Path):
    from cli_helpers import run_cli

    thread_mix(factory)
    out = tmp_path / "cli.json"
    r = run_cli("traces", "export", "--format", "perfetto", "--output", str(out), "--spool", str(spool))
    assert r.exit_code == 0, r.output
    cat = open_catalog([spool])
    base = min(s.started_ns for s in cat.sessions)
    ex.write_perfetto([cat.load(s) for s in cat.sessions], tmp_path / "rebuilt.json", base_ns=base)
    assert out.read_bytes() == (tmp_path / "rebuilt.json").read_bytes()


@pytest.mark.parametrize("few", [64, 0])
def test_distinct_values_are_numpys_unique(monkeypatch, few: int):
    import numpy as np

    from cirron.export import _perfetto

    monkeypatch.setattr(_perfetto, "_FEW", few)
    values = np.array([7, -3, 7, 2**40, -3, 0, 7], dtype=np.int64)
    uniq, first, inverse = _perfetto._distinct(values)
    want = np.unique(values, return_index=True, return_inverse=True)
    assert uniq.tolist() == want[0].tolist() and first.tolist() == want[1].tolist()
    assert inverse.dtype == np.int32 and inverse.tolist() == want[2].reshape(-1).tolist()
