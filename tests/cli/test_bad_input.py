"""Bad input never produces a traceback: one-line errors/warnings, right exit codes, nothing
written outside the output path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli as run
from spool_factory import SpoolFactory

from cirron.spool.index import INDEX_NAME

CIRRON = Path(sys.executable).parent / "cirron"




def tree(path: Path) -> set[str]:
    """Every path below ``path`` but the spool index (a cache any reader may refresh)."""
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.name != INDEX_NAME}


def junk_spool(factory: SpoolFactory) -> None:
    factory.write_raw(factory.batch_name(), b"[1, 2]")
    factory.write_raw(factory.batch_name(), os.urandom(256))
    factory.write_raw(factory.batch_name(), b"")
    factory.write_raw(factory.batch_name(), b'{"schema_version": 1, "spans": [{"id": "a", "name"')
    (factory.spool_dir / factory.batch_name()).mkdir()
    os.symlink("/etc/passwd", factory.spool_dir / factory.batch_name())


@pytest.mark.parametrize("cmd", [["traces", "view"], ["traces", "list"], ["traces", "view", "--json"],
                                 ["traces", "list", "--json"], ["spool", "list"]])
def test_corrupt_files_skipped_with_one_warning_each(factory: SpoolFactory, cmd):
    s = factory.session(epochs=1)
    junk_spool(factory)
    r = run(*cmd, "--spool", str(factory.spool_dir))
    assert r.exit_code == 0
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("Warning: ")]
    assert len(warnings) == 6, r.stderr
    assert all(ln.startswith("Warning: ") for ln in r.stderr.splitlines())
    if cmd[0] == "traces":
        assert s["root"][:8] in r.stdout or "cirron.session" in r.stdout


def test_only_junk_is_empty(factory: SpoolFactory):
    junk_spool(factory)
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert r.exit_code == 0 and "No traces found." in r.stdout
    r = run("traces", "export", "--format", "json", "--output", str(factory.root / "o.json"),
            "--spool", str(factory.spool_dir))
    assert r.exit_code == 1 and not (factory.root / "o.json").exists()


def test_spool_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for cmd in (["traces", "view"], ["traces", "list"], ["traces", "clear", "--yes"], ["spool", "list"],
                ["traces", "export", "--format", "csv"]):
        r = run(*cmd, "--spool", str(f))
        assert r.exit_code == 1
        assert r.stderr.strip() == f"Error: Spool path {f} is not a directory"


def test_huge_numbers_and_deep_attrs_render(factory: SpoolFactory):
    root = factory.span("cirron.session")
    kid = factory.span("deep", parent_id=root["id"])
    text = json.dumps({"schema_version": 1, "session_id": root["id"], "spans": [root, kid], "marks": [
        factory.mark(kid["id"], "big", 10**30), factory.mark(kid["id"], "inf", "Infinity", value_type="float")]})
    deep = "[" * 10_000 + "]" * 10_000
    text = text.replace('"attrs": {}', f'"attrs": {{"deep": {deep}, "huge": 123456789012345678901234567890}}', 1)
    text = text.replace(f'"cpu_ns": {kid["cpu_ns"]}', '"cpu_ns": 99999999999999999999999999')
    factory.write_raw(factory.batch_name(), text.encode())
    out = factory.root / "out"
    out.mkdir()
    for cmd in (["traces", "view"], ["traces", "view", "--json"], ["traces", "list"]):
        r = run(*cmd, "--spool", str(factory.spool_dir))
        assert r.exit_code == 0, r.output
    r = run("traces", "view", "--spool", str(factory.spool_dir))
    assert "ci.mark inf=Infinity" in r.stdout
    for fmt in ("parquet", "otel", "csv", "json", "perfetto"):
        r = run("traces", "export", "--format", fmt, "--output", str(out / f"x.{fmt}"), "--spool", str(factory.spool_dir))
        assert r.exit_code == 0, (fmt, r.output)


def test_bad_before_date(factory: SpoolFactory):
    factory.session(epochs=1)
    for bad in ("yesterday", "", "2026-13-45"):
        r = run("traces", "clear", "--before", bad, "--yes", "--spool", str(factory.spool_dir))
        assert r.exit_code == 2
        assert r.stderr.strip() == f"Error: Invalid --before date: {bad} (expected ISO-8601)"
    assert len(list(factory.spool_dir.glob("*.json"))) == 1


def test_unknown_session_prefix(factory: SpoolFactory, tmp_path):
    factory.session(epochs=1)
    for cmd in (["traces", "view"], ["traces", "export", "--format", "json", "--output", str(tmp_path / "o.json")]):
        r = run(*cmd, "--session", "ffffffffffff", "--spool", str(factory.spool_dir))
        assert r.exit_code == 1
        assert r.stderr.strip() == "Error: No session found matching ffffffffffff"
    assert not (tmp_path / "o.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_permissions(factory: SpoolFactory, tmp_path):
    factory.session(epochs=1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = run("traces", "export", "--format", "json", "--output", str(ro / "x.json"), "--spool", str(factory.spool_dir))
        assert r.exit_code == 1 and r.stderr.startswith("Error: Cannot write")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("fmt", ["json", "csv", "otel", "perfetto", "parquet"])
def test_unwritable_output(factory: SpoolFactory, tmp_path, fmt):
    factory.session(epochs=1)
    before = tree(tmp_path)
    target = tmp_path / "no" / "such" / "dir" / "x.out" if fmt != "parquet" else tmp_path / "afile"
    if fmt == "parquet":
        target.write_text("not a dir")
        before = tree(tmp_path)
    r = run("traces", "export", "--format", fmt, "--output", str(target), "--spool", str(factory.spool_dir))
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: Cannot write") and len(r.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_failed_write_leaves_no_half_file(factory: SpoolFactory, tmp_path, monkeypatch):
    factory.session(epochs=1)
    import cirron.export._json as jmod

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jmod.orjson, "dumps", boom)
    out = tmp_path / "x.json"
    out.write_text("previous")
    r = run("traces", "export", "--format", "json", "--output", str(out), "--spool", str(factory.spool_dir))
    assert r.exit_code == 1 and "No space left on device" in r.stderr
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cirron", "x.json"]


def test_invalid_option_values(factory: SpoolFactory):
    factory.session(epochs=1)
    r = run("traces", "export", "--format", "otel", "--endpoint", "http://127.0.0.1:9", "--header", "novalue",
            "--spool", str(factory.spool_dir))
    assert r.exit_code == 2 and r.stderr.strip() == "Error: Invalid --header: novalue (expected KEY=VALUE)"
    r = run("traces", "export", "--format", "csv", "--endpoint", "http://x", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2
    r = run("traces", "view", "--last", "0", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2 and r.stderr.strip() == "Error: Invalid --last: 0 (expected a positive number)"
    r = run("traces", "clear", "--keep", "-1", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2 and r.stderr.strip() == "Error: Invalid --keep: -1 (expected 0 or more)"
    r = run("traces", "export", "--spool", str(factory.spool_dir))
    assert r.exit_code == 2 and r.stderr.strip().startswith("Error: Missing option --format")


def _subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([str(CIRRON), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_real_binary_on_bad_spool(factory: SpoolFactory):
    factory.session(epochs=1)
    junk_spool(factory)
    p = _subprocess("traces", "list", cwd=factory.root)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert p.stdout.startswith(f"Spool: {factory.spool_dir.resolve()}  (1 session)")
    assert len(p.stderr.strip().splitlines()) == 6


def test_real_binary_errors(tmp_path):
    p = _subprocess("traces", "view", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "No traces found. Run ci.profile() from Python to produce some."
    p = _subprocess("traces", "export", "--format", "csv", cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    p = _subprocess("traces", "clear", "--before", "nope", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "Error: Invalid --before date: nope (expected ISO-8601)"
    assert list(tmp_path.iterdir()) == []
