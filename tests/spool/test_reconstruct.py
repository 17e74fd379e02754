"""The one session-reconstruction module: per-session use (what a streaming reader does), the
rules it owns, and that the spool loader, the CSV exporter and ``ci.trace()`` agree with it."""

from __future__ import annotations

import csv

from spool_factory import BASE_NS, MS, SpoolFactory, new_id

from cirron.spool import list_batch_files, load_spool, read_batch
from cirron.spool.reconstruct import (
    ORPHAN_SESSION_ID,
    Reconstructor,
    assign_owners,
    children_index,
    mark_span_id,
    reconstruct,
    span_wins,
    use_orphan_session,
)


def _two_sessions(factory: SpoolFactory) -> tuple[dict, dict]:
    a = factory.session(epochs=3, split=True)
    b = factory.session(epochs=2, start_ns=BASE_NS + 10**9)
    return a, b


def test_one_session_at_a_time_equals_the_whole_spool(factory: SpoolFactory):
    a, b = _two_sessions(factory)
    whole = {s.id: s for s in load_spool(factory.spool_dir).sessions}
    for sess in whole.values():
        batches = [(read_batch(bf), bf) for bf in sorted(sess.files, key=lambda f: (f.created_ns, f.batch_id))]
        (alone,) = reconstruct(batches).sessions
        assert alone.id == sess.id
        assert sorted(s.id for s in alone.spans) == sorted(s.id for s in sess.spans)
        assert sorted(m.id for m in alone.marks) == sorted(m.id for m in sess.marks)
        assert alone.files == sess.files
        assert alone.sdk_version == sess.sdk_version and alone.resource == sess.resource
    assert set(whole) == {a["root"], b["root"]}


def test_dedupe_closed_wins_then_last_write(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=None)
    step_open = factory.span("step", parent_id=root["id"], dur_ns=None)
    step_closed = {**step_open, "end_ns": step_open["start_ns"] + MS}
    m1 = factory.mark(step_open["id"], "loss", 1.0)
    m2 = {**m1, "value": 2.0}
    factory.write_batch([root, step_open], [m1], session_id=root["id"])
    factory.write_batch([step_closed], [m2], session_id=root["id"])
    factory.write_batch([step_open], session_id=root["id"])  # a stale open copy after the close
    r = Reconstructor()
    for bf in list_batch_files(factory.spool_dir):
        r.add_batch(read_batch(bf), bf)
    (sess,) = r.finish().sessions
    (step,) = [s for s in sess.spans if s.id == step_open["id"]]
    assert step.end_ns == step_closed["end_ns"]
    assert [m.value for m in sess.marks] == [2.0]
    assert len(sess.files) == 3


def test_rules_in_isolation():
    assert span_wins(None, None) and span_wins(None, 5) and span_wins(5, 6)
    assert not span_wins(5, None)
    assert use_orphan_session(0, 3) and not use_orphan_session(1, 3) and not use_orphan_session(0, 0)
    assert mark_span_id("a", {"a", "r"}, "r") == "a"
    assert mark_span_id("root", {"a", "r"}, "r") == "r"
    assert mark_span_id("gone", {"a", "r"}, "r") == "r"
    assert mark_span_id("gone", {"a"}, None) is None
    # any hashable ids: ints as in process, with a cycle and a missing parent
    owners = assign_owners({1: None, 2: 1, 3: 2, 4: 5, 5: 4, 6: 99, 7: None}, [1])
    assert owners == {1: 1, 2: 1, 3: 1, 4: None, 5: None, 6: None, 7: None}
    top, children = children_index([{"id": 2, "parent_id": 1, "start_ns": 5}, {"id": 1, "parent_id": None,
                                                                               "start_ns": 0}])
    assert [s["id"] for s in top] == [1] and [s["id"] for s in children[1]] == [2]


def test_orphans_group_only_without_a_real_session(factory: SpoolFactory):
    lone = factory.span("step", parent_id="missing")
    factory.write_batch([lone])
    rec = reconstruct(read_batch(bf) for bf in list_batch_files(factory.spool_dir))
    assert [s.id for s in rec.sessions] == [ORPHAN_SESSION_ID]


def test_csv_export_assigns_sessions_like_the_loader(factory: SpoolFactory, tmp_path):
    from cirron.export import write_csv

    _two_sessions(factory)
    stray = factory.span("stray", parent_id=new_id())  # reaches no root: in no session
    factory.write_batch([stray])
    out = tmp_path / "t.csv"
    write_csv(load_spool(factory.spool_dir, fields="export").sessions, out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_session: dict[str, set[str]] = {}
    for row in rows:
        by_session.setdefault(row["session_id"], set()).add(row["span_id"])
    loaded = {s.id: {x.id for x in s.spans} for s in load_spool(factory.spool_dir).sessions}
    assert by_session == loaded
