"""Fixtures of the ``cirron ui`` tests: spools made by real runs, a real ``cirron ui`` over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="cirron ui needs the 'ui' extra: pip install 'cirron-trace[ui]'")
pytest.importorskip("uvicorn", reason="cirron ui needs the 'ui' extra: pip install 'cirron-trace[ui]'")
pytest.importorskip("plotly", reason="cirron ui needs the 'ui' extra: pip install 'cirron-trace[ui]'")

from spool_factory import SpoolFactory
from ui_helpers import Runs, UIServer, make_run, serve_and_record


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[SpoolFactory]:
    """A spool written record by record, in a directory of its own under the test's tmp dir."""
    f = SpoolFactory(tmp_path / "spool-factory")
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    pytest.importorskip("torch")
    pytest.importorskip("fastapi")
    base = tmp_path_factory.mktemp("ui-runs")
    train = make_run("train", base / "train")
    served = serve_and_record(base / "inference")
    for rank in (0, 1):
        ranks = make_run("rank", base / "ranks", RANK=str(rank), WORLD_SIZE="2", CIRRON_RUN_ID="run-42")
    return Runs(train, served, ranks)


@pytest.fixture(scope="session")
def ui_server(runs: Runs) -> Iterator[UIServer]:
    server = UIServer("--spool", str(runs.train), "--spool", str(runs.inference), "--spool", str(runs.ranks))
    try:
        yield server
    finally:
        server.stop()
