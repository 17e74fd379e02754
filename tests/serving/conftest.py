from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_helpers import Req, read_requests  # noqa: E402

import cirron  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CIRRON_", "OTEL_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIRRON_NO_PROJECT_FILE", "1")
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(tmp_path / "home-config.toml"))


class Profiled:
    """A running ``Cirron`` with its own spool; ``requests()`` stops it and reads the spool."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.c = cirron.Cirron(spool_dir=spool, flush_interval=60.0)
        self.c.profile()

    def requests(self) -> list[Req]:
        self.c.shutdown()
        return read_requests(self.spool)[0]

    def spans(self) -> list[dict]:
        self.c.shutdown()
        return read_requests(self.spool)[1]


@pytest.fixture
def prof(tmp_path: Path) -> Iterator[Profiled]:
    p = Profiled(tmp_path / "spool")
    yield p
    p.c.shutdown()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
