"""cirron.spool.retention: what ``clear`` deletes, planned without touching the disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory

from cirron.safetensors_io import write_file
from cirron.spool import paths
from cirron.spool import reader as spool_reader
from cirron.spool import sessions as spool_sessions
from cirron.spool.catalog import open_catalog
from cirron.spool.retention import plan_spool_clear, snapshot_dir_sessions
from cirron.spool.sessions import load_spool

DAY = 86_400 * 10**9


@pytest.fixture(params=["loaded", "indexed"])
def source(request: pytest.FixtureRequest) -> str:
    """Every plan is made from a loaded spool and from the index's summaries: same answer."""
    return request.param


_SOURCE = {"kind": "loaded"}


@pytest.fixture(autouse=True)
def _use_source(source: str) -> None:
    _SOURCE["kind"] = source


def loaded(factory: SpoolFactory) -> list:
    d = factory.spool_dir
    if _SOURCE["kind"] == "indexed":
        return [(d, open_catalog([d]).clear_source(d))]
    return [(d, load_spool(d, fields="summary"))]


def test_indexed_plan_reads_no_batch_file_without_snapshot_dirs(factory: SpoolFactory, monkeypatch):
    factory.session(epochs=2)
    factory.session(epochs=1, start_ns=BASE_NS + DAY)
    d = factory.spool_dir
    open_catalog([d]).sessions  # noqa: B018  (builds the index)
    reads = []
    real = spool_reader.read_batch
    monkeypatch.setattr(spool_reader, "read_batch", lambda *a, **k: reads.append(a) or real(*a, **k))
    monkeypatch.setattr(spool_sessions, "read_batch", lambda *a, **k: reads.append(a) or real(*a, **k))
    plan = plan_spool_clear([(d, open_catalog([d]).clear_source(d))])
    assert len(plan.eligible) == 2 and plan.n_spans > 0 and reads == []


def test_indexed_plan_matches_snapshot_dirs_by_reading_files(factory: SpoolFactory):
    a = factory.session(epochs=2, snapshots=True)
    b = factory.session(epochs=1, snapshots=True, start_ns=BASE_NS + DAY)
    d = factory.spool_dir
    plan = plan_spool_clear([(d, open_catalog([d]).clear_source(d))], cutoff_ns=BASE_NS + DAY // 2)
    assert [s.id for s in plan.eligible] == [a["root"]]
    assert sorted(x.name for x in plan.groups[0][2]) == sorted(a["epochs"])
    assert not set(b["epochs"]) & {x.name for _b, _f, dirs in plan.groups for x in dirs}


def snapshot_dir_for(factory: SpoolFactory, name: str, session_id: str | None) -> Path:
    d = factory.snapshots_dir / name
    d.mkdir(parents=True)
    meta = {"session_id": session_id} if session_id else {}
    write_file(d / "w.safetensors", [("w", "F32", [1], b"\0" * 4)], meta, fsync=False)
    return d


def test_groups_hold_each_sessions_files_dirs_and_stale_lock(factory: SpoolFactory):
    a = factory.session(epochs=1, snapshots=True)
    b = factory.session(epochs=2, snapshots=True, start_ns=BASE_NS + DAY)
    lock = factory.stale_lock(a["root"])
    plan = plan_spool_clear(loaded(factory))
    assert [s.id for s in plan.eligible] == [a["root"], b["root"]]
    base = paths.cirron_root(factory.spool_dir)
    (ga, fa, da), (gb, fb, db) = plan.groups
    assert ga == gb == base
    assert lock in fa and len(fa) == 2 and len(fb) == 1
    assert sorted(d.name for d in da) == a["epochs"] and sorted(d.name for d in db) == sorted(b["epochs"])
    assert plan.n_bytes == sum(p.stat().st_size for p in factory.spool_dir.glob("*.json"))
    assert plan.n_spans == 6 + 11 and plan.n_dirs == 3
    assert plan.orphan_dirs == [] and plan.live == [] and plan.unfinished == []
    assert all(p.exists() for p in [*fa, *fb, *da, *db])  # planning deletes nothing


def test_shared_batch_file_is_planned_only_with_all_its_sessions(factory: SpoolFactory):
    a = factory.span("cirron.session", dur_ns=MS)
    b = factory.span("cirron.session", dur_ns=MS, start_ns=BASE_NS + 10 * DAY)
    mixed = factory.write_batch([a, b])
    first_only = plan_spool_clear(loaded(factory), cutoff_ns=BASE_NS + DAY)
    assert [s.id for s in first_only.eligible] == [a["id"]]
    assert first_only.groups[0][1] == [] and first_only.n_bytes == 0
    both = plan_spool_clear(loaded(factory))
    assert [f for _b, files, _d in both.groups for f in files] == [mixed]
    assert both.n_bytes == mixed.stat().st_size


def test_live_and_unfinished_sessions_are_reported_and_left_out(factory: SpoolFactory):
    done = factory.session(epochs=1)
    live = factory.session(epochs=1, open_root=True, start_ns=BASE_NS + DAY)
    unfinished = factory.span("cirron.session", dur_ns=None, start_ns=BASE_NS + 2 * DAY)
    doc = {"schema_version": 1, "sdk_version": "0.3.0", "batch_id": "f" * 32, "created_ns": BASE_NS,
           "spans": [unfinished], "marks": [], "snapshots": []}  # no session_id: a writer without locks
    factory.write_raw(factory.batch_name(), json.dumps(doc).encode())
    factory.hold_lock(live["root"])
    plan = plan_spool_clear(loaded(factory))
    assert [s.id for s in plan.eligible] == [done["root"]]
    assert [s.id for s in plan.live] == [live["root"]]
    assert [s.id for s in plan.unfinished] == [unfinished["id"]]
    assert len(plan.groups) == 1


def test_orphans_spare_dirs_whose_headers_name_a_kept_session(factory: SpoolFactory):
    kept = factory.session(epochs=1, start_ns=BASE_NS + 10 * DAY)
    gone = factory.session(epochs=1)
    claimed = snapshot_dir_for(factory, "a" * 32, kept["root"])
    stray = snapshot_dir_for(factory, "b" * 32, gone["root"])
    unnamed = snapshot_dir_for(factory, "c" * 32, None)
    plan = plan_spool_clear(loaded(factory), cutoff_ns=BASE_NS + DAY)
    base = paths.cirron_root(factory.spool_dir)
    assert [s.id for s in plan.eligible] == [gone["root"]]
    assert plan.orphan_dirs == [(base, stray), (base, unnamed)]
    assert claimed.is_dir() and plan.n_dirs == 2
    assert plan_spool_clear(loaded(factory), cutoff_ns=BASE_NS + DAY, prune_orphans=False).orphan_dirs == []


def test_snapshot_dir_sessions_reads_metadata_and_skips_bad_files(tmp_path: Path):
    d = tmp_path / "snap"
    d.mkdir()
    write_file(d / "ok.safetensors", [("w", "F32", [1], b"\0" * 4)], {"session_id": "s1"}, fsync=False)
    (d / "short.safetensors").write_bytes(b"\0" * 8)
    (d / "json.safetensors").write_bytes((5).to_bytes(8, "little") + b"nope!")
    (d / "other.txt").write_bytes(b"")
    (d / "link.safetensors").symlink_to(d / "ok.safetensors")
    (tmp_path / "elsewhere.safetensors").write_bytes(b"")
    write_file(tmp_path / "out.safetensors", [("w", "F32", [1], b"\0" * 4)], {"session_id": "s2"}, fsync=False)
    (d / "escape.safetensors").symlink_to(tmp_path / "out.safetensors")
    assert snapshot_dir_sessions(d) == {"s1"}
    assert snapshot_dir_sessions(tmp_path / "missing") == set()
