"""The CLI as a shell sees it: completion for bash/zsh/fish, help screens without type
placeholders, choice-typed options, and a warning that names a --spool path that is not there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from spool_factory import SpoolFactory

from cirron_cli.app import app

CIRRON = shutil.which("cirron", path=str(Path(sys.executable).parent)) or "cirron"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CIRRON, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------------- completion

SCRIPT_MARKERS = {
    "bash": "complete -o default -F _cirron_completion cirron",
    "zsh": "compdef _cirron_completion cirron",
    "fish": "complete --command cirron",
}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_per_shell(tmp_path: Path, shell: str) -> None:
    r = run("completion", shell, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert SCRIPT_MARKERS[shell] in r.stdout and "_CIRRON_COMPLETE" in r.stdout
    other = [m for s, m in SCRIPT_MARKERS.items() if s != shell]
    assert not any(m in r.stdout for m in other)


def test_completion_rejects_an_unknown_shell(tmp_path: Path) -> None:
    r = run("completion", "tcsh", cwd=tmp_path)
    assert r.returncode == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in r.stderr


def _complete(tmp_path: Path, shell: str, line: str) -> list[str]:
    """What the installed script would ask ``cirron`` for, with the environment it sets."""
    words = line.split(" ")
    env = {"_CIRRON_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        env.update(COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    else:
        env["_TYPER_COMPLETE_ARGS"] = line
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    r = run(cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_answers_commands_and_choices(tmp_path: Path, shell: str) -> None:
    out = " ".join(_complete(tmp_path, shell, "cirron traces ex"))
    assert "export" in out and "view" not in out
    out = " ".join(_complete(tmp_path, shell, "cirron traces export --format "))
    for fmt in ("parquet", "otel", "csv", "json", "perfetto"):
        assert fmt in out
    out = " ".join(_complete(tmp_path, shell, "cirron traces export --protocol "))
    assert "http/protobuf" in out and "http/json" in out


# ----------------------------------------------------------------------------------- help


def _all_commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        out += _all_commands(sub, (*path, name))
    return out


def test_no_help_screen_shows_type_placeholders(tmp_path: Path) -> None:
    commands = _all_commands(typer.main.get_command(app))
    assert ("traces", "export") in commands and ("completion",) in commands
    placeholder = re.compile(r"<(bool|str|int|float|Path|text|list\[.*?\])>")
    for path in commands:
        r = run(*path, "--help", cwd=tmp_path, env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert r.returncode == 0, (path, r.stderr)
        assert not placeholder.search(r.stdout), (path, placeholder.search(r.stdout).group(0))
    r = run("traces", "export", "--help", cwd=tmp_path, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert re.search(r"--format\s+\[parquet\|otel\|otlp\|csv\|json\|perfetto\]", r.stdout)
    assert re.search(r"--compression\s+\[gzip\|none\]", r.stdout)
    assert re.search(r"--endpoint\s+URL", r.stdout) and re.search(r"--json\b", run(
        "traces", "view", "--help", cwd=tmp_path, env={"COLUMNS": "200"}).stdout)


@pytest.mark.parametrize("args,needle", [
    (("traces", "export", "--format", "xml"), "'xml' is not one of 'parquet', 'otel', 'otlp', 'csv', 'json'"),
    (("traces", "export", "--format", "otel", "--endpoint", "http://x", "--protocol", "grpc"),
     "'grpc' is not one of 'http/protobuf', 'http/json'"),
    (("traces", "export", "--format", "otel", "--endpoint", "http://x", "--compression", "zstd"),
     "'zstd' is not one of 'gzip', 'none'"),
])
def test_choice_options_are_checked_by_the_parser(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------- --spool


def test_missing_spool_path_is_named_in_a_warning(tmp_path: Path, factory: SpoolFactory) -> None:
    missing = tmp_path / "nope" / "spool"
    for args in (("traces", "view"), ("traces", "list"), ("traces", "snapshots")):
        r = run(*args, "--spool", str(missing), cwd=tmp_path)
        assert f"Warning: spool directory {missing} does not exist" in r.stderr, (args, r.stderr)
        assert "No traces found" in r.stdout + r.stderr
    factory.session(epochs=1)  # one real spool beside the missing one: it is read, the other named
    r = run("traces", "list", "--spool", str(factory.spool_dir), "--spool", str(missing), cwd=tmp_path)
    assert r.returncode == 0 and "1 session" in r.stdout
    assert r.stderr.count("does not exist") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("traces", "list", cwd=empty)  # the default spool, absent: the ordinary empty case
    assert "Warning" not in r.stderr and "No traces found" in r.stdout
