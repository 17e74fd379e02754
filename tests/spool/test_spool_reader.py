"""Spool reader: file listing, safe reading, dedupe, session reconstruction, liveness."""

from __future__ import annotations

import json
import math
import os

from spool_factory import BASE_NS, MS, SpoolFactory, new_id

from cirron.spool import (
    ORPHAN_SESSION_ID,
    assign_sessions,
    children_index,
    iter_batches,
    list_batch_files,
    load_sessions,
    load_spool,
    read_batch,
    walk_tree,
)


def collect():
    msgs: list[str] = []
    return msgs, msgs.append


def test_files_listed_in_created_order_and_foreign_names_ignored(factory: SpoolFactory):
    b = factory.write_batch(created_ns=300)
    a = factory.write_batch(created_ns=20)
    (factory.spool_dir / "notes.txt").write_text("hi")
    (factory.spool_dir / "123-XYZ.json").write_text("{}")
    files = list_batch_files(factory.spool_dir)
    assert [f.path for f in files] == [a, b]
    assert [f.created_ns for f in files] == [20, 300]


def test_missing_dir_is_empty(tmp_path):
    assert list_batch_files(tmp_path / "nope") == []
    assert load_spool(tmp_path / "nope").sessions == []


def test_bad_files_skipped_with_one_warning_each(factory: SpoolFactory):
    s = factory.session()
    factory.write_raw(factory.batch_name(), b"[1, 2, 3]")
    factory.write_raw(factory.batch_name(), os.urandom(300) + b"\xff\xfe")
    factory.write_raw(factory.batch_name(), b"")
    factory.write_raw(factory.batch_name(), b'{"spans": [{"id": "x"')  # truncated
    (factory.spool_dir / factory.batch_name()).mkdir()
    os.symlink(factory.spool_dir / "elsewhere.json", factory.spool_dir / factory.batch_name())
    msgs, warn = collect()
    spool = load_spool(factory.spool_dir, warn)
    assert len(msgs) == 6, msgs
    assert all("\n" not in m for m in msgs)
    assert any("JSON array" in m for m in msgs)
    assert any("empty" in m for m in msgs)
    assert any("symlink" in m for m in msgs)
    assert [x.id for x in spool.sessions] == [s["root"]]
    assert len(spool.sessions[0].spans) == len(s["spans"])


def test_dedupe_prefers_closed_span_regardless_of_order(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=10 * MS)
    child_closed = factory.span("step", parent_id=root["id"], dur_ns=MS)
    child_open = dict(child_closed, end_ns=None)
    # closed first, open re-emitted later: the closed record still wins
    factory.write_batch([root, child_closed], session_id=root["id"])
    factory.write_batch([child_open], session_id=root["id"])
    spool = load_spool(factory.spool_dir)
    assert spool.spans[child_closed["id"]]["end_ns"] == child_closed["end_ns"]
    assert len(spool.sessions[0].spans) == 2


def test_marks_and_snapshots_last_write_wins(factory: SpoolFactory):
    root = factory.span("cirron.session")
    m1 = factory.mark(root["id"], "loss", 1.0)
    m2 = dict(m1, value=2.0)
    sn1 = factory.snapshot(root["id"])
    sn2 = dict(sn1, mode="stats")
    factory.write_batch([root], [m1], [sn1], session_id=root["id"])
    factory.write_batch([], [m2], [sn2], session_id=root["id"])
    sess = load_sessions(factory.spool_dir)[0]
    assert [m["value"] for m in sess.marks] == [2.0]
    assert [s["mode"] for s in sess.snapshots] == ["stats"]


def test_int_fields_given_as_strings_are_coerced_and_unknown_fields_ignored(factory: SpoolFactory):
    root = factory.span("cirron.session", future_field={"x": 1})
    root["start_ns"] = str(root["start_ns"])
    root["end_ns"] = str(root["end_ns"])
    root["pid"] = "not a number"
    mark = factory.mark(root["id"], "loss", "NaN", value_type="float")
    mark["ts_ns"] = "1776486598051509001"
    factory.write_batch([root], [mark], session_id=root["id"], brand_new_top_level=[1, 2])
    sess = load_sessions(factory.spool_dir)[0]
    assert sess.started_ns == BASE_NS
    assert sess.root["pid"] is None
    assert math.isnan(sess.marks[0]["value"])
    assert sess.marks[0]["ts_ns"] == 1776486598051509001


def test_huge_numbers_do_not_break_reading(factory: SpoolFactory):
    root = factory.span("cirron.session")
    text = json.dumps({"schema_version": 1, "session_id": root["id"], "spans": [root], "marks": []})
    text = text.replace(f'"start_ns": {root["start_ns"]}', '"start_ns": 123456789012345678901234567890')
    text = text.replace('"spans"', '"big": 1e400, "spans"')
    factory.write_raw(factory.batch_name(), text.encode())
    sess = load_sessions(factory.spool_dir)[0]
    assert sess.root["start_ns"] is None


def test_deeply_nested_attrs_survive(factory: SpoolFactory):
    root = factory.span("cirron.session")
    text = json.dumps({"schema_version": 1, "spans": [root]})
    deep = "[" * 10_000 + "]" * 10_000
    text = text.replace('"attrs": {}', f'"attrs": {{"deep": {deep}, "ok": 1}}')
    factory.write_raw(factory.batch_name(), text.encode())
    msgs, warn = collect()
    sess = load_sessions(factory.spool_dir, warn)[0]
    assert sess.root["attrs"]["ok"] == 1
    assert msgs == []


def test_newer_schema_version_read_with_warning(factory: SpoolFactory):
    root = factory.span("cirron.session")
    factory.write_batch([root], schema_version=7, session_id=root["id"])
    msgs, warn = collect()
    sess = load_sessions(factory.spool_dir, warn)
    assert len(sess) == 1
    assert len(msgs) == 1 and "schema_version 7" in msgs[0]


def test_malformed_records_dropped(factory: SpoolFactory):
    root = factory.span("cirron.session")
    factory.write_batch([root, "junk", {"no": "id"}, {"id": ""}, {"id": 5}], marks="notalist", session_id=root["id"])
    msgs, warn = collect()
    spool = load_spool(factory.spool_dir, warn)
    assert list(spool.spans) == [root["id"]]
    assert len(msgs) == 1


def test_sessions_built_by_walking_parents_across_batches(factory: SpoolFactory):
    s = factory.session(split=True)
    spool = load_spool(factory.spool_dir)
    assert len(spool.sessions) == 1
    sess = spool.sessions[0]
    assert sess.id == s["root"]
    assert sess.status == "ended"
    assert len(sess.spans) == len(s["spans"])
    assert len(sess.files) == 2
    assert sess.bytes == sum(f.stat().st_size for f in factory.spool_dir.glob("*.json"))


def test_root_sentinel_marks_attach_to_batch_session(factory: SpoolFactory):
    a = factory.span("cirron.session")
    b = factory.span("cirron.session", start_ns=BASE_NS + 10 * MS)
    factory.write_batch([a], [factory.mark("root", "early", 1)], session_id=a["id"])
    factory.write_batch([b], [factory.mark("root", "late", 2), factory.mark(new_id(), "lost", 3)], session_id=b["id"])
    sessions = {s.id: s for s in load_sessions(factory.spool_dir)}
    assert [m["name"] for m in sessions[a["id"]].marks] == ["early"]
    assert sorted(m["name"] for m in sessions[b["id"]].marks) == ["late", "lost"]
    grouped = sessions[b["id"]].marks_by_span()
    assert set(grouped) == {b["id"]}


def test_orphans_only_when_no_real_session(factory: SpoolFactory):
    orphan = factory.span("step", parent_id="missing")
    factory.write_batch([orphan])
    sessions = load_sessions(factory.spool_dir)
    assert [s.id for s in sessions] == [ORPHAN_SESSION_ID]
    factory.session()
    sessions = load_sessions(factory.spool_dir)
    assert ORPHAN_SESSION_ID not in [s.id for s in sessions]


def test_deep_chain_and_cycle_are_safe():
    spans = {"r": {"id": "r", "parent_id": None, "name": "cirron.session", "start_ns": 0}}
    prev = "r"
    for i in range(50_000):
        spans[f"s{i}"] = {"id": f"s{i}", "parent_id": prev, "name": "x", "start_ns": i}
        prev = f"s{i}"
    spans["a"] = {"id": "a", "parent_id": "b", "name": "x"}
    spans["b"] = {"id": "b", "parent_id": "a", "name": "x"}
    owner = assign_sessions(spans)
    assert owner["s49999"] == "r"
    assert owner["a"] is None and owner["b"] is None
    top, children = children_index(spans.values(), ["r"])
    order = list(walk_tree(top, children))
    assert len(order) == len(spans)  # cycle members promoted, nothing lost
    assert max(d for _, d in order) == 50_000


def test_live_vs_crashed(factory: SpoolFactory):
    live = factory.session(open_root=True)
    crashed = factory.session(open_root=True, start_ns=BASE_NS + 10**9)
    factory.stale_lock(crashed["root"])
    factory.hold_lock(live["root"])
    sessions = {s.id: s for s in load_sessions(factory.spool_dir)}
    assert sessions[live["root"]].status == "live"
    assert sessions[crashed["root"]].status == "crashed"


def test_live_lock_held_by_other_process(factory: SpoolFactory):
    s = factory.session(open_root=True)
    proc = factory.hold_lock_in_subprocess(s["root"])
    assert load_sessions(factory.spool_dir)[0].live
    proc.stdin.close()
    proc.wait(timeout=10)
    assert load_sessions(factory.spool_dir)[0].crashed


def test_mixed_file_maps_to_both_sessions(factory: SpoolFactory):
    a = factory.span("cirron.session")
    b = factory.span("cirron.session", start_ns=BASE_NS + MS)
    path = factory.write_batch([a, b])
    spool = load_spool(factory.spool_dir)
    assert spool.file_sessions[path] == {a["id"], b["id"]}


def test_iter_batches_and_read_batch(factory: SpoolFactory):
    factory.session()
    pairs = list(iter_batches(factory.spool_dir))
    assert len(pairs) == 1
    assert read_batch(pairs[0][0].path)["schema_version"] == 1
