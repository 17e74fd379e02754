"""The ``cirron`` program (``cirron_cli.app:run``) ends without the interpreter's teardown when
nothing needs it, and behaves as a normal exit: the command's exit status, all of its output
(flushed, also into a pipe), the ``atexit`` handlers run; with another thread still running, or a
message as the exit code, it exits the normal way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120)


def test_the_program_exits_with_the_commands_status_and_all_of_its_output(factory) -> None:
    factory.session()
    out = subprocess.run([sys.executable, "-m", "cirron_cli.app", "traces", "export", "--format", "json",
                          "--output", "-", "--spool", str(factory.spool_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole document came through the pipe
    assert doc["spans"] and "Exported" in out.stderr
    usage = subprocess.run([sys.executable, "-m", "cirron_cli.app", "traces", "export", "--format", "nope",
                            "--spool", str(factory.spool_dir)], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "Error:" in usage.stderr


_LEAVE = """
import atexit, os, sys, threading
from cirron_cli import app

class Teardown:
    def __del__(self):
        print(" teardown ran", end="")

kept = Teardown()  # freed by the interpreter's teardown only
atexit.register(lambda: print("atexit ran", flush=True))
mode = sys.argv[1]
if mode == "thread":
    threading.Thread(target=threading.Event().wait, args=(2,), daemon=True).start()
if mode == "message":
    app.leave("a message")
print("output", end="")  # unflushed: leave() flushes it
try:
    app.leave(3)
except SystemExit as exc:
    print(" normal exit", exc.code, flush=True)
    raise
"""


@pytest.mark.parametrize("mode", ["alone", "thread", "message"])
def test_leave_skips_the_teardown_only_when_nothing_needs_it(mode: str) -> None:
    done = _run(_LEAVE, mode)
    if mode == "alone":  # no teardown; the handlers ran first, the output is all there
        assert done.returncode == 3 and done.stdout == "outputatexit ran\n", done.stderr
    elif mode == "thread":  # another thread runs: the normal exit (which runs the handlers itself)
        assert done.returncode == 3 and done.stdout == "output normal exit 3\natexit ran\n teardown ran", done.stderr
    else:  # a message: printed by the normal exit, status 1
        assert done.returncode == 1 and done.stderr == "a message\n" and done.stdout == "atexit ran\n teardown ran"


def test_leave_falls_back_to_the_normal_exit_when_standard_output_is_gone() -> None:
    """A reader that closed the pipe early: the normal exit reports it (status 120), as before."""
    code = """
    import os, sys
    from cirron_cli import app
    r, w = os.pipe()
    os.close(r)
    sys.stdout = os.fdopen(w, "w")
    print("x" * 100)
    app.leave(0)
    """
    done = _run(code)
    assert done.returncode == 120, done.stderr
