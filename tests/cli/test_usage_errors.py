"""The installed `cirron` script turns every usage error into one line, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CIRRON = shutil.which("cirron", path=str(Path(sys.executable).parent)) or "cirron"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CIRRON, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,needle", [
    (("traces", "view", "--last", "abc"), "Invalid value for '--last'"),
    (("traces", "view", "--bogus"), "No such option: --bogus"),
    (("traces", "export", "--format", "xml"), "Invalid value for '--format'"),
    (("nosuchcommand",), "No such command"),
])
def test_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and "╭" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("Error: ") and needle in first


def test_help_and_version_exit_zero(tmp_path: Path) -> None:
    assert run("--version", cwd=tmp_path).stdout.strip().startswith("cirron ")
    for args in ((), ("traces",), ("traces", "view", "--help")):
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.count("Usage") == 1 and r.stderr == ""


def test_json_on_missing_spool_is_empty(tmp_path: Path) -> None:
    r = run("traces", "list", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["sessions"] == []
    r = run("traces", "view", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == []
