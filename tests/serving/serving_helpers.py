"""Shared helpers for the serving tests: read request spans back from a spool, run servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from netutil import free_port  # noqa: F401  (re-exported for the server tests)

from cirron.spool import load_sessions

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Req:
    """One ``request`` span read back from the spool, with the marks attached to it."""

    span: dict
    marks: list[dict] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.span["attrs"]["request_id"]

    @property
    def attrs(self) -> dict:
        return self.span["attrs"]

    @property
    def summary(self) -> dict[str, Any]:
        return {m["name"]: m["value"] for m in self.marks if m["kind"] == "summary"}

    def points(self, name: str) -> list[Any]:
        return [m["value"] for m in self.marks if m["kind"] == "point" and m["name"] == name]


def read_requests(spool_dir: str | os.PathLike[str]) -> tuple[list[Req], list[dict]]:
    """``(request spans in start order, every span)`` of every session in ``spool_dir``."""
    spans: list[dict] = []
    marks: list[dict] = []
    for session in load_sessions(spool_dir):
        spans.extend(session.spans)
        marks.extend(session.marks)
    by_id = {s["id"]: Req(s) for s in spans if s["name"] == "request"}
    for m in marks:
        r = by_id.get(m["span_id"])
        if r is not None:
            r.marks.append(m)
    reqs = sorted(by_id.values(), key=lambda r: r.span["start_ns"])
    return reqs, spans



def server_env(spool_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRRON_", "OTEL_"))}
    env.update({"CIRRON_SPOOL_DIR": str(spool_dir), "CIRRON_NO_PROJECT_FILE": "1",
                "CIRRON_FLUSH_INTERVAL": "0.2", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


class Server:
    def __init__(self, proc: subprocess.Popen, base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def run_server(args: Sequence[str], spool_dir: Path, log: Path, *, port: int, ready_path: str = "/health",
               stop_signal: int = signal.SIGINT, timeout: float = 30.0, **env: str) -> Iterator[Server]:
    """Start ``python <args>`` listening on ``port``; poll ``ready_path`` until it answers; stop
    it with ``stop_signal`` on exit (so the app's shutdown flushes the spool) and wait for it."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=spool_dir.parent, env=server_env(spool_dir, **env),
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    server = Server(proc, base, log)
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
                try:
                    if client.get(base + ready_path).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready after {timeout}s:\n{server.output()}")
                time.sleep(0.05)  # polling interval while the process boots (no fixed wait)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_signal)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
