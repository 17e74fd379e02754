"""Every test runs in its own working directory with no cirron configuration leaking in."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers (cbatch_check)

# The cirron_capture fixture users get from cirron.testing (tests/core/test_testing_helpers.py).
pytest_plugins = ["cirron.testing"]


@pytest.fixture(autouse=True)
def _isolated_cirron_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CIRRON_", "OTEL_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIRRON_CONFIG_FILE", str(tmp_path / "home-config.toml"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _compiled_batch_parser_agrees(tmp_path: Path) -> object:
    """Every batch file a test leaves in a spool under its tmp_path is read by the compiled parser
    (cirron/spool/_cbatch.c) exactly as by the msgspec decoder, or left to it (tests/cbatch_check.py)."""
    yield
    if importlib.util.find_spec("cirron.spool._cbatch") is None or importlib.util.find_spec("pyarrow") is None:
        return
    from cbatch_check import check_spools_under

    check_spools_under(tmp_path)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / ".cirron" / "spool"


@pytest.fixture(autouse=True)
def _internal_errors_fail_the_test(request: pytest.FixtureRequest) -> object:
    """A failure inside cirron fails the test that met it. The Python paths raise it again under
    pytest (:mod:`cirron._guard`); the compiled ones can only count it, so the counters of every
    live profiler are checked after the test. Tests named ``*internal_error*`` expect them."""
    from cirron import _cirron
    from cirron._guard import EXPECTED_IN_TEST_NAME

    before = {id(c): c._rec.internal_errors for c in list(_cirron._INSTANCES)}
    yield
    if EXPECTED_IN_TEST_NAME in request.node.name:
        return
    for c in list(_cirron._INSTANCES):
        new = c._rec.internal_errors - before.get(id(c), 0)
        assert new == 0, f"cirron counted {new} internal error(s): {c._rec.last_internal_error}"
