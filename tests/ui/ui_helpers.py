"""Helpers of the ``cirron ui`` tests: spools made by real runs, a real server process."""

from __future__ import annotations

import os
import queue
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
    """``cirron ui --port 0`` as a subprocess: the URL is read from its first lines."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cirron_cli.app", "ui", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        self.lines: list[str] = []
        self.url = self._read_url()

    def _read_url(self) -> str:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self._rest = lines
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if " open http" in line:
                return line.split(" open ", 1)[1].split()[0].rstrip("/")
        self.proc.kill()
        err = self.proc.stderr.read()
        raise AssertionError(f"cirron ui did not print its URL: {''.join(self.lines)}{err}")

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
        err = self.proc.stderr.read()
        while (line := self._rest.get(timeout=10)) is not None:
            self.lines.append(line)
        return self.proc.returncode, "".join(self.lines), err
