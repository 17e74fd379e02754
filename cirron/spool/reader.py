"""Find and read spool batch files, one at a time, without trusting them.

A batch file is whatever lies under ``.cirron/spool/`` with a name matching
:data:`cirron._schema.BATCH_NAME_RE`. Files are listed in ``created_ns`` order (then by
batch id, so the order is total). Reading one never raises for bad content: a file that is
not a JSON object, is truncated, binary, empty, a directory or a symlink is reported through
``on_warning`` (one line per file) and skipped, so the rest of the spool is still read.

What comes back from :func:`read_batch` is the parsed object with its records normalised in
place: records that are not objects or have no usable ``id`` are dropped, known integer
fields are coerced to ``int`` (or ``None`` when they cannot be), and mark values are decoded
per ``value_type`` (``"NaN"`` with ``value_type: "float"`` becomes ``float('nan')``).
Unknown fields stay in the dicts; consumers pick the fields they know.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cirron._schema import (
    BATCH_NAME_RE,
    MARK_INT_FIELDS,
    SCHEMA_VERSION,
    SNAPSHOT_INT_FIELDS,
    SPAN_INT_FIELDS,
    decode_mark_value,
)

__all__ = [
    "BatchFile",
    "WarningCallback",
    "coerce_int",
    "list_batch_files",
    "iter_batches",
    "read_batch",
    "safe_dumps",
]

_log = logging.getLogger("cirron.spool")

WarningCallback = Callable[[str], None]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: Containers nested deeper than this inside a record are replaced by a placeholder string
#: when a file is too deep for the fast parser (orjson stops at 1024 levels).
MAX_NESTING = 64
_TOO_DEEP = "<nested too deep>"


def _default_warning(message: str) -> None:
    _log.warning("%s", message)


@dataclass(frozen=True)
class BatchFile:
    """One batch file on disk, as named (``<created_ns>-<batch_id>.json``)."""

    path: Path
    created_ns: int
    batch_id: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


def list_batch_files(
    spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None
) -> list[BatchFile]:
    """Regular files in ``spool_dir`` whose names match the batch pattern, oldest first.

    Directories and symlinks that carry a batch name are skipped with a warning (a symlink
    could point anywhere; the writer never creates one). A missing directory is an empty spool.
    """
    warn = on_warning or _default_warning
    out: list[BatchFile] = []
    try:
        it = os.scandir(spool_dir)
    except (FileNotFoundError, NotADirectoryError):
        return out
    except OSError as exc:
        warn(f"cannot read spool directory {spool_dir}: {exc.strerror or exc}")
        return out
    with it:
        for entry in it:
            m = BATCH_NAME_RE.match(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                warn(f"skipping {entry.name}: {exc.strerror or exc}")
                continue
            if stat.S_ISLNK(st.st_mode):
                warn(f"skipping {entry.name}: a symlink, not a batch file")
                continue
            if not stat.S_ISREG(st.st_mode):
                warn(f"skipping {entry.name}: not a regular file")
                continue
            out.append(BatchFile(Path(entry.path), int(m.group(1)), m.group(2), st.st_size))
    out.sort(key=lambda b: (b.created_ns, b.batch_id))
    return out


def coerce_int(value: Any) -> int | None:
    """A known integer field as an ``int`` in int64 range, or ``None`` when it cannot be one."""
    t = type(value)
    if t is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if value is None or t is bool:
        return None
    if t is str:
        s = value.strip()
        try:
            v = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            if not math.isfinite(f) or f != int(f):
                return None
            v = int(f)
        return v if _INT64_MIN <= v <= _INT64_MAX else None
    if t is float:
        if not math.isfinite(value) or value != int(value):
            return None
        v = int(value)
        return v if _INT64_MIN <= v <= _INT64_MAX else None
    return None


def _coerce_fields(rec: dict, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = rec.get(f)
        if v is not None and type(v) is not int:
            rec[f] = coerce_int(v)
        elif v is not None and not (_INT64_MIN <= v <= _INT64_MAX):
            rec[f] = None


def _valid_id(v: Any) -> bool:
    return type(v) is str and v != ""


def _clean_records(raw: Any, int_fields: tuple[str, ...]) -> tuple[list[dict], int]:
    """Keep dict records with a non-empty string id; coerce int fields. Returns (records, dropped)."""
    if not isinstance(raw, list):
        return [], (0 if raw is None else 1)
    out = []
    dropped = 0
    for rec in raw:
        if type(rec) is not dict or not _valid_id(rec.get("id")):
            dropped += 1
            continue
        for f in int_fields:
            v = rec.get(f)
            if v is not None and (type(v) is not int or not (_INT64_MIN <= v <= _INT64_MAX)):
                rec[f] = coerce_int(v)
        out.append(rec)
    return out, dropped


def _truncate_deep(text: str, limit: int = MAX_NESTING) -> str:
    """Replace every JSON container nested deeper than ``limit`` by a placeholder string.

    Works on the text (a small state machine aware of strings and escapes), so it never
    recurses however deep the input goes.
    """
    out: list[str] = []
    depth = 0
    i = 0
    n = len(text)
    start = 0  # start of the pending chunk to copy
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n:
                c2 = text[i]
                if c2 == "\\":
                    i += 2
                    continue
                if c2 == '"':
                    break
                i += 1
            i += 1
            continue
        if c in "[{":
            depth += 1
            if depth > limit:
                # Skip the whole container, then emit a placeholder for it.
                out.append(text[start:i])
                d = 0
                while i < n:
                    c3 = text[i]
                    if c3 == '"':
                        i += 1
                        while i < n:
                            c4 = text[i]
                            if c4 == "\\":
                                i += 2
                                continue
                            if c4 == '"':
                                break
                            i += 1
                    elif c3 in "[{":
                        d += 1
                    elif c3 in "]}":
                        d -= 1
                        if d == 0:
                            break
                    i += 1
                out.append(json.dumps(_TOO_DEEP))
                i += 1
                start = i
                depth -= 1
                continue
        elif c in "]}":
            depth -= 1
        i += 1
    out.append(text[start:])
    return "".join(out)


def _parse(data: bytes) -> Any:
    """Parse strict JSON fast; fall back for too-deep nesting and out-of-range numbers."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "depth" in msg or "recursion" in msg.lower():
            text = data.decode("utf-8")
            return orjson.loads(_truncate_deep(text))
        if "number" in msg:
            # e.g. 1e400: the stdlib parser turns it into inf instead of failing.
            return json.loads(data)
        raise


def read_batch(batch: BatchFile | str | os.PathLike[str], on_warning: WarningCallback | None = None) -> dict | None:
    """Read and normalise one batch file, or return ``None`` (after one warning) if it is unusable."""
    warn = on_warning or _default_warning
    path = batch.path if isinstance(batch, BatchFile) else Path(batch)
    name = path.name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                warn(f"skipping {name}: not a regular file")
                return None
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read()
        finally:
            os.close(fd)
    except FileNotFoundError:
        warn(f"skipping {name}: removed while reading")
        return None
    except OSError as exc:
        warn(f"skipping {name}: {exc.strerror or exc}")
        return None
    if not data.strip():
        warn(f"skipping {name}: empty file")
        return None
    try:
        obj = _parse(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        warn(f"skipping {name}: not valid JSON (corrupt or truncated)")
        return None
    if type(obj) is not dict:
        warn(f"skipping {name}: expected a JSON object, found {_json_type(obj)}")
        return None
    version = obj.get("schema_version")
    if type(version) is int and version > SCHEMA_VERSION:
        warn(
            f"{name} has schema_version {version}, newer than this reader's {SCHEMA_VERSION}; "
            "reading it best-effort"
        )
    spans, d1 = _clean_records(obj.get("spans"), SPAN_INT_FIELDS)
    marks, d2 = _clean_records(obj.get("marks"), MARK_INT_FIELDS)
    snaps, d3 = _clean_records(obj.get("snapshots"), SNAPSHOT_INT_FIELDS)
    for m in marks:
        vt = m.get("value_type")
        if vt == "float":
            m["value"] = decode_mark_value(m.get("value"), vt)
    if d1 or d2 or d3:
        warn(f"{name}: ignored {d1 + d2 + d3} malformed record(s)")
    obj["spans"], obj["marks"], obj["snapshots"] = spans, marks, snaps
    sid = obj.get("session_id")
    obj["session_id"] = sid if _valid_id(sid) else None
    if type(obj.get("resource")) is not dict:
        obj["resource"] = {}
    sv = obj.get("sdk_version")
    obj["sdk_version"] = sv if type(sv) is str else None
    return obj


def _json_type(obj: Any) -> str:
    if isinstance(obj, list):
        return "a JSON array"
    if isinstance(obj, str):
        return "a JSON string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"


def iter_batches(
    spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None
) -> Iterator[tuple[BatchFile, dict]]:
    """Yield ``(file, batch)`` for every readable batch file, in ``created_ns`` order."""
    for bf in list_batch_files(spool_dir, on_warning):
        batch = read_batch(bf, on_warning)
        if batch is not None:
            yield bf, batch


def _limit_depth(value: Any, limit: int = MAX_NESTING) -> Any:
    """A copy of ``value`` with containers below ``limit`` levels replaced by a placeholder (iterative)."""
    if not isinstance(value, (dict, list)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, (dict, list)):
                if depth >= limit:
                    nv: Any = _TOO_DEEP
                else:
                    nv = {} if isinstance(v, dict) else []
                    stack.append((v, nv, depth + 1))
            elif isinstance(v, float) and not math.isfinite(v):
                nv = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
            else:
                nv = v
            if isinstance(dst, dict):
                dst[str(k)] = nv
            else:
                dst.append(nv)
    return root


def safe_dumps(value: Any) -> bytes:
    """Strict JSON bytes for any parsed value; never fails on depth, non-finite floats or odd keys."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return orjson.dumps(_limit_depth(value), default=str)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(str(value))
