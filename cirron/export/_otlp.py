"""Sessions → OTLP/JSON (``ExportTraceServiceRequest``), pure functions with no I/O.

Follows the OTLP/JSON encoding rules: lowerCamelCase keys, trace/span ids as lowercase hex
(not base64), 64-bit integers as decimal strings, enums as integers, non-finite doubles as the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

The live OTLP sink can reuse :func:`encode_resource_spans` per flush (closed spans plus their
marks) and :func:`build_request` to wrap them; :func:`to_protobuf` turns a request into the
binary ``http/protobuf`` body with the official ``opentelemetry-proto`` messages.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from cirron._version import __version__
from cirron.spool.reconstruct import is_session_root, mark_span_id

__all__ = [
    "SCOPE_NAME",
    "SPAN_KIND_INTERNAL",
    "STATUS_CODE_ERROR",
    "any_value",
    "build_request",
    "derive_span_id",
    "derive_trace_id",
    "encode_attributes",
    "encode_resource_spans",
    "encode_session",
    "iter_encoded_spans",
    "resource_spans_shell",
    "to_protobuf",
]

SCOPE_NAME = "cirron"
SPAN_KIND_INTERNAL = 1
STATUS_CODE_ERROR = 2
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_VALUE_DEPTH = 16

_RESOURCE_KEYS = {
    "pid": "process.pid",
    "host": "host.name",
    "rank": "cirron.rank",
    "world_size": "cirron.world_size",
    "project": "cirron.project",
    "project_version": "cirron.project_version",
}


def derive_trace_id(session_id: str) -> str:
    """32 hex characters derived (BLAKE2b) from any session id; never all zeros."""
    h = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=16, person=b"cirron.trace").hexdigest()
    return h if h.strip("0") else "0" * 31 + "1"


def derive_span_id(span_id: str) -> str:
    """16 hex characters derived (BLAKE2b) from any span id; never all zeros."""
    h = _blake2b(span_id.encode("utf-8", "surrogatepass"), digest_size=8, person=b"cirron.span").hexdigest()
    return h if h != "0000000000000000" else "0" * 15 + "1"


_blake2b = hashlib.blake2b


def _double(x: float) -> dict:
    if math.isfinite(x):
        return {"doubleValue": x}
    return {"doubleValue": "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")}


def any_value(value: Any, _depth: int = 0) -> dict:
    """An OTLP ``AnyValue`` for a JSON-like Python value."""
    t = type(value)
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if t is float:
        return _double(value)
    if t is str:
        return {"stringValue": value}
    if value is None:
        return {}
    if _depth >= _MAX_VALUE_DEPTH:
        from cirron.spool.reader import safe_dumps

        return {"stringValue": safe_dumps(value).decode()}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": [{"key": str(k), "value": any_value(v, _depth + 1)} for k, v in value.items()]}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v, _depth + 1) for v in value]}}
    if isinstance(value, float):
        return _double(float(value))
    if isinstance(value, int):
        return any_value(int(value), _depth)
    return {"stringValue": str(value)}


def encode_attributes(attrs: Mapping[str, Any] | None) -> list[dict]:
    """``[{"key", "value": AnyValue}]``; ``None`` values are left out."""
    if not attrs or not (type(attrs) is dict or isinstance(attrs, Mapping)):
        return []
    return [{"key": k if type(k) is str else str(k), "value": any_value(v)} for k, v in attrs.items() if v is not None]


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _getter(rec: Any) -> Any:
    """``rec.get`` for dicts; C-level attribute access for :mod:`cirron.spool` record structs."""
    return rec.get if type(rec) is dict else rec.__getattribute__


def _event(mark: Any) -> dict:
    g = _getter(mark)
    ts = g("ts_ns")
    v = g("value")
    if type(v) is str and g("value_type") == "float":
        v = _NONFINITE.get(v, v)
    kind = g("kind")
    attrs = [{"key": "value", "value": any_value(v)},
             {"key": "kind", "value": {"stringValue": kind if type(kind) is str else "point"}}]
    extra = g("attrs")
    if extra:
        attrs.extend(a for a in encode_attributes(extra) if a["key"] not in ("value", "kind"))
    name = g("name")
    return {"timeUnixNano": str(ts if type(ts) is int and ts >= 0 else 0),
            "name": name if type(name) is str and name else str(name or "mark"), "attributes": attrs}


def _resource_attributes(session_id: str, resource: Mapping[str, Any] | None, sdk_version: str | None) -> list[dict]:
    attrs = [
        {"key": "service.name", "value": {"stringValue": "cirron"}},
        {"key": "sdk.version", "value": {"stringValue": sdk_version or __version__}},
        {"key": "cirron.session.id", "value": {"stringValue": session_id}},
    ]
    for k, v in (resource or {}).items():
        if v is None or k in ("service.name", "sdk.version", "cirron.session.id"):
            continue
        attrs.append({"key": _RESOURCE_KEYS.get(k, f"cirron.resource.{k}"), "value": any_value(v)})
    return attrs


def iter_encoded_spans(
    session_id: str,
    spans: Iterable[Mapping[str, Any]],
    marks: Iterable[Mapping[str, Any]] = (),
    *,
    open_end_ns: int | None = None,
) -> Iterator[dict]:
    """The OTLP ``Span`` dicts of one session, one at a time (see :func:`encode_resource_spans`)."""
    spans = spans if isinstance(spans, Sequence) else list(spans)
    trace_id = derive_trace_id(session_id)
    ids = {s["id"] for s in spans}
    root_id = next((s["id"] for s in spans if is_session_root(s)), None)
    events: dict[str, list[dict]] = {}
    for m in marks:
        sid = mark_span_id(m.get("span_id"), ids, root_id)
        if sid is not None:
            events.setdefault(sid, []).append(_event(m))
    for s in spans:
        yield _encode_span(s, trace_id, events.get(s["id"]), open_end_ns)


def _encode_span(s: Any, trace_id: str, events: list[dict] | None, open_end_ns: int | None) -> dict:
    g = _getter(s)
    start = g("start_ns")
    if type(start) is not int:
        start = 0
    end = g("end_ns")
    raw_attrs = g("attrs")
    if type(raw_attrs) is not dict and not isinstance(raw_attrs, Mapping):
        raw_attrs = None
    attrs = encode_attributes(raw_attrs)
    sid = g("id")
    attrs.append({"key": "cirron.span.id", "value": {"stringValue": sid}})
    v = g("index")
    if type(v) is int:
        attrs.append({"key": "cirron.index", "value": {"intValue": str(v)}})
    for k in ("cpu_ns", "gpu_ns", "memory_peak_bytes"):
        v = g(k)
        if type(v) is int:
            attrs.append({"key": f"cirron.{k}", "value": {"intValue": str(v)}})
    v = g("thread_id")
    if type(v) is int:
        attrs.append({"key": "thread.id", "value": {"intValue": str(v)}})
    if type(end) is not int:
        end = max(start, open_end_ns or start)
        attrs.append({"key": "cirron.open", "value": {"boolValue": True}})
    name = g("name")
    span = {
        "traceId": trace_id,
        "spanId": derive_span_id(sid),
        "name": name if type(name) is str and name else str(name or "span"),
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(max(start, 0)),
        "endTimeUnixNano": str(max(end, 0)),
        "attributes": attrs,
    }
    parent = g("parent_id")
    if type(parent) is str and parent:
        span["parentSpanId"] = derive_span_id(parent)
    if events:
        span["events"] = events
    err = raw_attrs.get("error") if raw_attrs else None
    if err is not None:
        span["status"] = {"code": STATUS_CODE_ERROR, "message": str(err)}
    return span


def resource_spans_shell(session_id: str, resource: Mapping[str, Any] | None, sdk_version: str | None = None) -> dict:
    """A ``ResourceSpans`` with an empty span list (fill ``["scopeSpans"][0]["spans"]``)."""
    return {
        "resource": {"attributes": _resource_attributes(session_id, resource, sdk_version)},
        "scopeSpans": [{"scope": {"name": SCOPE_NAME, "version": __version__}, "spans": []}],
    }


def encode_resource_spans(
    session_id: str,
    resource: Mapping[str, Any] | None,
    spans: Iterable[Mapping[str, Any]],
    marks: Iterable[Mapping[str, Any]] = (),
    *,
    sdk_version: str | None = None,
    open_end_ns: int | None = None,
) -> dict:
    """One ``ResourceSpans`` for one session.

    ``spans`` are spool span records (dicts or :mod:`cirron.spool` records); ``marks`` become
    events of their span (marks whose span is not among ``spans`` — the ``"root"`` sentinel
    included — go to the session root span when it is present, else they are dropped). Spans
    without ``end_ns`` get ``open_end_ns`` (or their start) as end time and the attribute
    ``cirron.open = true``.
    """
    rs = resource_spans_shell(session_id, resource, sdk_version)
    rs["scopeSpans"][0]["spans"] = list(iter_encoded_spans(session_id, spans, marks, open_end_ns=open_end_ns))
    return rs


def encode_session(session: Any) -> dict:
    """``encode_resource_spans`` for a :class:`cirron.spool.Session`."""
    return encode_resource_spans(
        session.id, session.resource, session.spans, session.marks,
        sdk_version=session.sdk_version, open_end_ns=session.last_ns,
    )


def build_request(resource_spans: Sequence[dict]) -> dict:
    """An ``ExportTraceServiceRequest`` (OTLP/JSON) wrapping the given ``ResourceSpans``."""
    return {"resourceSpans": list(resource_spans)}


def _hex_to_b64(h: str) -> str:
    return base64.b64encode(bytes.fromhex(h)).decode()


def to_protobuf(request: Mapping[str, Any]) -> bytes:
    """Serialise an OTLP/JSON request dict to the binary protobuf body (``http/protobuf``).

    Needs ``opentelemetry-proto`` (``pip install 'cirron[otlp]'``). Ids are converted from the
    OTLP/JSON hex form to the bytes the protobuf JSON mapping expects (base64).
    """
    from cirron._errors import require

    pb2 = require("opentelemetry.proto.collector.trace.v1.trace_service_pb2", "OTLP http/protobuf export", "otlp")
    json_format = require("google.protobuf.json_format", "OTLP http/protobuf export", "otlp")
    converted = {"resourceSpans": []}
    for rs in request.get("resourceSpans", []):
        rs2 = dict(rs)
        rs2["scopeSpans"] = []
        for ss in rs.get("scopeSpans", []):
            ss2 = dict(ss)
            spans = []
            for sp in ss.get("spans", []):
                sp2 = dict(sp)
                for k in ("traceId", "spanId", "parentSpanId"):
                    if sp2.get(k):
                        sp2[k] = _hex_to_b64(sp2[k])
                spans.append(sp2)
            ss2["spans"] = spans
            rs2["scopeSpans"].append(ss2)
        converted["resourceSpans"].append(rs2)
    msg = json_format.ParseDict(converted, pb2.ExportTraceServiceRequest())
    return msg.SerializeToString()
