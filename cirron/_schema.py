"""The spool contract shared by the writer (flush service) and the reader (CLI, exports).

Spec section 3, schema_version 1. Everything that names a field, a file pattern or an
encoding rule of the on-disk format lives here so the two sides cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1

#: ``<created_ns>-<batch_id>.json``; readers ignore every other name.
BATCH_NAME_RE = re.compile(r"^(\d{1,25})-([0-9a-f]{32})\.json$")

#: Name of the root span every session hangs from.
SESSION_SPAN_NAME = "cirron.session"

#: Names of the spans ``ci.epochs()`` / ``ci.batches()`` open (their ``index`` is the epoch/batch
#: number) and of the waiting-for-input child of each batch.
EPOCH_SPAN_NAME = "epoch"
BATCH_SPAN_NAME = "batch"
DATA_LOAD_SPAN_NAME = "data_load"

#: ``span_id`` of marks recorded while no session existed.
ROOT_SENTINEL = "root"

SPAN_FIELDS = (
    "id", "parent_id", "name", "index", "start_ns", "end_ns", "cpu_ns", "gpu_ns",
    "memory_peak_bytes", "thread_id", "pid", "rank", "attrs",
)
MARK_FIELDS = ("id", "span_id", "name", "value", "value_type", "kind", "ts_ns", "thread_id", "attrs")
SNAPSHOT_FIELDS = (
    "id", "span_id", "tensor", "role", "dtype", "shape", "mode", "ts_ns", "stats", "blob_uri",
)

#: Integer fields a reader coerces from strings (a writer in another language may quote int64s).
SPAN_INT_FIELDS = ("index", "start_ns", "end_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes", "thread_id", "pid", "rank")
MARK_INT_FIELDS = ("ts_ns", "thread_id")
SNAPSHOT_INT_FIELDS = ("ts_ns",)


_NONFINITE_TO_STR = {math.inf: "Infinity", -math.inf: "-Infinity"}
_STR_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def batch_file_name(created_ns: int, batch_id: str) -> str:
    return f"{created_ns}-{batch_id}.json"


def encode_float(x: float) -> float | str:
    """A float as strict JSON allows it: non-finite values become ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    if x != x:
        return "NaN"
    return _NONFINITE_TO_STR.get(x, x)


def decode_float(x: Any) -> Any:
    """Inverse of :func:`encode_float` for fields known to hold floats."""
    if isinstance(x, str):
        return _STR_TO_NONFINITE.get(x, x)
    return x


def scrub_text(value: Any) -> Any:
    """``value`` with every string made valid UTF-8 (so JSON can hold it): a lone surrogate, as
    ``os.fsdecode`` makes from undecodable bytes, is written as its backslash escape (``\\ud800``)."""
    t = type(value)
    if t is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if t is dict:
        return {scrub_text(k): scrub_text(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [scrub_text(v) for v in value]
    return value


#: Integers every exporter can carry (OTLP intValue, Parquet INT64, most JSON parsers).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def encode_int(x: int) -> int | str:
    """An int as the spool writes it: inside int64 as a JSON number, outside as its decimal
    string (a mark keeps ``value_type: "int"``), so no reader or exporter needs more than int64."""
    return x if INT64_MIN <= x <= INT64_MAX else str(x)


def json_scalar(value: Any) -> Any:
    """A mark value ready for strict JSON (non-finite floats and ints outside int64 as strings)."""
    if type(value) is float:
        return encode_float(value)
    if type(value) is int:
        return encode_int(value)
    return value


def strict_json(value: Any, _depth: int = 0) -> Any:
    """Make ``value`` encodable as RFC 8259 JSON: non-finite floats become strings, ints outside
    int64 become decimal strings (:func:`encode_int`), tuples become lists, non-string keys become
    strings, anything unknown becomes ``str()``."""
    t = type(value)
    if t is int:
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if t is str or t is bool or value is None:
        return value
    if t is float:
        return value if math.isfinite(value) else encode_float(value)
    if _depth > 32:
        return str(value)
    if isinstance(value, (dict, Mapping)):  # Mapping: e.g. a closed record's frozen attrs
        return {str(k): strict_json(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, _depth + 1) for v in value]
    if isinstance(value, float):
        return strict_json(float(value))
    if isinstance(value, int):
        return encode_int(int(value))
    return str(value)


def decode_mark_value(value: Any, value_type: str | None) -> Any:
    """A mark's value as the recording process saw it (``"NaN"`` with ``value_type=float`` is NaN)."""
    if value_type == "float":
        return decode_float(value)
    return value
