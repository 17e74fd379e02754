"""One batch file's records as the key columns the index's light pass keeps (:mod:`cirron.spool.index`).

:func:`read_keys` gives, per record, its id as a 128-bit key (:func:`cirron.spool.arrays.id_keys`),
the key of the id it names (a span's parent, a mark's or snapshot's span), whether it names one,
whether a span is closed and its latest time, a mark's time, and the session root candidates
with their records. The reference is the msgspec ``"keys"`` reading of
:func:`cirron.spool.reader.read_batch` (:func:`keys_of_batch`); the compiled scan
``_cbatch.keys`` reads the files cirron's writer makes without the GIL (so the read threads of
:mod:`cirron.spool.parallel` run at once) and declines the rest, which the reference then reads.
Both give the same :class:`FileKeys` (``tests/cbatch_check.py`` checks it on every batch file
the tests write).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from cirron import _native as native
from cirron._safeopen import open_regular
from cirron._schema import SESSION_SPAN_NAME
from cirron.spool.arrays import id_keys
from cirron.spool.parallel import file_bytes
from cirron.spool.reader import (
    BatchFile,
    SpanSummary,
    WarningCallback,
    parse_batch,
    read_error,
    warn_newer_schema,
)

__all__ = ["FileKeys", "keys_of_batch", "keys_of_bytes", "read_compiled_keys", "read_keys"]

#: The compiled scan (``_cbatch.keys``), when built and wanted.
_cbatch = native.load("cirron.spool._cbatch")

_U64 = np.uint64
#: "No time" in the int64 time columns (:func:`cirron.spool.outline.time_column`).
_NO_TIME = -(1 << 63)


@dataclass
class FileKeys:
    """What the light pass keeps of one batch file (numpy columns, one row per record)."""

    session_id: str | None
    #: The header has a ``session_id`` (a writer with the liveness-lock protocol).
    lock_protocol: bool
    sdk_version: str | None
    resource: dict[str, Any]
    #: Spans: ``hi``, ``lo`` (id), ``phi``, ``plo`` (parent's id; the empty id's key where there is
    #: none), ``has_p``, ``closed``, ``tmax`` (the later of start and end).
    spans: dict[str, np.ndarray]
    #: Marks and snapshots: ``hi``, ``lo``, ``thi``, ``tlo`` (the span named; the empty id's key for
    #: none or the root sentinel), ``on`` (names a span); marks also ``ts``.
    marks: dict[str, np.ndarray]
    snapshots: dict[str, np.ndarray]
    #: The spans without a parent named as a session root: (row, record).
    roots: list[tuple[int, SpanSummary]]


def _empty_key() -> tuple[int, int]:
    hi, lo = id_keys([""])
    return int(hi[0]), int(lo[0])


_EMPTY_HI, _EMPTY_LO = _empty_key()


def _time_column(values: list[Any]) -> np.ndarray:
    from cirron.spool.outline import time_column

    return time_column(values)


def keys_of_batch(batch: dict[str, Any]) -> FileKeys:
    """The keys of a batch read with ``fields="keys"`` (the reference)."""
    spans = batch["spans"]
    hi, lo = id_keys([s.id for s in spans])
    parents = [s.parent_id for s in spans]
    has_p = np.fromiter((p is not None for p in parents), dtype=bool, count=len(parents))
    phi, plo = id_keys([p if p is not None else "" for p in parents])
    closed = np.fromiter((s.end_ns is not None for s in spans), dtype=bool, count=len(spans))
    tmax = np.maximum(_time_column([s.start_ns for s in spans]), _time_column([s.end_ns for s in spans]))
    roots = [(j, spans[j]) for j in np.flatnonzero(~has_p).tolist() if spans[j].name == SESSION_SPAN_NAME]
    marks = _targets(batch["marks"])
    marks["ts"] = _time_column([m.ts_ns for m in batch["marks"]])
    return FileKeys(
        session_id=batch["session_id"], lock_protocol=batch["lock_protocol"], sdk_version=batch["sdk_version"],
        resource=batch["resource"],
        spans={"hi": hi, "lo": lo, "phi": phi, "plo": plo, "has_p": has_p, "closed": closed, "tmax": tmax},
        marks=marks, snapshots=_targets(batch["snapshots"]), roots=roots,
    )


def _targets(recs: list[Any]) -> dict[str, np.ndarray]:
    from cirron.spool.outline import target_keys

    hi, lo, thi, tlo, on = target_keys(recs)
    return {"hi": hi, "lo": lo, "thi": thi, "tlo": tlo, "on": on}


_ROOT_DECODER = msgspec.json.Decoder(SpanSummary)


def _compiled_keys(data: Any, name: str, warn: WarningCallback) -> FileKeys | None:
    """The keys by ``_cbatch.keys`` (None: it declined, or a header value msgspec refuses)."""
    got = None if _cbatch is None else _cbatch.keys(data, _EMPTY_HI, _EMPTY_LO)
    if got is None:
        return None
    sid, lock_protocol, extents, span_cols, mark_cols, snap_cols, roots = got
    try:
        version, sdk, resource = (
            msgspec.json.decode(data[extents[i]:extents[i + 1]]) if extents[i] >= 0 else None for i in (0, 2, 4))
        root_recs = []
        for row, start, end in np.frombuffer(roots, dtype=np.int64).reshape(-1, 3).tolist():
            rec = _ROOT_DECODER.decode(bytes(data[start:end]))  # a copy: its raw attrs outlive the buffer
            if rec.name == SESSION_SPAN_NAME:
                rec.parent_id = None  # "" or none: no parent
                root_recs.append((row, rec))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    warn_newer_schema(version, name, warn)
    return FileKeys(
        session_id=sid, lock_protocol=lock_protocol, sdk_version=sdk if type(sdk) is str else None,
        resource=resource if type(resource) is dict else {},
        spans=_columns(span_cols, ("hi", "lo", "phi", "plo", "has_p", "closed", "tmax")),
        marks=_columns(mark_cols, ("hi", "lo", "thi", "tlo", "on", None, "ts")),
        snapshots=_columns(snap_cols, ("hi", "lo", "thi", "tlo", "on", None, None)),
        roots=root_recs,
    )


#: dtypes of the compiled scan's columns, in its order (hi, lo, thi, tlo, flag, flag2, time).
_DTYPES = (_U64, _U64, _U64, _U64, np.bool_, np.bool_, np.int64)


def _columns(blocks: tuple[Any, ...], names: tuple[str | None, ...]) -> dict[str, np.ndarray]:
    return {n: np.frombuffer(b, dtype=t) for n, b, t in zip(names, blocks, _DTYPES) if n is not None}


def keys_of_bytes(data: Any, name: str, warn: WarningCallback) -> FileKeys | None:
    """The keys of a batch file ``name`` holding ``data`` (None: unreadable, after a warning)."""
    got = _compiled_keys(data, name, warn)
    if got is not None:
        return got
    batch = parse_batch(bytes(data), name, warn, "keys")
    return None if batch is None else keys_of_batch(batch)


def read_keys(bf: BatchFile) -> tuple[FileKeys | None, list[str]]:
    """The keys of ``bf`` and the warnings reading it gave (those :func:`read_batch` gives)."""
    return _read(bf, keys_of_bytes)


def read_compiled_keys(bf: BatchFile) -> tuple[FileKeys, list[str]] | None:
    """:func:`read_keys` where the compiled scan reads ``bf``, else None (the caller reads it). A
    file it reads holds records that a ``fields="summary"`` read keeps every one of, with the same
    warnings: ``cirron spool list`` counts them from here."""
    if _cbatch is None:
        return None
    keys, warnings = _read(bf, _compiled_keys)
    return None if keys is None else (keys, warnings)


def _read(bf: BatchFile, keys_of: Callable[[Any, str, WarningCallback], FileKeys | None]) -> tuple[
        FileKeys | None, list[str]]:
    warnings: list[str] = []
    try:
        with open_regular(bf.path, follow_symlinks=False) as fh:
            data = file_bytes(fh)
    except OSError as exc:
        warnings.append(read_error(bf.name, exc))
        return None, warnings
    return keys_of(data, bf.name, warnings.append), warnings
