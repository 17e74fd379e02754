"""Flat spans-only CSV, written as the records come (memory holds one session or one chunk)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any

from cirron.export._common import atomic_file, attrs_text
from cirron.spool.sessions import Session

__all__ = ["CSV_COLUMNS", "write_csv"]

#: The seed's fifteen columns, then which writer (``cirron`` or ``other``) and version wrote the session.
CSV_COLUMNS = (
    "session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns", "gpu_ns",
    "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json", "writer", "sdk_version",
)


def _cell(v: object) -> object:
    return "" if v is None else v


def write_csv(items: Iterable[Any], path: str | os.PathLike[str]) -> int:
    """Write the spans of ``items`` (sessions, or chunks of :mod:`cirron.spool.stream`) to ``path``
    atomically, as they come; returns rows written."""
    rows = 0
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for sess in items:
            info = sess if isinstance(sess, Session) else sess.session
            sid, writer, version = info.id, _cell(info.writer), _cell(info.sdk_version)
            out = []
            for s in sess.spans:
                st, en = s.get("start_ns"), s.get("end_ns")
                out.append((
                    sid, s["id"], _cell(s.get("parent_id")), _cell(s.get("name")), _cell(s.get("index")),
                    _cell(st), _cell(en), en - st if (type(st) is int and type(en) is int) else "",
                    _cell(s.get("cpu_ns")), _cell(s.get("gpu_ns")), _cell(s.get("memory_peak_bytes")),
                    _cell(s.get("thread_id")), _cell(s.get("pid")), _cell(s.get("rank")),
                    attrs_text(s.get("attrs")), writer, version,
                ))
            w.writerows(out)
            rows += len(out)
    return rows
