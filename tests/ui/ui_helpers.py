"""Helpers of the ``cirron ui`` tests: spools made by real runs, a real server process."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT = 90


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of a run or server started here: the test's, less its ``CIRRON_*`` settings."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CIRRON_")}, **extra}


def make_run(kind: str, where: Path, **env: str) -> Path:
    """Run ``make_runs.py kind`` in its own process (bounded); return the spool it wrote."""
    subprocess.run([sys.executable, str(HERE / "make_runs.py"), kind, str(where)], env=_child_env(**env), check=True,
                   timeout=RUN_TIMEOUT, capture_output=True)
    return where / ".cirron" / "spool"


class LiveRun:
    """``make_runs.py live`` in its own process: a run that keeps writing until stopped."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.spool = where / ".cirron" / "spool"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "make_runs.py"), "live", str(where)], env=_child_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        (self.where / "stop").touch()
        try:
            _out, err = self.proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("the live run did not stop") from None
        assert self.proc.returncode == 0, err


@dataclass
class Sent:
    """One request the test client sent to the served app, with what it knows of it: the server
    took at least ``min_ns`` (its sleeps) and at most ``client_ns`` (the client's round trip)."""
    request_id: str
    kind: str  # "predict" or "stream"
    tokens: int
    min_ns: int
    client_ns: int
    min_ttft_ns: int | None = None  # streams: the sleep before the first token
    client_ttft_ns: int | None = None  # streams: until the client had the first token


@dataclass
class Served:
    spool: Path
    sent: list[Sent]
    exit_code: int
    stderr: str


def _predict(client, delay_ms: float, tokens: int) -> Sent:
    t = time.perf_counter_ns()
    r = client.post("/predict", json={"delay_ms": delay_ms, "tokens": tokens})
    took = time.perf_counter_ns() - t
    r.raise_for_status()
    return Sent(r.headers["x-request-id"], "predict", tokens, int(delay_ms * 1e6), took)


def _stream(client, tokens: int, first_ms: float, gap_ms: float) -> Sent:
    t = time.perf_counter_ns()
    first = None
    got = 0
    with client.stream("GET", "/stream", params={"tokens": tokens, "first_ms": first_ms, "gap_ms": gap_ms}) as r:
        r.raise_for_status()
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
                if first is None:
                    first = time.perf_counter_ns() - t
    took = time.perf_counter_ns() - t
    assert got == tokens, (got, tokens)
    return Sent(rid, "stream", tokens, int((first_ms + gap_ms * (tokens - 1)) * 1e6), took,
                int(first_ms * 1e6), first)


def serve_and_record(where: Path) -> Served:
    """Run ``serve_app.py`` (FastAPI under uvicorn, ``@ci.inference``) in its own process, send it
    plain and streamed requests from four threads, stop it with SIGTERM as a process manager
    would, and return its spool with what the client saw."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    proc = subprocess.Popen([sys.executable, str(HERE / "serve_app.py"), str(where)], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: first.put(proc.stdout.readline()), daemon=True).start()
        try:
            line = first.get(timeout=RUN_TIMEOUT)
        except queue.Empty:
            raise AssertionError("serve_app.py did not say its port") from None
        assert line.startswith("port "), line + proc.stderr.read()
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:  # the port is bound before uvicorn (and the lifespan) starts answering
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "serve_app.py never answered"
                time.sleep(0.05)
            jobs = [(_predict, 2 + i % 6, 4 + i % 9) for i in range(60)]
            jobs += [(_predict, ms, 16) for ms in (80, 150, 300)]  # the slowest three, in this order
            jobs += [(_stream, 5 + i % 4, 10 + i, 1) for i in range(20)]
            with ThreadPoolExecutor(4) as pool:
                sent = list(pool.map(lambda job: job[0](client, *job[1:]), jobs))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return Served(where / ".cirron" / "spool", sent, proc.returncode, err)


@dataclass
class Runs:
    train: Path
    served: Served
    ranks: Path

    @property
    def inference(self) -> Path:
        return self.served.spool


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


@contextmanager
def serving(data: Any) -> Iterator[str]:
    """A real uvicorn over ``data`` (a :class:`cirron.ui.data.SpoolData`) on a free port of
    127.0.0.1, in a thread; its base URL."""
    import uvicorn

    from cirron.ui.app import create_app
    from cirron.ui.server import bind, url_for

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(data), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        started = threading.Event()
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            started.wait(0.01)
        yield url_for(sock, "127.0.0.1").rstrip("/")
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
