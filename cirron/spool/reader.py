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
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import orjson

from cirron._redact import install_log_filter
from cirron._safeopen import NotRegularFile, open_regular
from cirron._schema import (
    BATCH_NAME_RE,
    MARK_INT_FIELDS,
    SCHEMA_VERSION,
    SNAPSHOT_INT_FIELDS,
    SPAN_INT_FIELDS,
    decode_mark_value,
    encode_float,
)
from cirron.spool.tolerant import normalize_mark, normalize_snapshot

__all__ = [
    "BatchFile",
    "MarkRecord",
    "SnapshotRecord",
    "SpanRecord",
    "WarningCallback",
    "coerce_int",
    "iter_batches",
    "list_batch_files",
    "parse_batch",
    "read_batch",
    "read_error",
    "safe_dumps",
    "warn_newer_schema",
]

_log = install_log_filter(logging.getLogger("cirron.spool"))

WarningCallback = Callable[[str], None]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: Containers nested deeper than this inside a record are replaced by a placeholder string
#: when a file is too deep for the fast parser (orjson stops at 1024 levels).
MAX_NESTING = 64
_TOO_DEEP = "<nested too deep>"


def default_warning(message: str) -> None:
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
    warn = on_warning or default_warning
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


def _valid_id(v: Any) -> bool:
    return type(v) is str and v != ""


def _clean_records(raw: Any, int_fields: tuple[str, ...], rec_type: type) -> tuple[list[Any], int]:
    """Keep dict records with a non-empty string id; coerce int fields; convert to ``rec_type``.
    Returns (records, dropped)."""
    if not isinstance(raw, list):
        return [], (0 if raw is None else 1)
    out: list[Any] = []
    dropped = 0
    for rec in raw:
        if type(rec) is not dict or not _valid_id(rec.get("id")):
            dropped += 1
            continue
        for f in int_fields:
            v = rec.get(f)
            if v is not None and (type(v) is not int or not (_INT64_MIN <= v <= _INT64_MAX)):
                rec[f] = coerce_int(v)
        for k in ("parent_id", "span_id"):
            if k in rec and not _valid_id(rec[k]):
                rec[k] = None
        if rec_type is SpanExport or rec_type is MarkExport or rec_type is SpanSummary:
            a = rec.get("attrs")
            rec["attrs"] = msgspec.Raw(b"{}" if a is None else safe_dumps(a))
        try:
            out.append(msgspec.convert(rec, rec_type))
        except msgspec.ValidationError:
            dropped += 1
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


#: A JSON text's ``\\`` escapes (matched so that a ``\u`` after one is not read as an escape), its
#: surrogate pairs, and its lone surrogate escapes, the only ones of the three that are 6 bytes.
_SURROGATE_ESCAPES = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _replace_lone_surrogates(data: bytes) -> bytes:
    """``data`` with each escaped lone UTF-16 surrogate (``"\\ud800"``, valid JSON but no
    character) replaced by U+FFFD, as a decoder that replaces errors would read it: strings holding
    them cannot be encoded as UTF-8, so every export and view would fail on them."""
    return _SURROGATE_ESCAPES.sub(lambda m: b"\\ufffd" if len(m.group()) == 6 else m.group(), data)


def _parse(data: bytes) -> tuple[Any, bool]:
    """Parse strict JSON fast; fall back for too-deep nesting and out-of-range numbers. Also says
    whether the text was strict JSON (else it may hold non-finite numbers, which no strict JSON
    text of the parsed values, such as a raw ``attrs``, can carry)."""
    try:
        return orjson.loads(data), True
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "surrogate" in msg:
            repaired = _replace_lone_surrogates(data)
            if repaired != data:
                return _parse(repaired)
        if "depth" in msg or "recursion" in msg.lower():
            text = data.decode("utf-8")
            return orjson.loads(_truncate_deep(text)), True
        # e.g. 1e400 or a bare NaN from a non-strict writer: the stdlib parser accepts them.
        return json.loads(data), False


class _Record(msgspec.Struct, gc=False):
    """Base of the record structs: they also answer ``rec["field"]`` / ``rec.get("field")`` like
    the dicts of the on-disk format, so tree code works on either."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.__struct_fields__

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


_Id = Annotated[str, msgspec.Meta(min_length=1)]
_Int = Optional[Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]]


class SpanRecord(_Record):
    """A span as read from the spool (fields of :data:`cirron._schema.SPAN_FIELDS`)."""

    id: _Id
    parent_id: Optional[str] = None
    name: Any = None
    index: _Int = None
    start_ns: _Int = None
    end_ns: _Int = None
    cpu_ns: _Int = None
    gpu_ns: _Int = None
    memory_peak_bytes: _Int = None
    thread_id: _Int = None
    pid: _Int = None
    rank: _Int = None
    attrs: Any = None
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class MarkRecord(_Record):
    """A mark; ``batch_session`` is the ``session_id`` of the batch that held it (not on disk)."""

    id: _Id
    span_id: Optional[str] = None
    name: Any = None
    value: Any = None
    value_type: Any = None
    kind: Any = None
    ts_ns: _Int = None
    thread_id: _Int = None
    attrs: Any = None
    value_nonfinite: Any = None  # other writers: "nan"/"inf"/"-inf" beside a null value
    # Not on disk (the odd JSON names keep a file from setting them): filled in by the reader.
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class SnapshotRecord(_Record):
    id: _Id
    span_id: Optional[str] = None
    tensor: Any = None
    role: Any = None
    dtype: Any = None
    shape: Any = None
    mode: Any = None
    ts_ns: _Int = None
    stats: Any = None
    blob_uri: Any = None
    tensor_name: Any = None  # other writers' name for ``tensor``
    # Not on disk (the odd JSON names keep a file from setting them): filled in by the reader.
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class SpanSummary(_Record):
    """The span fields session reconstruction needs (``fields="summary"`` reads; ``attrs`` only
    on top-level spans), and those a light pass keeps as numpy keys (``fields="keys"``; ``attrs``
    stays raw JSON text: decode it with :func:`_decode_attrs` for the few that matter)."""

    id: _Id
    parent_id: Optional[str] = None
    name: Any = None
    index: _Int = None
    start_ns: _Int = None
    end_ns: _Int = None
    cpu_ns: _Int = None
    attrs: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    pid: _Int = None
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class MarkSummary(_Record):
    id: _Id
    span_id: Optional[str] = None
    # Not on disk (the odd JSON names keep a file from setting them): filled in by the reader.
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class SnapshotSummary(_Record):
    id: _Id
    span_id: Optional[str] = None
    # Not on disk (the odd JSON names keep a file from setting them): filled in by the reader.
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class SpanExport(_Record):
    """A span with ``attrs`` kept as raw JSON text (``fields="export"``: Parquet/CSV copy it as is)."""

    id: _Id
    parent_id: Optional[str] = None
    name: Any = None
    index: _Int = None
    start_ns: _Int = None
    end_ns: _Int = None
    cpu_ns: _Int = None
    gpu_ns: _Int = None
    memory_peak_bytes: _Int = None
    thread_id: _Int = None
    pid: _Int = None
    rank: _Int = None
    attrs: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class MarkExport(_Record):
    id: _Id
    span_id: Optional[str] = None
    name: Any = None
    value: Any = None
    value_type: Any = None
    kind: Any = None
    ts_ns: _Int = None
    thread_id: _Int = None
    attrs: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    value_nonfinite: Any = None
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class TargetKey(_Record):
    """A mark or snapshot as a light pass keeps it (``fields="keys"``): its id, the span it hangs
    from and its time. Unlike the other field sets, ``batch_session`` is not filled in."""

    id: _Id
    span_id: Optional[str] = None
    ts_ns: _Int = None
    batch_session: Optional[str] = msgspec.field(default=None, name="~cirron.batch_session")
    session: Optional[str] = msgspec.field(default=None, name="~cirron.session")


class _BatchHeader(msgspec.Struct, gc=False):
    """The top-level fields of a batch file; each field set's batch adds its record lists."""

    schema_version: Any = None
    sdk_version: Any = None
    batch_id: Any = None
    created_ns: Any = None
    session_id: Any = msgspec.UNSET  # absent: a writer without the liveness-lock protocol
    resource: Any = None


class _KeysBatch(_BatchHeader, gc=False):
    spans: Optional[list[SpanSummary]] = None
    marks: Optional[list[TargetKey]] = None
    snapshots: Optional[list[TargetKey]] = None


class _ExportBatch(_BatchHeader, gc=False):
    spans: Optional[list[SpanExport]] = None
    marks: Optional[list[MarkExport]] = None
    snapshots: Optional[list[SnapshotRecord]] = None


class _FullBatch(_BatchHeader, gc=False):
    spans: Optional[list[SpanRecord]] = None
    marks: Optional[list[MarkRecord]] = None
    snapshots: Optional[list[SnapshotRecord]] = None


class _SummaryBatch(_BatchHeader, gc=False):
    spans: Optional[list[SpanSummary]] = None
    marks: Optional[list[MarkSummary]] = None
    snapshots: Optional[list[SnapshotSummary]] = None


_BATCH_TYPES = {"full": _FullBatch, "summary": _SummaryBatch, "export": _ExportBatch, "keys": _KeysBatch}
_DECODERS = {k: msgspec.json.Decoder(v) for k, v in _BATCH_TYPES.items()}
_TYPES = {
    "full": (SpanRecord, MarkRecord, SnapshotRecord),
    "summary": (SpanSummary, MarkSummary, SnapshotSummary),
    "export": (SpanExport, MarkExport, SnapshotRecord),
    "keys": (SpanSummary, TargetKey, TargetKey),
}


def warn_newer_schema(version: Any, name: str, warn: WarningCallback) -> None:
    """The warning a batch file written for a newer schema than this reader's gives."""
    if type(version) is int and version > SCHEMA_VERSION:
        warn(
            f"{name} has schema_version {version}, newer than this reader's {SCHEMA_VERSION}; "
            "reading it best-effort"
        )


def _finish(obj: Any, name: str, warn: WarningCallback, dropped: int = 0) -> dict[str, Any]:
    version = obj.schema_version
    warn_newer_schema(version, name, warn)
    if dropped:
        warn(f"{name}: ignored {dropped} malformed record(s)")
    sid = obj.session_id
    lock_protocol = sid is not msgspec.UNSET
    sid = sid if _valid_id(sid) else None
    marks = obj.marks or []
    snaps = obj.snapshots or []
    # keys reads hold no value or snapshot fields to normalise, and leave batch_session unset
    keys = type(obj) is _KeysBatch
    for m in () if keys else marks:
        m.batch_session = sid
        if m.get("value_type") == "float" and type(m.get("value")) is str:
            m.value = decode_mark_value(m.value, "float")
        elif not lock_protocol:
            normalize_mark(m)
    for sn in () if keys else snaps:
        sn.batch_session = sid
        normalize_snapshot(sn)
    spans = obj.spans or []
    for sp in spans:
        if sp.parent_id == "":  # "no parent" from a writer that does not use null
            sp.parent_id = None
    if type(obj) is _SummaryBatch:
        # Summary reads keep the attributes of top-level spans only (a session root's run id,
        # rank, host...); the raw text of every other span's is let go (it pins the file's bytes).
        for sp in spans:
            a = sp.attrs
            if a is not None:
                sp.attrs = _decode_attrs(a) if sp.parent_id is None else None
    sv = obj.sdk_version
    return {
        "schema_version": version,
        "sdk_version": sv if type(sv) is str else None,
        "batch_id": obj.batch_id,
        "created_ns": obj.created_ns,
        "session_id": sid,
        "lock_protocol": lock_protocol,
        "resource": obj.resource if type(obj.resource) is dict else {},
        "spans": spans,
        "marks": marks,
        "snapshots": snaps,
    }


def _decode_attrs(raw: Any) -> Any:
    if type(raw) is not msgspec.Raw:
        return raw
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


#: Set in a batch read from non-strict JSON (bare NaN/Infinity, 1e400): its raw ``attrs`` texts
#: hold ``null`` where the file had a non-finite number.
NONSTRICT_JSON = "nonstrict_json"


def _slow_path(data: bytes, name: str, fields: str, warn: WarningCallback) -> dict[str, Any] | None:
    """Generic parse + clean-up for files the typed decoder refused (odd types, huge numbers,
    deep nesting), converted into the same record structs."""
    try:
        obj, strict = _parse(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        warn(f"skipping {name}: not valid JSON (corrupt or truncated)")
        return None
    if type(obj) is not dict:
        warn(f"skipping {name}: expected a JSON object, found {_json_type(obj)}")
        return None
    span_t, mark_t, snap_t = _TYPES[fields]
    spans, d1 = _clean_records(obj.get("spans"), SPAN_INT_FIELDS, span_t)
    marks, d2 = _clean_records(obj.get("marks"), MARK_INT_FIELDS, mark_t)
    snaps, d3 = _clean_records(obj.get("snapshots"), SNAPSHOT_INT_FIELDS, snap_t)
    batch_t = _BATCH_TYPES[fields]
    b = batch_t(
        schema_version=obj.get("schema_version"), sdk_version=obj.get("sdk_version"), batch_id=obj.get("batch_id"),
        created_ns=obj.get("created_ns"), session_id=obj.get("session_id", msgspec.UNSET), resource=obj.get("resource"),
        spans=spans, marks=marks, snapshots=snaps,
    )
    out = _finish(b, name, warn, d1 + d2 + d3)
    if not strict:
        out[NONSTRICT_JSON] = True
    return out


def read_batch(
    batch: BatchFile | str | os.PathLike[str],
    on_warning: WarningCallback | None = None,
    fields: str = "full",
) -> dict[str, Any] | None:
    """Read and normalise one batch file, or return ``None`` (after one warning) if it is unusable.

    Returns a dict with the batch's top-level fields and ``spans``/``marks``/``snapshots`` as
    lists of record structs (:class:`SpanRecord`, :class:`MarkRecord`, :class:`SnapshotRecord`;
    with ``fields="summary"`` only the fields session reconstruction needs; ``fields="keys"``:
    :class:`SpanSummary` and :class:`TargetKey`, for passes that keep numpy keys of every record).
    """
    warn = on_warning or default_warning
    path = batch.path if isinstance(batch, BatchFile) else Path(batch)
    name = path.name
    try:
        with open_regular(path, follow_symlinks=False) as fh:
            data = fh.read()
    except OSError as exc:
        warn(read_error(name, exc))
        return None
    return parse_batch(data, name, warn, fields)


def read_error(name: str, exc: OSError) -> str:
    """The warning for a batch file ``name`` that could not be read."""
    if isinstance(exc, NotRegularFile):
        return f"skipping {name}: not a regular file"
    if isinstance(exc, FileNotFoundError):
        return f"skipping {name}: removed while reading"
    return f"skipping {name}: {exc.strerror or exc}"


def parse_batch(data: bytes, name: str, warn: WarningCallback, fields: str = "full") -> dict[str, Any] | None:
    """What :func:`read_batch` gives for a file ``name`` holding ``data`` (the records may refer
    to ``data``: pass bytes that stay as they are)."""
    if not data.strip():
        warn(f"skipping {name}: empty file")
        return None
    try:
        obj = _DECODERS[fields].decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return _slow_path(data, name, fields, warn)
    return _finish(obj, name, warn)


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
    spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None, fields: str = "full"
) -> Iterator[tuple[BatchFile, dict[str, Any]]]:
    """Yield ``(file, batch)`` for every readable batch file, in ``created_ns`` order."""
    for bf in list_batch_files(spool_dir, on_warning):
        batch = read_batch(bf, on_warning, fields)
        if batch is not None:
            yield bf, batch


def _limit_depth(value: Any, limit: int = MAX_NESTING) -> Any:
    """A copy of ``value`` with containers below ``limit`` levels replaced by a placeholder,
    non-finite floats and ints outside int64 as strings (iterative)."""
    if not isinstance(value, (dict, list)):
        if type(value) is int and not (_INT64_MIN <= value <= _INT64_MAX):
            return str(value)
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
            elif isinstance(v, float):
                nv = encode_float(v)
            elif type(v) is int and not (_INT64_MIN <= v <= _INT64_MAX):
                nv = str(v)  # outside int64: a decimal string, as the SDK writes it
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
