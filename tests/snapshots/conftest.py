"""Fixtures for snapshot, wrap and load tests (helpers live in snapshot_helpers.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshot_helpers import FakeCirron  # noqa: E402
from spool_factory import factory  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cirron configuration leaks in; each test runs in its own working directory."""
    for name in list(os.environ):
        if name.startswith(("CIRRON_", "OTEL_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(tmp_path / "home-config.toml"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cirron" / "spool"


@pytest.fixture
def fake_cirron(tmp_path: Path) -> FakeCirron:
    return FakeCirron(tmp_path)


@pytest.fixture
def make_cirron(tmp_path: Path):
    def make(**config: Any) -> FakeCirron:
        return FakeCirron(tmp_path, **config)

    return make
