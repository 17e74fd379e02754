"""`cirron traces clear` and `cirron spool list|clear`."""

from __future__ import annotations

import json
import signal

import pytest
from cli_helpers import run_cli as run
from spool_factory import BASE_NS, MS, SpoolFactory

DAY = 86_400 * 10**9




def ids(factory: SpoolFactory) -> set[str]:
    r = run("traces", "list", "--json", "--spool", str(factory.spool_dir))
    return {s["id"] for s in json.loads(r.stdout)["sessions"]}


def make(factory: SpoolFactory, n: int, **kw) -> list[dict]:
    return [factory.session(start_ns=BASE_NS + i * DAY, epochs=1, **kw) for i in range(n)]


def test_prompt_text_and_decline(factory: SpoolFactory):
    sessions = make(factory, 3, snapshots=True)
    r = run("traces", "clear", "--spool", str(factory.spool_dir), input="n\n")
    total = sum(p.stat().st_size for p in factory.spool_dir.glob("*.json"))
    from cirron_cli.render import format_bytes

    assert r.stdout.startswith(f"? Delete 3 sessions (18 spans, {format_bytes(total)}, 3 snapshot dirs)? (y/N)")
    assert r.exit_code == 1
    assert ids(factory) == {s["root"] for s in sessions}


def test_prompt_thousands_separator(factory: SpoolFactory):
    root = factory.span("cirron.session", dur_ns=10 * MS)
    kids = [factory.span("k", parent_id=root["id"], start_ns=BASE_NS + i) for i in range(5243)]
    factory.write_batch([root, *kids], session_id=root["id"])
    r = run("traces", "clear", "--spool", str(factory.spool_dir), input="y\n")
    assert "? Delete 1 session (5,244 spans, " in r.stdout
    assert r.exit_code == 0 and ids(factory) == set()


def test_yes_deletes_files_snapshots_and_stale_locks(factory: SpoolFactory):
    s = make(factory, 2, snapshots=True)
    factory.stale_lock(s[0]["root"])
    r = run("traces", "clear", "--yes", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0, r.output
    assert list(factory.spool_dir.glob("*.json")) == []
    assert list(factory.snapshots_dir.iterdir()) == []
    assert not factory.lock_path(s[0]["root"]).exists()
    assert "Deleted 2 sessions" in r.stdout


def test_live_session_never_deleted(factory: SpoolFactory):
    done, live = make(factory, 2)[0], factory.session(open_root=True, epochs=1, start_ns=BASE_NS - DAY, snapshots=True)
    proc = factory.hold_lock_in_subprocess(live["root"])
    proc.send_signal(signal.SIGSTOP)  # an idle or stopped writer still holds the lock
    try:
        for args in (["--yes"], ["--keep", "0", "--yes"], ["--before", "2100-01-01", "--yes"]):
            run("traces", "clear", *args, "--spool", str(factory.spool_dir))
            assert live["root"] in ids(factory)
            assert (factory.snapshots_dir / live["epochs"][0]).is_dir()
    finally:
        proc.send_signal(signal.SIGCONT)
    assert done["root"] not in ids(factory)


def test_keep_retains_newest_finished_and_crashed(factory: SpoolFactory):
    s = make(factory, 4)
    crashed = factory.session(open_root=True, epochs=1, start_ns=BASE_NS - DAY)
    r = run("traces", "clear", "--keep", "2", "--yes", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0
    assert ids(factory) == {s[2]["root"], s[3]["root"], crashed["root"]}


def test_before_deletes_older_including_crashed(factory: SpoolFactory):
    s = make(factory, 3)  # 2026-04-18, -19, -20
    crashed = factory.session(open_root=True, epochs=1, start_ns=BASE_NS - DAY)
    r = run("traces", "clear", "--before", "2026-04-19T12:00:00Z", "--yes", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0
    assert ids(factory) == {s[2]["root"]}
    assert crashed


def test_before_and_keep_combine(factory: SpoolFactory):
    s = make(factory, 4)
    run("traces", "clear", "--before", "2026-04-20", "--keep", "3", "--yes", "--spool", str(factory.spool_dir))
    assert ids(factory) == {x["root"] for x in s[1:]}


def test_mixed_file_deleted_only_with_all_its_sessions(factory: SpoolFactory):
    a = factory.span("cirron.session", dur_ns=MS)
    b = factory.span("cirron.session", dur_ns=MS, start_ns=BASE_NS + 10 * DAY)
    mixed = factory.write_batch([a, b])
    run("traces", "clear", "--before", "2026-04-20", "--yes", "--spool", str(factory.spool_dir))
    assert mixed.exists()
    run("traces", "clear", "--yes", "--spool", str(factory.spool_dir))
    assert not mixed.exists()


def test_orphan_snapshot_dirs_pruned_unless_disabled(factory: SpoolFactory):
    keep = factory.session(epochs=1, snapshots=True)
    orphan = factory.snapshots_dir / "0123456789abcdef0123456789abcdef"
    orphan.mkdir(parents=True)
    (orphan / "weights.safetensors").write_bytes(b"\0" * 8)
    r = run("traces", "clear", "--before", "2000-01-01", "--no-prune-orphans", "--yes", "--spool", str(factory.spool_dir))
    assert r.stdout.strip() == "Nothing to delete." and orphan.is_dir()
    r = run("traces", "clear", "--before", "2000-01-01", "--yes", "--spool", str(factory.spool_dir))
    assert not orphan.exists()
    assert (factory.snapshots_dir / keep["epochs"][0]).is_dir()
    assert keep["root"] in ids(factory)


def test_ctrl_c_stops_between_sessions_and_exits_130(factory: SpoolFactory, monkeypatch):
    make(factory, 3, snapshots=True)
    import cirron_cli.traces as t

    real = t._Deleter.delete_group
    calls = []

    def group_then_sigint(self, base, files, dirs):
        real(self, base, files, dirs)
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # arrives while the first session is being deleted

    monkeypatch.setattr(t._Deleter, "delete_group", group_then_sigint)
    r = run("traces", "clear", "--yes", "--spool", str(factory.spool_dir))
    assert r.exit_code == 130
    assert len(calls) == 1
    assert r.stderr.strip().startswith("Interrupted: deleted 1 file and 1 snapshot dir before stopping.")
    assert len(ids(factory)) == 2  # whole sessions only
    assert not list(factory.root.glob(".cirron/.cirron-trash-*"))


def test_keyboard_interrupt_at_prompt_exits_130(factory: SpoolFactory, monkeypatch):
    make(factory, 1)
    import cirron_cli.traces as t

    def interrupted(_q):
        raise KeyboardInterrupt

    monkeypatch.setattr(t, "_confirm", interrupted)
    r = run("traces", "clear", "--spool", str(factory.spool_dir))
    assert r.exit_code == 130 and len(ids(factory)) == 1


def test_nothing_to_delete_on_empty(tmp_path):
    r = run("traces", "clear", "--yes", "--spool", str(tmp_path / "none"))
    assert r.exit_code == 0 and r.stdout.strip() == "Nothing to delete."


# ----------------------------------------------------------------------------- cirron spool


def test_spool_list_table_and_json(factory: SpoolFactory):
    factory.session(split=True)
    r = run("spool", "list", "--spool", str(factory.spool_dir))
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"Spool: {factory.spool_dir.resolve()}  (2 batch files, ")
    assert [h.strip() for h in lines[2].strip("│").split("│")] == ["FILE", "SIZE", "CREATED", "SPANS", "MARKS", "SNAPSHOTS"]
    data = json.loads(run("spool", "list", "--json", "--spool", str(factory.spool_dir)).stdout)
    assert [f["spans"] for f in data["files"]] == [3, 9]
    assert data["files"][0]["created_ns"].isdigit()


def test_spool_list_answers_the_same_from_its_index(factory: SpoolFactory):
    from cirron.spool.index import index_path

    factory.session(split=True, snapshots=True)
    factory.write_raw(factory.batch_name(), b"garbage")
    cold = [run("spool", "list", *more, "--spool", str(factory.spool_dir)) for more in ([], ["--json"])]
    assert index_path(factory.spool_dir).is_file()
    warm = [run("spool", "list", *more, "--spool", str(factory.spool_dir)) for more in ([], ["--json"])]
    assert [(r.stdout, r.stderr) for r in warm] == [(r.stdout, r.stderr) for r in cold]
    assert "not valid JSON" in warm[0].stderr
    files = json.loads(warm[1].stdout)["files"]
    assert [f["readable"] for f in files] == [True, True, False] and files[-1]["spans"] is None


def test_spool_clear_keeps_live_files(factory: SpoolFactory):
    done = factory.session(epochs=1)
    live = factory.session(open_root=True, epochs=1, start_ns=BASE_NS + DAY)
    factory.write_raw(factory.batch_name(), b"garbage")
    factory.hold_lock(live["root"])
    r = run("spool", "clear", "--spool", str(factory.spool_dir), input="y\n")
    assert r.exit_code == 0, r.output
    assert "? Delete 2 batch files (" in r.stdout
    assert "Keeping 1 batch file of 1 live session" in r.stderr
    assert ids(factory) == {live["root"]}
    assert done


def test_spool_clear_decline(factory: SpoolFactory):
    factory.session(epochs=1)
    r = run("spool", "clear", "--spool", str(factory.spool_dir), input="\n")
    assert r.exit_code == 1 and len(list(factory.spool_dir.glob("*.json"))) == 1


@pytest.mark.parametrize("cmd", [["spool", "list"], ["spool", "clear", "--yes"]])
def test_spool_commands_on_missing_dir(tmp_path, cmd):
    r = run(*cmd, "--spool", str(tmp_path / "none"))
    assert r.exit_code == 0
