"""Helpers of the ``cirron ui`` tests: spools made by real runs, a real server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT = 90


def make_run(kind: str, where: Path, **env: str) -> Path:
    """Run ``make_runs.py kind`` in its own process (bounded); return the spool it wrote."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIRRON_")}
    full_env.update(env)
    subprocess.run([sys.executable, str(HERE / "make_runs.py"), kind, str(where)], env=full_env, check=True,
                   timeout=RUN_TIMEOUT, capture_output=True)
    return where / ".cirron" / "spool"


@dataclass
class Runs:
    train: Path
    inference: Path
    ranks: Path


class UIServer:
    """``cirron ui --port 0`` as a subprocess: the URL is read from its first lines; its stdout
    and stderr are collected as they come."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cirron_cli.app", "ui", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env=None if env is None else {**os.environ, **env})
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, args=(pipe, out), daemon=True)
                       for pipe, out in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err_lines))]
        for t in self._pumps:
            t.start()
        self.url = self._read_url()

    @staticmethod
    def _pump(pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line)

    def wait_for(self, what: str, text: str, timeout: float = 30) -> None:
        """Until ``text`` is in the server's ``what`` ("stdout" or "stderr"), bounded."""
        lines = self.lines if what == "stdout" else self.err_lines
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(lines)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                for t in self._pumps:
                    t.join(timeout=5)
                if any(text in line for line in list(lines)):
                    return
                raise AssertionError(f"cirron ui never wrote {text!r} to {what}: "
                                     f"{''.join(self.lines)}{''.join(self.err_lines)}")
            time.sleep(0.02)

    def _read_url(self) -> str:
        try:
            self.wait_for("stdout", " open http")
        except AssertionError:
            self.proc.kill()
            raise
        line = next(line for line in self.lines if " open http" in line)
        return line.split(" open ", 1)[1].split()[0].rstrip("/")

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C (SIGINT), as a user would; returns (exit code, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("cirron ui did not stop on SIGINT within 15 s") from None
        for t in self._pumps:
            t.join(timeout=10)
        return self.proc.returncode, "".join(self.lines), "".join(self.err_lines)
