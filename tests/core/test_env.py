"""``ci.env()`` loads ``./.env`` once through python-dotenv, never over a real variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cirron import _env


def test_dotenv_file_fills_in_without_overriding(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("dotenv")
    (tmp_path / ".env").write_text('CIRRON_TEST_FROM_FILE={"a": 1}\nCIRRON_TEST_REAL=file\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRRON_TEST_REAL", "process")
    monkeypatch.delenv("CIRRON_TEST_FROM_FILE", raising=False)
    monkeypatch.setattr(_env, "_dotenv_loaded", False)
    try:
        assert _env.env("CIRRON_TEST_FROM_FILE") == {"a": 1}
        assert _env.env("CIRRON_TEST_REAL") == "process"
    finally:
        import os

        os.environ.pop("CIRRON_TEST_FROM_FILE", None)
