"""Real OTLP backends for the opt-in tests (Arize Phoenix, MLflow), each in a virtual environment
of its own so their many dependencies never touch the one cirron is tested in.

:func:`backend_python` makes the environment on first use (``python -m venv`` and
``pip install <name>==<version>``) under ``$CIRRON_TEST_VENVS`` (default
``~/.cache/cirron-test-venvs/<name>``) and reuses it while it holds that version.
:class:`BackendServer` starts the backend on 127.0.0.1 on a free port, waits (bounded) until it
answers, and stops it; :func:`run_in` runs a small script with the backend's own client and
returns what it prints as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

#: Bounds on the slow steps (a loaded two-core machine takes minutes to start Phoenix).
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 300
SCRIPT_TIMEOUT_S = 180


def venvs_dir() -> Path:
    return Path(os.environ.get("CIRRON_TEST_VENVS") or Path.home() / ".cache" / "cirron-test-venvs")


def _installed_version(python: Path, dist: str) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                       capture_output=True, text=True, timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def backend_python(name: str, dist: str, version: str) -> Path:
    """The interpreter of the venv ``name`` with ``dist==version`` installed (made when missing)."""
    home = venvs_dir() / name
    python = home / "bin" / "python"
    if _installed_version(python, dist) == version:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=300)
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{dist}=={version}"],
                       capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if r.returncode != 0 or _installed_version(python, dist) != version:
        pytest.fail(f"could not install {dist}=={version} into {home}: {r.stderr.strip()[-2000:]}")
    return python


def _backend_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The test's environment without what points Python at cirron's tree, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, **(extra or {})}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - a 127.0.0.1 URL we built
            return 200 <= resp.status < 300
    except OSError:
        return False


class BackendServer:
    """``argv`` run in its own process group, ready once ``ready_url`` answers 2xx; stopped on exit."""

    def __init__(self, argv: Sequence[str], ready_url: str, log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv, self.ready_url, self.log = list(argv), ready_url, log
        self.env = _backend_env(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BackendServer:
        out = self.log.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(self.ready_url):
            if self.proc.poll() is not None:
                self._fail(f"exited with code {self.proc.returncode} before answering")
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"did not answer {self.ready_url} within {START_TIMEOUT_S} s")
            time.sleep(0.5)
        return self

    def _fail(self, why: str) -> None:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        pytest.fail(f"{' '.join(self.argv[:2])} {why}; its log ends with:\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in(python: Path, script: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """Run ``script`` with ``python`` (a backend's venv); it prints one JSON document, returned parsed."""
    r = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True,
                       timeout=SCRIPT_TIMEOUT_S, env=_backend_env(env))
    if r.returncode != 0:
        pytest.fail(f"backend client script failed ({r.returncode}): {r.stderr.strip()[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
