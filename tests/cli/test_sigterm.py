"""SIGTERM ends a command the way Ctrl-C does: what it was writing is removed, not left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_WRITER = textwrap.dedent(
    """
    import signal, sys
    from cirron_cli.app import exit_on_sigterm
    from cirron.export import atomic_file

    exit_on_sigterm()
    with atomic_file(sys.argv[1]) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half an export")
        print("writing", flush=True)
        signal.pause()
    """
)


def test_a_sigterm_mid_export_leaves_neither_output_nor_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "out" / "traces.json"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(out.parent.iterdir())) == 1  # the temporary file, beside the output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert list(out.parent.iterdir()) == []


_ENTRY = textwrap.dedent(
    """
    import signal
    from cirron_cli import app

    def fake_app(**_kw):
        print(signal.getsignal(signal.SIGTERM) is app._exit_for_signal)
        return 0

    app.app = fake_app
    app.main()
    """
)


def test_the_console_entry_point_turns_sigterm_into_an_exit() -> None:
    done = subprocess.run([sys.executable, "-c", _ENTRY], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_sigterm_the_parent_ignores_stays_ignored() -> None:
    code = "import signal; from cirron_cli.app import exit_on_sigterm; exit_on_sigterm(); " \
           "print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    assert done.stdout.strip() == "True", done.stderr
