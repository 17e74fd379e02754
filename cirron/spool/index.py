"""Per-spool session summaries (placeholder: a full summary read; the index comes next)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cirron.spool.reader import WarningCallback
from cirron.spool.sessions import load_spool

__all__ = ["SpoolSummary", "summarize_spool"]


@dataclass
class SpoolSummary:
    dir: Path
    sessions: list
    file_sessions: dict[Path, set[str | None]]


def summarize_spool(spool_dir: str | os.PathLike[str], on_warning: WarningCallback, *,
                    use_index: bool = True) -> SpoolSummary:
    from cirron.spool.catalog import info_from_session

    d = Path(spool_dir)
    sp = load_spool(d, on_warning, fields="summary")
    return SpoolSummary(d, [info_from_session(s, d) for s in sp.sessions], sp.file_sessions)
