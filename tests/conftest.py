"""Every test runs in its own working directory with no cirron configuration leaking in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cirron_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CIRRON_", "OTEL_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(tmp_path / "home-config.toml"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cirron" / "spool"
