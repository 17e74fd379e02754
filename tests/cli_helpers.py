"""The in-process ``cirron`` runner the CLI tests share: a traceback or a stray exception fails the test."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner, Result

from cirron_cli.app import app

runner = CliRunner()


def run_cli(*args: str, **kw: Any) -> Result:
    r = runner.invoke(app, list(args), **kw)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r
