"""Merged, deduped JSON in the shape of one spool batch."""

from __future__ import annotations

import os
from collections.abc import Iterable

import orjson

from cirron._schema import MARK_FIELDS, SCHEMA_VERSION, SNAPSHOT_FIELDS, SPAN_FIELDS
from cirron._version import __version__
from cirron.export._common import atomic_file, json_scalar
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session

__all__ = ["to_batch_dict", "write_json"]


def _clean(rec: dict, fields: tuple[str, ...]) -> dict:
    out = {f: rec.get(f) for f in fields}
    for k in ("attrs", "stats"):
        if k in out and isinstance(out[k], (dict, list)):
            out[k] = _limit_depth(out[k], 128)
    return out


def to_batch_dict(sessions: Iterable[Session]) -> dict:
    """``{schema_version, sdk_version, spans, marks, snapshots}`` for the given sessions."""
    spans, marks, snaps = [], [], []
    for s in sessions:
        spans.extend(_clean(x, SPAN_FIELDS) for x in sorted(s.spans, key=lambda r: (r.get("start_ns") or 0)))
        for m in s.marks:
            c = _clean(m, MARK_FIELDS)
            c["value"] = json_scalar(c["value"])
            marks.append(c)
        snaps.extend(_clean(x, SNAPSHOT_FIELDS) for x in s.snapshots)
    return {"schema_version": SCHEMA_VERSION, "sdk_version": __version__, "spans": spans, "marks": marks,
            "snapshots": snaps}


def write_json(sessions: Iterable[Session], path: str | os.PathLike[str]) -> int:
    """Write the merged batch to ``path`` atomically; returns the number of spans written."""
    doc = to_batch_dict(sessions)
    with atomic_file(path) as tmp:
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 if len(doc["spans"]) < 10_000 else 0))
    return len(doc["spans"])
