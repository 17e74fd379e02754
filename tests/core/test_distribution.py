"""The distribution name: ``cirron`` on the package index is someone else's project, so ours is
``cirron-trace``; pyproject, every install hint and the docs agree (import name and command stay)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cirron._errors import CirronDependencyError
from cirron._version import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_names_the_distribution() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "cirron-trace"
    assert project["scripts"] == {"cirron": "cirron_cli.app:run"}


def test_install_hints_use_the_distribution_name() -> None:
    assert "pip install 'cirron-trace[otlp]'" in str(CirronDependencyError("opentelemetry-proto", "OTLP", "otlp"))


def test_no_doc_or_source_tells_users_to_install_the_other_project() -> None:
    wrong = re.compile(r"pip install\s+['\"]?cirron(\[|['\"\s]|$)", re.M)
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "cirron").rglob("*.py")),
             *sorted((ROOT / "cli").rglob("*.py"))]
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in wrong.finditer(p.read_text())]
    assert not offenders, offenders
