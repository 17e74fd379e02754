"""`ci.snapshot` through the public surface: records in the spool, a blob on disk, health()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")


def test_ci_snapshot_writes_records_and_blobs(tmp_path: Path) -> None:
    from cirron import Cirron

    c = Cirron(spool_dir=tmp_path / ".cirron" / "spool", snapshots="full", flush_interval=60)
    c.profile()
    for _ in c.epochs(range(2)):
        c.snapshot({"layer.w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert c.health()["snapshots"]["errors"] == 0
    c.shutdown()
    records = []
    for path in (tmp_path / ".cirron" / "spool").glob("*.json"):
        records += json.loads(path.read_text())["snapshots"]
    assert len(records) == 2 and {r["tensor"] for r in records} == {"layer.w"}
    rec = records[0]
    assert rec["stats"]["numel"] == 6 and rec["stats"]["max"] == 5.0 and rec["shape"] == [2, 3]
    blob = tmp_path / ".cirron" / rec["blob_uri"]
    assert blob.is_file()
    from cirron.safetensors_io import read_header

    header = read_header(blob)
    assert "layer.w" in str(header)
