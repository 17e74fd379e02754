"""Values the ``cirron ui`` pages show, built in process from a real spool (no server)."""

from __future__ import annotations

from pathlib import Path

from cirron import Cirron
from cirron.ui.data import SpoolData


def test_non_finite_summary_marks_read_as_the_spool_writes_them(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    c = Cirron(spool_dir=str(spool), flush_interval=60)
    c.profile()
    for value in (float("nan"), float("inf"), float("-inf"), 0.25):
        with c.scope("epoch"):
            c.mark("val_loss", value, kind="summary")
    c.shutdown()
    data = SpoolData([spool])
    [info] = data.sessions()
    [doc] = data.marks([info.id])["sessions"]
    assert [r["value"] for r in doc["summary"]] == ["NaN", "Infinity", "-Infinity", 0.25]
