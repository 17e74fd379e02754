"""Reading back what the SDK wrote, straight from the batch files (spec section 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BATCH_RE = re.compile(r"^\d+-[0-9a-f]{32}\.json$")


def batch_files(spool_dir: Path) -> list[Path]:
    if not spool_dir.is_dir():
        return []
    files = [p for p in spool_dir.iterdir() if BATCH_RE.match(p.name)]
    return sorted(files, key=lambda p: int(p.name.split("-")[0]))


def read_spool(spool_dir: Path) -> dict[str, Any]:
    """Merged records: spans deduped preferring the closed version, marks last-write-wins."""
    spans: dict[str, dict] = {}
    marks: dict[str, dict] = {}
    snapshots: dict[str, dict] = {}
    batches = []
    for path in batch_files(spool_dir):
        batch = json.loads(path.read_text())
        batches.append(batch)
        for s in batch["spans"]:
            if s["id"] not in spans or s["end_ns"] is not None:
                spans[s["id"]] = s
        for m in batch["marks"]:
            marks[m["id"]] = m
        for r in batch["snapshots"]:
            snapshots[r["id"]] = r
    return {"batches": batches, "spans": spans, "marks": marks, "snapshots": snapshots}


def by_name(spans: dict[str, dict], name: str) -> list[dict]:
    return sorted((s for s in spans.values() if s["name"] == name), key=lambda s: (s["start_ns"], s["index"] or 0))
