"""`cirron traces export` does not import pandas (pyarrow would, on its first conversion), and
pyarrow still imports it when a use needs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

_SCRIPT = """
import sys
sys.argv = ["cirron", "traces", "export", "--spool", sys.argv[1], "--format", sys.argv[2], "--output", sys.argv[3]]
from cirron_cli.app import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("pandas" in sys.modules)
import pyarrow as pa
pa.table({"a": [1]}).to_pandas()  # needs pandas: imported now
print("pandas" in sys.modules)
"""


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_export_leaves_pandas_unimported(factory, tmp_path, fmt):
    factory.session()
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(factory.spool_dir), fmt, str(tmp_path / f"out.{fmt}")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "True"]
