"""Send an OTLP/JSON request to an OTLP/HTTP traces receiver (``/v1/traces``), with retries.

Shared by ``cirron traces export --format otel --endpoint`` (sync, :func:`send_otlp`), the live
``otlp`` sink and the platform uploader (async, :func:`apost_with_retries`).
Policy (OTLP/HTTP spec): gzip body when asked (``OTEL_EXPORTER_OTLP_COMPRESSION=gzip``); up to
``max_attempts`` attempts within ``deadline`` seconds;
retry only on 429/502/503/504 and on dropped connections/timeouts, with exponential backoff
and jitter, honouring ``Retry-After`` (seconds or an HTTP date); never on other status codes.
A 200 whose body reports ``partialSuccess`` with rejected spans is a warning, not a retry.
The policy lives once, in :class:`_Attempts` (no I/O); the sync and async loops only do the
sending and the sleeping. httpx is imported when a request is actually sent.

:class:`OtlpSettings` reads the standard ``OTEL_EXPORTER_OTLP_*`` environment variables.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cirron._errors import CirronError
from cirron._redact import body_snippet, install_log_filter, redact

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_TRACES_ENDPOINT",
    "PROTOCOLS",
    "RETRYABLE_STATUS",
    "OTLPExportError",
    "OtlpSettings",
    "SendResult",
    "apost_with_retries",
    "encode_body",
    "encode_json_body",
    "parse_otlp_headers",
    "parse_retry_after",
    "post_with_retries",
    "request_to_protobuf",
    "resolve_traces_url",
    "send_otlp",
]

_log = install_log_filter(logging.getLogger("cirron.export"))

PROTOCOLS = ("http/json", "http/protobuf")
#: The retry policy of a one-off export (the live sink has its own, shorter budget).
DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BASE_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 8.0
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class OTLPExportError(CirronError):
    """The receiver refused the request, or it could not be delivered before the deadline.

    ``transient``: a later try may succeed (no answer, or 429/502/503/504); a refusal or a
    receiver whose TLS certificate cannot be verified is not transient."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0,
                 transient: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.transient: bool = (status is None or status in RETRYABLE_STATUS) if transient is None else transient


@dataclass
class SendResult:
    status: int
    attempts: int
    rejected_spans: int = 0
    error_message: str = ""


@dataclass
class StreamResult:
    """What :meth:`OtlpSettings.send_stream` delivered: requests, spans, attempts in all."""

    requests: int = 0
    spans: int = 0
    attempts: int = 0
    rejected_spans: int = 0
    status: int | None = None  # the last answer's


class OTLPStreamError(OTLPExportError):
    """A request of :meth:`OtlpSettings.send_stream` failed; ``sent`` says what went before it."""

    def __init__(self, cause: OTLPExportError, sent: StreamResult) -> None:
        super().__init__(str(cause), cause.status, cause.attempts, cause.transient)
        self.sent = sent


def resolve_traces_url(endpoint: str) -> str:
    """``endpoint`` as is when it already ends in ``/v1/traces``, else with ``/v1/traces`` appended."""
    e = endpoint.strip()
    if e.rstrip("/").endswith("/v1/traces"):
        return e.rstrip("/")
    return e.rstrip("/") + "/v1/traces"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``."""
    if not value:
        return None
    v = value.strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, dt.timestamp() - now)


def _encode(request: Mapping[str, Any], protocol: str) -> tuple[bytes, str]:
    if protocol == "http/json":
        return orjson.dumps(request), "application/json"
    if protocol == "http/protobuf":
        return request_to_protobuf(request), "application/x-protobuf"
    raise ValueError(f"unknown OTLP protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")


def request_to_protobuf(request: Mapping[str, Any]) -> bytes:
    """The ``http/protobuf`` body for an OTLP/JSON request dict, built message by message.

    Gives the same bytes as the protobuf JSON mapping (``json_format.ParseDict``, which the tests
    compare it with) at a fraction of the cost, which matters for the live sink: it runs
    for every request, in the process being profiled. Needs ``opentelemetry-proto``.
    """
    from cirron._errors import require

    feature = "OTLP http/protobuf export"
    svc = require("opentelemetry.proto.collector.trace.v1.trace_service_pb2", feature, "otlp")
    # Fields are filled in place (``add()`` then set): constructing messages and copying them into
    # their parent costs several times more with the upb backend.

    def fill_value(dst: Any, v: Mapping[str, Any]) -> None:
        if "stringValue" in v:
            dst.string_value = v["stringValue"]
        elif "intValue" in v:
            dst.int_value = int(v["intValue"])
        elif "doubleValue" in v:
            dst.double_value = float(v["doubleValue"])  # also "NaN", "Infinity", "-Infinity"
        elif "boolValue" in v:
            dst.bool_value = bool(v["boolValue"])
        elif "arrayValue" in v:
            arr = dst.array_value
            arr.SetInParent()
            for x in v["arrayValue"].get("values", ()):
                fill_value(arr.values.add(), x)
        elif "kvlistValue" in v:
            kvl = dst.kvlist_value
            kvl.SetInParent()
            fill_attributes(kvl.values, v["kvlistValue"].get("values", ()))
        elif "bytesValue" in v:
            import base64

            dst.bytes_value = base64.b64decode(v["bytesValue"])

    def fill_attributes(container: Any, items: Any) -> None:
        for a in items:
            kv = container.add()
            kv.key = a["key"]
            value = kv.value
            value.SetInParent()
            fill_value(value, a.get("value") or {})

    out = svc.ExportTraceServiceRequest()
    for rs in request.get("resourceSpans", ()):
        rs_msg = out.resource_spans.add()
        rs_msg.resource.SetInParent()
        fill_attributes(rs_msg.resource.attributes, rs.get("resource", {}).get("attributes", ()))
        for ss in rs.get("scopeSpans", ()):
            ss_msg = rs_msg.scope_spans.add()
            scope = ss.get("scope")
            if scope is not None:
                ss_msg.scope.SetInParent()
                ss_msg.scope.name = scope.get("name", "")
                ss_msg.scope.version = scope.get("version", "")
            spans = ss_msg.spans
            for sp in ss.get("spans", ()):
                msg = spans.add()
                msg.trace_id = bytes.fromhex(sp["traceId"])
                msg.span_id = bytes.fromhex(sp["spanId"])
                if sp.get("parentSpanId"):
                    msg.parent_span_id = bytes.fromhex(sp["parentSpanId"])
                msg.name = sp.get("name", "")
                msg.kind = sp.get("kind", 0)
                msg.start_time_unix_nano = int(sp.get("startTimeUnixNano", 0))
                msg.end_time_unix_nano = int(sp.get("endTimeUnixNano", 0))
                fill_attributes(msg.attributes, sp.get("attributes", ()))
                for e in sp.get("events", ()):
                    ev = msg.events.add()
                    ev.time_unix_nano = int(e.get("timeUnixNano", 0))
                    ev.name = e.get("name", "")
                    fill_attributes(ev.attributes, e.get("attributes", ()))
                status = sp.get("status")
                if status:
                    msg.status.code = status.get("code", 0)
                    msg.status.message = status.get("message", "")
    return out.SerializeToString()


def _partial_success(body: bytes, content_type: str) -> tuple[int, str]:
    if not body:
        return 0, ""
    try:
        if "json" in content_type:
            doc = json.loads(body)
            ps = doc.get("partialSuccess") or {}
            return int(ps.get("rejectedSpans") or 0), str(ps.get("errorMessage") or "")
        if "protobuf" in content_type:
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # type: ignore[import-not-found]

            msg = trace_service_pb2.ExportTraceServiceResponse()
            msg.ParseFromString(body)
            return int(msg.partial_success.rejected_spans), msg.partial_success.error_message
    except Exception:  # noqa: BLE001 - a malformed success body is not an export failure
        return 0, ""
    return 0, ""


def encode_body(request: Mapping[str, Any], protocol: str = "http/protobuf",
                compression: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and headers for an OTLP/JSON request dict under ``protocol``/``compression``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown OTLP protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    body, ctype = _encode(request, protocol)
    return _finish_body(body, ctype, compression)


def encode_json_body(request: bytes, protocol: str = "http/protobuf",
                     compression: str | None = None) -> tuple[bytes, dict[str, str]]:
    """:func:`encode_body` of a request already encoded as OTLP/JSON bytes (sent as they are
    under ``http/json``)."""
    if protocol == "http/json":
        return _finish_body(request, "application/json", compression)
    return encode_body(orjson.loads(request), protocol, compression)


def _finish_body(body: bytes, ctype: str, compression: str | None) -> tuple[bytes, dict[str, str]]:
    hdrs = {"Content-Type": ctype, "User-Agent": "cirron-otlp"}
    if compression == "gzip":
        body = gzip.compress(body, compresslevel=6)
        hdrs["Content-Encoding"] = "gzip"
    return body, hdrs


class _Attempts:
    """The retry policy as a small state machine with no I/O, shared by the sync and async loops.

    The loop calls :meth:`attempt_timeout`, sends, then :meth:`on_response` (returns the result
    on success, raises on a refusal, ``None`` to retry) or :meth:`on_transport_error`; then
    :meth:`next_delay` says how long to sleep before the next attempt (``None``: give up, and
    :meth:`give_up` is the error to raise).
    """

    def __init__(self, url: str, *, timeout: float, deadline: float, max_attempts: int, base_backoff: float,
                 max_backoff: float, otlp: bool = True, accept: frozenset[int] = frozenset(),
                 on_warning: Callable[[str], None] | None = None, what: str = "export") -> None:
        self.url = url
        self.timeout = timeout
        self.deadline = deadline
        self.max_attempts = max(1, max_attempts)
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.otlp = otlp
        self.accept = accept
        self.warn = on_warning or (lambda m: _log.warning("%s", m))
        self.what = what
        self.start = time.monotonic()
        self.attempt = 0
        self.last_error = ""
        self.last_status: int | None = None
        self._retry_after: float | None = None

    def attempt_timeout(self) -> float:
        self.attempt += 1
        self._retry_after = None
        remaining = self.deadline - (time.monotonic() - self.start)
        return max(0.1, min(self.timeout, remaining))

    def on_response(self, status: int, headers: Mapping[str, str], content: bytes, text: str) -> SendResult | None:
        self.last_status = status
        if 200 <= status < 300 or status in self.accept:
            rejected, msg = (0, "")
            if self.otlp and 200 <= status < 300:
                rejected, msg = _partial_success(content, headers.get("content-type", ""))
                if rejected or msg:
                    self.warn(f"OTLP receiver accepted the export partially: {rejected} span(s) rejected"
                              + (f" ({msg})" if msg else ""))
            return SendResult(status, self.attempt, rejected, msg)
        snippet = body_snippet(text)
        self.last_error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status not in RETRYABLE_STATUS:
            who = "OTLP receiver" if self.otlp else "Receiver"
            raise OTLPExportError(f"{who} at {self.url} refused the {self.what} ({self.last_error})",
                                  status, self.attempt)
        self._retry_after = parse_retry_after(headers.get("retry-after"))
        return None

    def on_transport_error(self, exc: BaseException) -> None:
        """Note a failed attempt; raise at once when retrying cannot help (an unverifiable certificate)."""
        bad_cert = _certificate_failure(exc)
        if bad_cert is not None:
            raise OTLPExportError(f"could not {self.what} to {self.url}: its TLS certificate was refused "
                                  f"({bad_cert}); set OTEL_EXPORTER_OTLP_CERTIFICATE to the CA file that signed it",
                                  None, self.attempt, transient=False)
        self.last_error = redact(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
        self.last_status = None

    def next_delay(self) -> float | None:
        if self.attempt >= self.max_attempts:
            return None
        if self._retry_after is not None:
            delay = self._retry_after
        else:
            delay = min(self.max_backoff, self.base_backoff * (2 ** (self.attempt - 1)))
            delay *= 0.5 + random.random() / 2
        if time.monotonic() - self.start + delay >= self.deadline:
            return None
        return delay

    def give_up(self) -> OTLPExportError:
        return OTLPExportError(f"could not {self.what} to {self.url} after {self.attempt} attempt(s): "
                               f"{self.last_error}", self.last_status, self.attempt)


def _certificate_failure(exc: BaseException) -> str | None:
    """``"CERTIFICATE_VERIFY_FAILED: <why>"`` when ``exc`` (or what it wraps) is a TLS certificate
    verification failure, else ``None``."""
    import ssl

    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the ssl one
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"{seen.reason or 'CERTIFICATE_VERIFY_FAILED'}: {seen.verify_message or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


def post_with_retries(client: Any, url: str, body: bytes, headers: Mapping[str, str], *,
                      sleep: Callable[[float], None] = time.sleep, **policy: Any) -> SendResult:
    """POST ``body`` with ``client`` (an ``httpx.Client``) under the retry policy of :class:`_Attempts`."""
    import httpx

    state = _Attempts(url, **policy)
    while True:
        t = state.attempt_timeout()
        try:
            resp = client.post(url, content=body, headers=dict(headers), timeout=t)
        except (httpx.TransportError, OSError) as exc:
            state.on_transport_error(exc)
        else:
            result = state.on_response(resp.status_code, resp.headers, resp.content, resp.text)
            if result is not None:
                return result
        delay = state.next_delay()
        if delay is None:
            raise state.give_up()
        sleep(delay)


async def apost_with_retries(client: Any, url: str, body: bytes, headers: Mapping[str, str], *,
                             sleep: Callable[[float], Any] | None = None, **policy: Any) -> SendResult:
    """The async twin of :func:`post_with_retries` (``client`` is an ``httpx.AsyncClient``)."""
    import anyio
    import httpx

    state = _Attempts(url, **policy)
    while True:
        t = state.attempt_timeout()
        try:
            resp = await client.post(url, content=body, headers=dict(headers), timeout=t)
        except (httpx.TransportError, OSError) as exc:
            state.on_transport_error(exc)
        else:
            result = state.on_response(resp.status_code, resp.headers, resp.content, resp.text)
            if result is not None:
                return result
        delay = state.next_delay()
        if delay is None:
            raise state.give_up()
        await (sleep or anyio.sleep)(delay)


def send_otlp(
    request: Mapping[str, Any],
    endpoint: str,
    *,
    protocol: str = "http/protobuf",
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    deadline: float = DEFAULT_DEADLINE_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    compression: str | None = None,
    verify: Any = True,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    on_warning: Callable[[str], None] | None = None,
    base_backoff: float = DEFAULT_BASE_BACKOFF_S,
    max_backoff: float = DEFAULT_MAX_BACKOFF_S,
) -> SendResult:
    """POST ``request`` (an OTLP/JSON ``ExportTraceServiceRequest`` dict) to ``endpoint``.

    Returns a :class:`SendResult` on a 2xx answer; raises :class:`OTLPExportError` when the
    receiver refuses it (non-retryable status) or every attempt within ``deadline`` failed.
    The defaults are OpenTelemetry's (``http/protobuf``, no compression); :meth:`OtlpSettings.send`
    fills every argument from the ``OTEL_EXPORTER_OTLP_*`` variables. ``verify`` is httpx's (an
    ``ssl.SSLContext`` from :meth:`OtlpSettings.ssl_context`). ``client`` may be an
    ``httpx.Client`` to reuse; ``sleep`` is injectable for tests.
    """
    return _post_request(request, resolve_traces_url(endpoint), protocol=protocol, headers=headers, timeout=timeout,
                         deadline=deadline, max_attempts=max_attempts, compression=compression, verify=verify,
                         client=client, sleep=sleep, on_warning=on_warning, base_backoff=base_backoff,
                         max_backoff=max_backoff)


def _post_request(request: Mapping[str, Any], url: str, *, protocol: str, headers: Mapping[str, str] | None,
                  timeout: float, compression: str | None, verify: Any, client: Any,
                  sleep: Callable[[float], None], **policy: Any) -> SendResult:
    """:func:`send_otlp` to ``url`` exactly as given."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown OTLP protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    import httpx

    body, hdrs = encode_body(request, protocol, compression)
    hdrs.update(headers or {})
    own = client is None
    if own:
        client = httpx.Client(timeout=timeout, verify=verify)
    try:
        return post_with_retries(client, url, body, hdrs, sleep=sleep, timeout=timeout, **policy)
    finally:
        if own:
            client.close()


# ------------------------------------------------------------------ OTEL_EXPORTER_OTLP_* settings

DEFAULT_TRACES_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_TIMEOUT_S = 10.0
ENV_PREFIX = "OTEL_EXPORTER_OTLP_"
ENV_TRACES_PREFIX = "OTEL_EXPORTER_OTLP_TRACES_"


def parse_otlp_headers(value: str) -> dict[str, str]:
    """``k=v,k2=v2`` (W3C baggage-like, URL-encoded) → dict; raises ``ValueError`` on a bad entry."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = unquote(key).strip()
        if not sep or not key:
            raise ValueError(f"bad header entry {item.strip()!r} (expected key=value)")
        out[key] = unquote(val).strip()
    return out


_TLS_FILES = (("certificate", "CERTIFICATE"), ("client_key", "CLIENT_KEY"),
              ("client_certificate", "CLIENT_CERTIFICATE"))
COMPRESSIONS = ("gzip", "none")


@dataclass(frozen=True)
class OtlpSettings:
    """Where and how OTLP goes out: the standard ``OTEL_EXPORTER_OTLP_*`` variables.

    The one place both the live ``otlp`` sink and ``cirron traces export --endpoint`` get their
    endpoint, protocol, headers, compression, timeout and TLS files from. Each
    ``OTEL_EXPORTER_OTLP_TRACES_<X>`` wins over ``OTEL_EXPORTER_OTLP_<X>``; the command's flags
    win over both (:meth:`override`). ``sources`` keeps where each value came from
    (``cirron status`` shows it).
    """

    endpoint: str = DEFAULT_TRACES_ENDPOINT
    protocol: str = "http/protobuf"
    headers: Mapping[str, str] = None  # type: ignore[assignment]
    compression: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    sources: Mapping[str, str] = None  # type: ignore[assignment]
    #: CA bundle to verify the receiver with; client certificate and key for mutual TLS (paths).
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtlpSettings:
        """Read the environment; a bad value raises :class:`cirron.CirronConfigError` naming the variable."""
        import os

        from cirron._errors import CirronConfigError

        env = os.environ if environ is None else environ
        sources: dict[str, str] = {}

        def get(name: str) -> tuple[str | None, str | None]:
            for var in (ENV_TRACES_PREFIX + name, ENV_PREFIX + name):
                v = env.get(var, "").strip()
                if v:
                    return v, var
            return None, None

        endpoint = DEFAULT_TRACES_ENDPOINT
        sources["endpoint"] = "default"
        v = env.get(ENV_TRACES_PREFIX + "ENDPOINT", "").strip()
        if v:
            endpoint, sources["endpoint"] = v, f"env {ENV_TRACES_PREFIX}ENDPOINT"
        elif env.get(ENV_PREFIX + "ENDPOINT", "").strip():
            base = env[ENV_PREFIX + "ENDPOINT"].strip()
            endpoint, sources["endpoint"] = base.rstrip("/") + "/v1/traces", f"env {ENV_PREFIX}ENDPOINT"
        if not endpoint.startswith(("http://", "https://")):
            raise CirronConfigError(f"{sources['endpoint'][4:]}={endpoint!r} must be an http:// or https:// URL")

        protocol, var = get("PROTOCOL")
        sources["protocol"] = f"env {var}" if var else "default"
        protocol = protocol or "http/protobuf"
        if protocol not in PROTOCOLS:
            raise CirronConfigError(f"{var}={protocol!r} is not supported by cirron; "
                                    f"use {' or '.join(PROTOCOLS)} (gRPC: put an OpenTelemetry Collector in between)")

        raw, var = get("HEADERS")
        sources["headers"] = f"env {var}" if var else "default"
        try:
            headers = parse_otlp_headers(raw) if raw else {}
        except ValueError as exc:
            raise CirronConfigError(f"{var}: {exc}") from None

        comp, var = get("COMPRESSION")
        sources["compression"] = f"env {var}" if var else "default"
        comp = (comp or "none").lower()
        if comp not in COMPRESSIONS:
            raise CirronConfigError(f"{var}={comp!r} must be gzip or none")

        raw, var = get("TIMEOUT")
        sources["timeout"] = f"env {var}" if var else "default"
        timeout = DEFAULT_TIMEOUT_S
        if raw:
            try:
                ms = float(raw)
            except ValueError:
                ms = -1.0
            if not ms > 0:
                raise CirronConfigError(f"{var}={raw!r} must be a positive number of milliseconds")
            timeout = ms / 1000.0

        tls: dict[str, str | None] = {}
        for field_name, suffix in _TLS_FILES:
            path, var = get(suffix)
            sources[field_name] = f"env {var}" if var else "default"
            if path is not None and not os.path.isfile(path):
                raise CirronConfigError(f"{var}={path!r}: no such file")
            tls[field_name] = path
        if (tls["client_key"] is None) != (tls["client_certificate"] is None):
            raise CirronConfigError(f"{ENV_PREFIX}CLIENT_KEY and {ENV_PREFIX}CLIENT_CERTIFICATE go together "
                                    "(mutual TLS needs both)")
        return cls(endpoint=endpoint, protocol=protocol, headers=headers,
                   compression="gzip" if comp == "gzip" else None, timeout=timeout, sources=sources, **tls)

    def override(self, *, endpoint: str | None = None, protocol: str | None = None,
                 headers: Mapping[str, str] | None = None, compression: str | None = None) -> OtlpSettings:
        """These settings with the command's flags applied (``None``: not given). ``endpoint`` gets
        ``/v1/traces`` appended unless it already ends so; ``headers`` are added, a flag's value
        winning over the variable's for the same name."""
        from dataclasses import replace

        sources = dict(self.sources or {})
        changes: dict[str, Any] = {}
        if endpoint is not None:
            changes["endpoint"], sources["endpoint"] = resolve_traces_url(endpoint), "flag --endpoint"
        if protocol is not None:
            changes["protocol"], sources["protocol"] = protocol, "flag --protocol"
        if headers:
            changes["headers"], sources["headers"] = {**(self.headers or {}), **headers}, "flag --header"
        if compression is not None:
            changes["compression"] = "gzip" if compression == "gzip" else None
            sources["compression"] = "flag --compression"
        return replace(self, sources=sources, **changes)

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` for httpx's ``verify=`` from the TLS files, or ``True`` (the defaults)."""
        if not (self.certificate or self.client_certificate):
            return True
        import ssl

        from cirron._errors import CirronConfigError

        try:
            ctx = ssl.create_default_context(cafile=self.certificate)
            if self.client_certificate:
                ctx.load_cert_chain(self.client_certificate, self.client_key)
        except (ssl.SSLError, OSError) as exc:
            raise CirronConfigError(f"cannot use the OTLP TLS files ({self.certificate or ''} "
                                    f"{self.client_certificate or ''}): {exc}") from None
        return ctx

    def send(self, request: Mapping[str, Any], **policy: Any) -> SendResult:
        """:func:`send_otlp` of ``request`` with these settings (``policy``: deadline, attempts, ...;
        ``timeout``, per attempt, defaults to the settings')."""
        policy.setdefault("timeout", self.timeout)
        policy.setdefault("deadline", DEFAULT_DEADLINE_S)
        policy.setdefault("max_attempts", DEFAULT_MAX_ATTEMPTS)
        policy.setdefault("base_backoff", DEFAULT_BASE_BACKOFF_S)
        policy.setdefault("max_backoff", DEFAULT_MAX_BACKOFF_S)
        return _post_request(request, self.endpoint, protocol=self.protocol, headers=self.headers,
                             compression=self.compression, verify=self.ssl_context(), client=policy.pop("client", None),
                             sleep=policy.pop("sleep", time.sleep), **policy)

    def send_stream(self, requests: Iterable[tuple[bytes, int]], **policy: Any) -> StreamResult:
        """POST each ``(OTLP/JSON body, spans)`` of ``requests`` in turn (one connection for all,
        each request under the retry policy of :meth:`send`); stops at the first that fails,
        raising :class:`OTLPStreamError` with what was sent before it."""
        import httpx

        policy.setdefault("timeout", self.timeout)
        policy.setdefault("deadline", DEFAULT_DEADLINE_S)
        policy.setdefault("max_attempts", DEFAULT_MAX_ATTEMPTS)
        policy.setdefault("base_backoff", DEFAULT_BASE_BACKOFF_S)
        policy.setdefault("max_backoff", DEFAULT_MAX_BACKOFF_S)
        url = self.endpoint
        done = StreamResult()
        with httpx.Client(timeout=policy["timeout"], verify=self.ssl_context()) as client:
            for request, spans in requests:
                body, hdrs = encode_json_body(request, self.protocol, self.compression)
                hdrs.update(self.headers or {})
                try:
                    res = post_with_retries(client, url, body, hdrs, **policy)
                except OTLPExportError as exc:
                    raise OTLPStreamError(exc, done) from None
                done.requests += 1
                done.spans += spans
                done.attempts += res.attempts
                done.rejected_spans += res.rejected_spans
                done.status = res.status
        return done

    def masked(self) -> dict[str, Any]:
        """For ``cirron status``: header values hidden (they usually carry tokens)."""
        src = self.sources or {}
        return {
            "endpoint": {"value": self.endpoint, "source": src.get("endpoint", "default")},
            "protocol": {"value": self.protocol, "source": src.get("protocol", "default")},
            "headers": {"value": dict.fromkeys(self.headers or {}, "****"), "source": src.get("headers", "default")},
            "compression": {"value": self.compression or "none", "source": src.get("compression", "default")},
            "timeout": {"value": self.timeout, "source": src.get("timeout", "default")},
            **{name: {"value": getattr(self, name), "source": src.get(name, "default")} for name, _ in _TLS_FILES},
        }
