"""Sessions → OTLP/JSON (``ExportTraceServiceRequest``), pure functions with no I/O.

Follows the OTLP/JSON encoding rules: lowerCamelCase keys, trace/span ids as lowercase hex
(not base64), 64-bit integers as decimal strings, enums as integers, non-finite doubles as the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

This is the one OTLP encoder: the live ``otlp`` sink calls :func:`encode_resource_spans` per
request (closed spans plus their marks), the file export and ``--endpoint`` call it per session,
so a receiver cannot tell them apart. :func:`cirron.export.otlp_http.request_to_protobuf` turns
a request into the binary ``http/protobuf`` body.

Conventions followed:

* the resource: ``service.name`` from ``OTEL_SERVICE_NAME``, else ``service.name`` in
  ``OTEL_RESOURCE_ATTRIBUTES``, else the project name from cirron.yaml, else ``cirron``;
  ``service.version`` is the project version; ``telemetry.sdk.{name,language,version}`` name the
  program that wrote the session (``cirron``, ``python``, the session's own ``sdk_version``);
  every ``OTEL_RESOURCE_ATTRIBUTES`` entry wins over what cirron derives, except
  ``cirron.session.id``; ``openinference.project.name`` (Arize Phoenix's project) is the
  service name unless ``OTEL_RESOURCE_ATTRIBUTES`` sets it;
* ``request`` spans (``@ci.inference``) have span kind SERVER and the GenAI semantic-convention
  attributes (:func:`genai_attributes`); every other span is INTERNAL.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from cirron._format import REQUEST_SPAN
from cirron._schema import INT64_MAX, INT64_MIN, ROOT_SENTINEL, decode_mark_value, encode_float
from cirron._version import __version__
from cirron.spool.reconstruct import is_session_root, mark_span_id

__all__ = [
    "REQUEST_SPAN_NAME",
    "SCOPE_NAME",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "STATUS_CODE_ERROR",
    "any_value",
    "build_request",
    "derive_span_id",
    "derive_trace_id",
    "encode_attributes",
    "encode_resource_spans",
    "encode_session",
    "event_bytes",
    "genai_attributes",
    "is_genai_mark",
    "iter_encoded_spans",
    "parse_resource_attributes",
    "resource_attributes",
    "resource_spans_shell",
    "span_json_pieces",
]

SCOPE_NAME = "cirron"
REQUEST_SPAN_NAME = REQUEST_SPAN
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2
_MAX_VALUE_DEPTH = 16

_RESOURCE_KEYS = {
    "pid": "process.pid",
    "host": "host.name",
    "rank": "cirron.rank",
    "world_size": "cirron.world_size",
    "project": "cirron.project",
    "project_version": "cirron.project_version",
}
#: Keys cirron sets on every resource itself (an OTEL_RESOURCE_ATTRIBUTES entry may still override
#: all but the session id).
_SESSION_KEY = "cirron.session.id"
#: Arize Phoenix files spans under the project this resource attribute names (else "default").
_PHOENIX_PROJECT_KEY = "openinference.project.name"

#: Token-count marks of a request span (``@ci.inference`` summary marks), first found wins.
#: ``tokens`` is not among them: for a stream without usage it is the number of chunks.
_INPUT_TOKEN_MARKS = ("prompt_tokens", "input_tokens")
_OUTPUT_TOKEN_MARKS = ("completion_tokens", "output_tokens")
#: Marks that only an LLM-shaped request has.
_LLM_MARKS = frozenset(_INPUT_TOKEN_MARKS + _OUTPUT_TOKEN_MARKS + ("ttft_ns", "chunks"))


def derive_trace_id(session_id: str) -> str:
    """32 hex characters derived (BLAKE2b) from any session id; never all zeros."""
    h = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=16, person=b"cirron.trace").hexdigest()
    return h if h.strip("0") else "0" * 31 + "1"


def derive_span_id(span_id: str) -> str:
    """16 hex characters derived (BLAKE2b) from any span id; never all zeros."""
    h = _blake2b(span_id.encode("utf-8", "surrogatepass"), digest_size=8, person=b"cirron.span").hexdigest()
    return h if h != "0000000000000000" else "0" * 15 + "1"


_blake2b = hashlib.blake2b


def _double(x: float) -> dict[str, Any]:
    return {"doubleValue": encode_float(x)}


def any_value(value: Any, _depth: int = 0) -> dict[str, Any]:
    """An OTLP ``AnyValue`` for a JSON-like Python value."""
    t = type(value)
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
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
        values = [{"key": str(k), "value": any_value(v, _depth + 1)} for k, v in value.items()]
        return {"kvlistValue": {"values": values}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v, _depth + 1) for v in value]}}
    if isinstance(value, float):
        return _double(float(value))
    if isinstance(value, int):
        return any_value(int(value), _depth)
    return {"stringValue": str(value)}


def encode_attributes(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``[{"key", "value": AnyValue}]``; ``None`` values are left out."""
    if not attrs or not (type(attrs) is dict or isinstance(attrs, Mapping)):
        return []
    return [{"key": k if type(k) is str else str(k), "value": any_value(v)} for k, v in attrs.items() if v is not None]


def _getter(rec: Any) -> Any:
    """``rec.get`` for dicts; C-level attribute access for :mod:`cirron.spool` record structs."""
    return rec.get if type(rec) is dict else rec.__getattribute__


def _event(mark: Any) -> dict[str, Any]:
    g = _getter(mark)
    ts = g("ts_ns")
    v = g("value")
    v = decode_mark_value(v, g("value_type"))
    kind = g("kind")
    attrs = [{"key": "value", "value": any_value(v)},
             {"key": "kind", "value": {"stringValue": kind if type(kind) is str else "point"}}]
    extra = g("attrs")
    if extra:
        attrs.extend(a for a in encode_attributes(extra) if a["key"] not in ("value", "kind"))
    name = g("name")
    return {"timeUnixNano": str(ts if type(ts) is int and ts >= 0 else 0),
            "name": name if type(name) is str and name else str(name or "mark"), "attributes": attrs}


def parse_resource_attributes(value: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded) → dict; bad entries are skipped."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        key = unquote(key).strip()
        if sep and key:
            out[key] = unquote(val).strip()
    return out


def resource_attributes(session_id: str, resource: Mapping[str, Any] | None, sdk_version: str | None = None,
                        environ: Mapping[str, str] | None = None, writer: str = "cirron") -> dict[str, Any]:
    """The OTLP resource of one session as a plain dict (see the module docstring for the rules).

    ``telemetry.sdk.version`` and ``cirron.writer`` say which writer wrote the session: this SDK's
    version is used only for sessions this SDK's protocol wrote."""
    env = os.environ if environ is None else environ
    resource = resource or {}
    project, project_version = resource.get("project"), resource.get("project_version")
    attrs: dict[str, Any] = {"service.name": project if type(project) is str and project else "cirron"}
    if project_version is not None:
        attrs["service.version"] = str(project_version)
    attrs["telemetry.sdk.name"] = "cirron"
    attrs["telemetry.sdk.language"] = "python"
    attrs["telemetry.sdk.version"] = sdk_version or (__version__ if writer == "cirron" else "unknown")
    attrs["cirron.writer"] = writer
    for k, v in resource.items():
        if v is not None:
            attrs[_RESOURCE_KEYS.get(k, f"cirron.resource.{k}")] = v
    attrs.update(parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service = env.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        attrs["service.name"] = service
    attrs.setdefault(_PHOENIX_PROJECT_KEY, attrs["service.name"])
    attrs[_SESSION_KEY] = session_id
    return attrs


def _is_count(v: Any) -> bool:
    return (type(v) is int and v >= 0) or (type(v) is float and math.isfinite(v) and v >= 0)


def genai_attributes(span_attrs: Mapping[str, Any] | None, marks: Iterable[Any]) -> dict[str, Any]:
    """GenAI semantic-convention attributes of a ``request`` span, from its attrs and marks.

    Always ``gen_ai.operation.name`` (the span's own ``gen_ai.operation.name`` attr, else
    ``chat`` for an LLM-shaped request — token counts, a stream — else ``inference``); the
    provider (``gen_ai.system`` and ``gen_ai.provider.name``) and the request/response model
    when the span's ``provider`` / ``model`` / ``response_model`` attrs say them; token usage
    only when known (``prompt_tokens`` / ``completion_tokens`` marks, never a chunk count), also
    under the OpenInference names Arize Phoenix totals (``llm.token_count.*``).
    """
    found: dict[str, Any] = {}
    for m in marks:
        g = _getter(m)
        name = g("name")
        if name in _LLM_MARKS:
            v = g("value")
            if _is_count(v):
                found[name] = int(v)
    attrs = span_attrs or {}
    llm = bool(found) or attrs.get("stream_end") is not None
    op = attrs.get("gen_ai.operation.name")
    out: dict[str, Any] = {"gen_ai.operation.name": op if type(op) is str and op else ("chat" if llm else "inference")}
    provider = attrs.get("provider")
    if type(provider) is str and provider:
        out["gen_ai.system"] = out["gen_ai.provider.name"] = provider
    model = attrs.get("model")
    if type(model) is str and model:
        out["gen_ai.request.model"] = model
    response_model = attrs.get("response_model")
    if type(response_model) is str and response_model:
        out["gen_ai.response.model"] = response_model
    tokens_in = next((found[n] for n in _INPUT_TOKEN_MARKS if n in found), None)
    tokens_out = next((found[n] for n in _OUTPUT_TOKEN_MARKS if n in found), None)
    if tokens_in is not None:
        out["gen_ai.usage.input_tokens"] = out["llm.token_count.prompt"] = tokens_in
    if tokens_out is not None:
        out["gen_ai.usage.output_tokens"] = out["llm.token_count.completion"] = tokens_out
    if tokens_in is not None or tokens_out is not None:
        out["llm.token_count.total"] = (tokens_in or 0) + (tokens_out or 0)
    if llm:
        out["openinference.span.kind"] = "LLM"
        if "gen_ai.response.model" in out or "gen_ai.request.model" in out:
            out["llm.model_name"] = out.get("gen_ai.response.model") or out["gen_ai.request.model"]
        if "gen_ai.system" in out:
            out["llm.system"] = out["llm.provider"] = provider
    return out


def iter_encoded_spans(
    session_id: str,
    spans: Iterable[Mapping[str, Any]],
    marks: Iterable[Mapping[str, Any]] = (),
    *,
    open_end_ns: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The OTLP ``Span`` dicts of one session, one at a time (see :func:`encode_resource_spans`)."""
    spans = spans if isinstance(spans, Sequence) else list(spans)
    trace_id = derive_trace_id(session_id)
    ids = {s["id"] for s in spans}
    root_id = next((s["id"] for s in spans if is_session_root(s)), None)
    requests = {s["id"] for s in spans if s.get("name") == REQUEST_SPAN_NAME}
    events: dict[str, list[dict[str, Any]]] = {}
    raw: dict[str, list[Any]] = {}  # the marks of request spans, for their GenAI attributes
    unwritten: dict[str, list[dict[str, Any]]] = {}  # marks of a span never written, in a session without root
    for m in marks:
        sid = mark_span_id(m.get("span_id"), ids, root_id)
        if sid is not None:
            events.setdefault(sid, []).append(_event(m))
            if sid in requests:
                raw.setdefault(sid, []).append(m)
        else:
            own = m.get("span_id")
            unwritten.setdefault(own if type(own) is str and own else ROOT_SENTINEL, []).append(_event(m))
    for s in spans:
        sid = s["id"]
        yield _encode_span(s, trace_id, events.get(sid), open_end_ns, raw.get(sid, ()))
    for sid, evs in unwritten.items():  # every mark is exported: on a placeholder for its span
        ts = min(int(e["timeUnixNano"]) for e in evs)
        placeholder = {"id": sid, "name": "(span not written)", "start_ns": ts, "end_ns": ts,
                       "attrs": {"cirron.placeholder": True}}
        yield _encode_span(placeholder, trace_id, evs, open_end_ns)


def event_bytes(mark: Any) -> bytes:
    """One mark as the OTLP/JSON bytes of its span event (what :func:`iter_encoded_spans` nests)."""
    import orjson

    return orjson.dumps(_event(mark))


def is_genai_mark(mark: Any) -> bool:
    """Whether a mark feeds the GenAI attributes of its ``request`` span (:func:`genai_attributes`)."""
    return _getter(mark)("name") in _LLM_MARKS


def span_json_pieces(item: Any, trace_id: str, open_end_ns: int | None = None) -> Iterator[bytes]:
    """The OTLP/JSON bytes of one span, in pieces, from a ``(span, encoded events, raw GenAI
    marks)`` item (:class:`cirron.spool.outline.SpanMarks`, events made by :func:`event_bytes`).
    Joined, they equal ``orjson.dumps`` of what :func:`iter_encoded_spans` yields; a span with
    millions of events is never held whole."""
    import orjson

    span = _encode_span(item.span, trace_id, None, open_end_ns, item.raw)
    status = span.pop("status", None)
    head = orjson.dumps(span)[:-1]
    first = next(item.encoded, None)
    if first is None:
        yield head
    else:
        yield head + b',"events":[' + first
        yield from (b"," + e for e in item.encoded)
        yield b"]"
    yield (b',"status":' + orjson.dumps(status) + b"}") if status is not None else b"}"


def _encode_span(s: Any, trace_id: str, events: list[dict[str, Any]] | None, open_end_ns: int | None,
                 marks: Sequence[Any] = ()) -> dict[str, Any]:
    g = _getter(s)
    start = g("start_ns")
    if type(start) is not int:
        start = 0
    end = g("end_ns")
    raw_attrs = g("attrs")
    if type(raw_attrs) is not dict and not isinstance(raw_attrs, Mapping):
        raw_attrs = None
    name = g("name")
    request = name == REQUEST_SPAN_NAME
    if request:
        raw_attrs = {**(raw_attrs or {}), **genai_attributes(raw_attrs, marks)}
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
    span = {
        "traceId": trace_id,
        "spanId": derive_span_id(sid),
        "name": name if type(name) is str and name else str(name or "span"),
        "kind": SPAN_KIND_SERVER if request else SPAN_KIND_INTERNAL,
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


def resource_spans_shell(
    session_id: str, resource: Mapping[str, Any] | None, sdk_version: str | None = None, writer: str = "cirron"
) -> dict[str, Any]:
    """A ``ResourceSpans`` with an empty span list (fill ``["scopeSpans"][0]["spans"]``)."""
    return {
        "resource": {"attributes": encode_attributes(resource_attributes(session_id, resource, sdk_version,
                                                                          writer=writer))},
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
    writer: str = "cirron",
) -> dict[str, Any]:
    """One ``ResourceSpans`` for one session.

    ``spans`` are spool span records (dicts or :mod:`cirron.spool` records); ``marks`` become
    events of their span (marks whose span is not among ``spans`` — the ``"root"`` sentinel
    included — go to the session root span when it is present, else they are dropped). Spans
    without ``end_ns`` get ``open_end_ns`` (or their start) as end time and the attribute
    ``cirron.open = true``.
    """
    rs = resource_spans_shell(session_id, resource, sdk_version, writer)
    rs["scopeSpans"][0]["spans"] = list(iter_encoded_spans(session_id, spans, marks, open_end_ns=open_end_ns))
    return rs


def encode_session(session: Any) -> dict[str, Any]:
    """``encode_resource_spans`` for a :class:`cirron.spool.Session`."""
    return encode_resource_spans(
        session.id, session.resource, session.spans, session.marks,
        sdk_version=session.sdk_version, open_end_ns=session.last_ns, writer=session.writer,
    )


def build_request(resource_spans: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` (OTLP/JSON) wrapping the given ``ResourceSpans``."""
    return {"resourceSpans": list(resource_spans)}
