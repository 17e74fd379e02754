"""Hostile spools: nothing on disk may hang, crash or breach a command. Every case runs the real
CLI in a subprocess under a timeout, so a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from spool_factory import BASE_NS, MS, SpoolFactory

TIMEOUT = 60
COMMANDS = [
    ["traces", "view", "--last", "9"],
    ["traces", "view", "--last", "9", "--json"],
    ["traces", "list"],
    ["traces", "list", "--json"],
    ["traces", "export", "--format", "json", "--output", "{out}/t.json"],
    ["traces", "export", "--format", "otel", "--output", "{out}/t.otlp.json"],
    ["traces", "export", "--format", "csv", "--output", "{out}/t.csv"],
    ["traces", "export", "--format", "perfetto", "--output", "{out}/t.pf.json"],
    ["traces", "export", "--format", "parquet", "--output", "{out}/pq"],
    ["traces", "snapshots"],
    ["spool", "list"],
    ["traces", "clear", "--keep", "5", "--yes"],
    ["spool", "clear", "--yes"],
]


def cli(*args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "CIRRON_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "cirron_cli.app", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_every_command(root: Path, spool: Path, extra: list[list[str]] = ()) -> list[subprocess.CompletedProcess]:
    out = root / "out"
    out.mkdir(exist_ok=True)
    results = []
    for cmd in [*COMMANDS[:-2], *extra, *COMMANDS[-2:]]:
        args = [a.format(out=out) for a in cmd] + ["--spool", str(spool)]
        r = cli(*args, cwd=root)  # a hang raises TimeoutExpired: the test fails
        assert r.returncode in (0, 1), (cmd, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, (cmd, r.stderr)
        assert "\x1b" not in r.stdout and "\x1b" not in r.stderr, (cmd, r.stdout)
        results.append(r)
    return results


@pytest.mark.slow
def test_fifos_where_files_should_be_never_block(factory: SpoolFactory, tmp_path: Path):
    done = factory.session(snapshots=True)
    open_ = factory.session(open_root=True, start_ns=BASE_NS + 10**9)
    live = factory.spool_dir / ".live"
    live.mkdir(exist_ok=True)
    os.mkfifo(live / f"{open_['root']}.lock")  # the liveness lock
    blob = factory.snapshots_dir / done["epochs"][0] / "weights.safetensors"
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob.exists():
        blob.unlink()
    os.mkfifo(blob)  # a snapshot blob
    os.mkfifo(factory.spool_dir / f"{BASE_NS + 5}-{'f' * 32}.json")  # a batch file
    rs = check_every_command(tmp_path, factory.spool_dir,
                             extra=[["traces", "snapshot", done["epochs"][0]],
                                    ["traces", "snapshot", done["epochs"][0], "0.weight", "--preview", "2"]])
    listed = json.loads(rs[3].stdout)["sessions"]
    assert {s["id"] for s in listed} == {done["root"], open_["root"]}
    assert next(s for s in listed if s["id"] == open_["root"])["crashed"] is True  # a FIFO is no lock
    snap = rs[-4]
    assert snap.returncode == 0 and "not a regular file" in snap.stderr
    assert rs[-3].returncode == 1 and rs[-3].stderr.startswith("Warning")


@pytest.mark.slow
def test_session_id_with_dot_dot_never_becomes_a_path(factory: SpoolFactory, tmp_path: Path):
    evil = factory.span("cirron.session", id="../../evil", dur_ns=None)
    step = factory.span("step", parent_id=evil["id"], start_ns=BASE_NS + MS)
    factory.write_batch([evil, step], session_id=evil["id"])
    # where the id would lead from .live/: a FIFO (opening it would hang) and a file (it must stay)
    escaped = (factory.spool_dir / ".live" / "../../evil.lock").resolve()
    escaped.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(escaped)
    outside = (factory.snapshots_dir / "../../outside").resolve()
    outside.mkdir(parents=True, exist_ok=True)
    check_every_command(tmp_path, factory.spool_dir)
    assert escaped.exists() and outside.exists()  # clear touched nothing outside the spool


@pytest.mark.slow
def test_ints_beyond_int64_export_everywhere(factory: SpoolFactory, tmp_path: Path):
    root = factory.span("cirron.session", dur_ns=100 * MS)
    step = factory.span("step", parent_id=root["id"], attrs={"big": 2**63, "neg": -(2**70), "nested": {"x": 2**64}})
    mark = factory.mark(step["id"], "huge", 2**64, value_type="int")
    factory.write_batch([root, step], [mark], session_id=root["id"])
    check_every_command(tmp_path, factory.spool_dir)
    out = tmp_path / "out"
    r = cli("traces", "export", "--format", "json", "--output", str(out / "t.json"), "--spool", str(factory.spool_dir),
            cwd=tmp_path)
    doc = json.loads((out / "t.json").read_text())
    span = next(s for s in doc["spans"] if s["name"] == "step")
    assert span["attrs"]["big"] == str(2**63) and span["attrs"]["nested"]["x"] == str(2**64), r.stderr
    assert doc["marks"][0]["value"] == str(2**64) and doc["marks"][0]["value_type"] == "int"


def test_sdk_writes_ints_beyond_int64_as_decimal_strings(tmp_path: Path):
    code = ("import cirron as ci\nci.profile()\n"
            "with ci.scope('s', big=2**63, ok=5):\n    ci.mark('x', 2**64)\n    ci.mark('y', 2**63 - 1)\n"
            "ci.shutdown()\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=TIMEOUT, capture_output=True)
    batches = [json.loads(p.read_text()) for p in (tmp_path / ".cirron" / "spool").glob("*.json")]
    spans = [s for b in batches for s in b["spans"] if s["name"] == "s"]
    marks = {m["name"]: m for b in batches for m in b["marks"]}
    assert spans[0]["attrs"] == {"big": str(2**63), "ok": 5}
    assert marks["x"]["value"] == str(2**64) and marks["x"]["value_type"] == "int"
    assert marks["y"]["value"] == 2**63 - 1


def test_lone_surrogate_escapes_are_read_as_replacement_characters(factory: SpoolFactory, tmp_path: Path):
    """Another writer's ``"\\ud800"`` is valid JSON but no character: it is read as U+FFFD, so every
    command works (each one failed with a traceback when the string could not be encoded)."""
    root = factory.span("cirron.session", dur_ns=100 * MS)
    step = factory.span("a\ud800b", parent_id=root["id"], attrs={"k\udc00": "v\ud83d\ude00"})
    mark = factory.mark(step["id"], "m\udfff", "x\ud800\ud800y")
    factory.write_batch([root, step], [mark], session_id=root["id"])
    assert b"\\ud800" in next(factory.spool_dir.glob("*.json")).read_bytes()
    for r in check_every_command(tmp_path, factory.spool_dir):
        assert r.returncode == 0, (r.args, r.stderr)
    doc = json.loads((tmp_path / "out" / "t.json").read_text())
    span = next(s for s in doc["spans"] if s["name"] != "cirron.session")
    assert span["name"] == "a\ufffdb" and span["attrs"] == {"k\ufffd": "v\U0001f600"}
    assert doc["marks"][0]["name"] == "m\ufffd" and doc["marks"][0]["value"] == "x\ufffd\ufffdy"


@pytest.mark.slow
def test_control_characters_are_escaped_on_the_terminal(factory: SpoolFactory, tmp_path: Path):
    root = factory.span("cirron.session", dur_ns=100 * MS)
    step = factory.span("\x1b[31mred\x1b]0;title\x07", parent_id=root["id"], attrs={"k\x1b[2J": "v\x1b[2J"})
    mark = factory.mark(step["id"], "\x1b[1mbold", "x\x1b[2Jy\r")
    factory.write_batch([root, step], [mark], session_id=root["id"])
    r = cli("traces", "view", "--spool", str(factory.spool_dir), cwd=tmp_path)
    assert "\x1b" not in r.stdout and "\\x1b[31mred\\x1b]0;title\\x07" in r.stdout
    assert "ci.mark \\x1b[1mbold=" in r.stdout
    check_every_command(tmp_path, factory.spool_dir)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory_named_like_the_file"])
def test_output_never_replaces_links_fifos_or_directories(factory: SpoolFactory, tmp_path: Path, kind: str):
    factory.session()
    target = tmp_path / "t.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "cirron-traces.json").mkdir()
        target = tmp_path / "d"
    r = cli("traces", "export", "--format", "json", "--output", str(target), "--spool", str(factory.spool_dir),
            cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("Error: Cannot write") and "never replaces" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert victim.read_text() == "keep me"
    if kind == "symlink":
        assert target.is_symlink()
    elif kind == "fifo":
        assert not target.is_file() and target.exists()


def test_output_dash_is_stdout_for_single_file_formats(factory: SpoolFactory, tmp_path: Path):
    s = factory.session()
    for fmt in ("json", "otel", "perfetto", "csv"):
        r = cli("traces", "export", "--format", fmt, "--output", "-", "--spool", str(factory.spool_dir), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "standard output" in r.stderr
        if fmt == "csv":
            assert r.stdout.startswith("session_id,") and s["root"] in r.stdout
        else:
            json.loads(r.stdout)
    assert not (tmp_path / "-").exists()
    r = cli("traces", "export", "--format", "parquet", "--output", "-", "--spool", str(factory.spool_dir), cwd=tmp_path)
    assert r.returncode == 2 and "single-file formats" in r.stderr


def test_check_output_refuses_devices():
    from cirron.export import OutputRefused, check_output

    with pytest.raises(OutputRefused, match="a device"):
        check_output("/dev/null")
    with pytest.raises(OutputRefused, match="a symlink"):
        check_output("/dev/stdout")


def test_dead_writers_snapshot_temporaries_are_cleaned(tmp_path: Path):
    from cirron.spool.writer import SpoolWriter

    spool = tmp_path / ".cirron" / "spool"
    span_dir = tmp_path / ".cirron" / "snapshots" / ("a" * 32)
    span_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=TIMEOUT).stdout.strip()
    stale = span_dir / f".tmp-{dead}-0000abcd-weights.safetensors"
    stale.write_bytes(b"partial")
    mine = span_dir / f".tmp-{os.getpid()}-0000abcd-weights.safetensors"
    mine.write_bytes(b"in progress")
    kept = span_dir / "weights.safetensors"
    kept.write_bytes(b"done")
    w = SpoolWriter(spool, None)
    w.open()
    w.close()
    assert not stale.exists() and mine.exists() and kept.exists()
