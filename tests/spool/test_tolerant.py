"""Other writers' spellings (cirron.spool.tolerant) and the placement of their parentless spans."""

from __future__ import annotations

import math
import os

from spool_factory import BASE_NS, MS, SpoolFactory, new_id

from cirron.spool import load_spool
from cirron.spool.reconstruct import ORPHAN_SESSION_ID
from cirron.spool.tolerant import blob_key_candidates, histogram_range, normalize_mark, resolve_blob_uri


def test_blob_uri_confined_to_cirron_dir(tmp_path):
    cirron = tmp_path / ".cirron"
    blob = cirron / "snapshots" / "ab" / "weights.safetensors"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    assert resolve_blob_uri(cirron, "snapshots/ab/weights.safetensors") == blob.resolve()
    assert resolve_blob_uri(cirron, f"file://{blob}") == blob.resolve()
    # written on another machine: the snapshots/<span>/<file> tail is looked up here
    assert resolve_blob_uri(cirron, "file:///elsewhere/.cirron/snapshots/ab/weights.safetensors") == blob.resolve()
    for bad in ("file:///etc/passwd", "../outside", "/etc/passwd", "file:///x/snapshots/../../etc", "s3://b/k",
                "file://host/etc/passwd", "snapshots/ab/\x00", ""):
        assert resolve_blob_uri(cirron, bad) is None, bad
    (cirron / "snapshots" / "link").symlink_to("/etc")
    assert resolve_blob_uri(cirron, "snapshots/link/passwd") is None
    assert resolve_blob_uri(cirron, "file:///far/away/snapshots/link/passwd") is None


def test_mark_and_histogram_spellings():
    m = {"value": None, "value_type": "float", "value_nonfinite": "-inf"}
    normalize_mark(m)
    assert m["value"] == -math.inf
    m = {"value": None, "value_type": "float", "value_nonfinite": "nan"}
    normalize_mark(m)
    assert math.isnan(m["value"])
    m = {"value": "hi", "value_type": "string"}
    normalize_mark(m)
    assert m["value_type"] == "str"
    h = {"bins": [-1.0, 0.0, 2.5], "counts": [1, 2]}
    histogram_range(h)
    assert (h["min"], h["max"]) == (-1.0, 2.5)
    assert blob_key_candidates("0.weight.grad", "gradients.safetensors") == ["0.weight.grad", "0.weight"]
    assert blob_key_candidates("0.weight", "weights.safetensors") == ["0.weight"]


def _foreign_batch(factory: SpoolFactory, spans: list, marks: list | None = None) -> None:
    path = factory.write_batch(spans, marks or [])
    import json

    doc = json.loads(path.read_text())
    del doc["session_id"]  # a writer without the lock protocol
    doc.pop("resource", None)
    path.write_text(json.dumps(doc))


def test_parentless_spans_placed_by_pid_and_window(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=100 * MS, pid=11)
    other = factory.span("cirron.session", start_ns=BASE_NS + 10**9, dur_ns=100 * MS, pid=11)
    inside = factory.span("request", start_ns=BASE_NS + 5 * MS, pid=11)
    child = factory.span("decode", parent_id=inside["id"], start_ns=BASE_NS + 6 * MS, pid=11)
    late = factory.span("request", start_ns=BASE_NS + 10**9 + MS, pid=11)
    wrong_pid = factory.span("request", start_ns=BASE_NS + 5 * MS, pid=12)
    rootless = factory.span("step", parent_id=new_id(), start_ns=BASE_NS + 10 * MS, pid=13)
    unknown_span_mark = factory.mark(new_id(), "tick", 1)
    _foreign_batch(factory, [root, other, inside, child, late, wrong_pid, rootless], [unknown_span_mark])
    warnings: list[str] = []
    sp = load_spool(factory.spool_dir, warnings.append)
    sessions = {s.id: s for s in sp.sessions}
    assert {s.id for s in sessions[root["id"]].spans} == {root["id"], inside["id"], child["id"]}
    assert {s.id for s in sessions[other["id"]].spans} == {other["id"], late["id"]}
    orphans = sessions[ORPHAN_SESSION_ID]
    assert {s.id for s in orphans.spans} == {wrong_pid["id"], rootless["id"]}
    # the batch's spans span several sessions: a mark of an unknown span goes to the orphan group
    assert [m.id for m in orphans.marks] == [unknown_span_mark["id"]]
    assert orphans.unfinished and orphans.writer == "other"
    assert sessions[root["id"]].status == "ended"
    assert warnings == [f"2 span(s), 1 mark(s) and 0 snapshot(s) from writers without session roots could not be "
                        f"placed in a session; they are shown as {ORPHAN_SESSION_ID}"]
    top, children = sessions[root["id"]].tree()
    assert [s.id for s in top] == [root["id"]] and [s.id for s in children[root["id"]]] == [inside["id"]]


def test_own_writer_keeps_the_seed_orphan_rule(factory: SpoolFactory):
    factory.session()
    factory.write_batch([factory.span("step", parent_id="missing")])
    assert ORPHAN_SESSION_ID not in [s.id for s in load_spool(factory.spool_dir).sessions]
    assert os.path.isdir(factory.spool_dir)
