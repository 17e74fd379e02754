"""Fixtures for snapshot, wrap and load tests (helpers live in snapshot_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshot_helpers import FakeCirron  # noqa: E402
from spool_factory import factory  # noqa: E402,F401


@pytest.fixture
def fake_cirron(tmp_path: Path) -> FakeCirron:
    return FakeCirron(tmp_path)


@pytest.fixture
def make_cirron(tmp_path: Path):
    def make(**config: Any) -> FakeCirron:
        return FakeCirron(tmp_path, **config)

    return make
