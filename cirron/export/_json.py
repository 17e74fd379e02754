"""Merged, deduped JSON in the shape of one spool batch."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

import orjson

from cirron._schema import MARK_FIELDS, SCHEMA_VERSION, SNAPSHOT_FIELDS, SPAN_FIELDS
from cirron._version import __version__
from cirron.export._common import atomic_file, json_scalar
from cirron.spool.reader import _limit_depth

__all__ = ["write_json"]


def _clean(rec: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: rec.get(f) for f in fields}


def _dumps(rec: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(rec)
    except (TypeError, orjson.JSONEncodeError):  # nested too deep for the encoder
        for k in ("attrs", "stats"):
            if isinstance(rec.get(k), (dict, list)):
                rec[k] = _limit_depth(rec[k], 128)
        return orjson.dumps(rec, default=str)


def write_json(items: Iterable[Any], path: str | os.PathLike[str]) -> int:
    """Write the merged batch to ``path`` atomically as the records come; returns the number of spans.

    ``items`` are sessions or chunks (:mod:`cirron.spool.stream`); spans are in start order within
    each. Spans go straight to the file; marks and snapshots wait in two unlinked temporary files
    beside it until everything is read, so memory holds one session or chunk whatever the total."""
    from cirron.export import _write_chunked

    head = orjson.dumps({"schema_version": SCHEMA_VERSION, "sdk_version": __version__})[:-1]
    n = m = k = 0
    parent = os.path.dirname(os.path.abspath(path))
    with atomic_file(path) as tmp, open(tmp, "wb") as fh, \
            tempfile.TemporaryFile(dir=parent) as marks_fh, tempfile.TemporaryFile(dir=parent) as snaps_fh:
        fh.write(head + b',"spans":[')
        # which writer and version wrote each session: "sessions", after the records
        writers: dict[str, dict[str, Any]] = {}
        for s in items:
            info = getattr(s, "session", s)  # a chunk's session summary, or the session itself
            writers.setdefault(info.id, {"session_id": info.id, "writer": info.writer, "sdk_version": info.sdk_version})
            spans = sorted(s.spans, key=lambda r: (r.get("start_ns") or 0))
            n += _write_chunked_after(fh, n, (_dumps(_clean(x, SPAN_FIELDS)) for x in spans), _write_chunked)
            m += _write_chunked_after(marks_fh, m, (_dumps(_mark(x)) for x in s.marks), _write_chunked)
            k += _write_chunked_after(snaps_fh, k, (_dumps(_clean(x, SNAPSHOT_FIELDS)) for x in s.snapshots),
                                      _write_chunked)
        for label, side in ((b'],"marks":[', marks_fh), (b'],"snapshots":[', snaps_fh)):
            fh.write(label)
            side.seek(0)
            shutil.copyfileobj(side, fh, 1 << 20)
        fh.write(b'],"sessions":' + orjson.dumps(list(writers.values())) + b"}")
    return n


def _mark(m: Any) -> dict[str, Any]:
    c = _clean(m, MARK_FIELDS)
    c["value"] = json_scalar(c["value"])
    return c


def _write_chunked_after(fh: Any, already: int, items: Any, write_chunked: Any) -> int:
    """Continue a JSON array that already has ``already`` members."""
    first = True

    def gen():  # prefix the first member with a comma when the array is not empty
        nonlocal first
        for it in items:
            if first and already:
                first = False
                yield b"," + it
            else:
                first = False
                yield it

    return write_chunked(fh, gen())
