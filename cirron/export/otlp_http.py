"""Send an OTLP/JSON request to an OTLP/HTTP traces receiver (``/v1/traces``), with retries.

Shared by ``cirron traces export --format otel --endpoint`` and the live ``otlp`` sink.
Policy (OTLP/HTTP spec): gzip body; up to ``max_attempts`` attempts within ``deadline`` seconds;
retry only on 429/502/503/504 and on dropped connections/timeouts, with exponential backoff
and jitter, honouring ``Retry-After`` (seconds or an HTTP date); never on other status codes.
A 200 whose body reports ``partialSuccess`` with rejected spans is a warning, not a retry.
httpx is imported when a request is actually sent.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cirron._errors import CirronError

__all__ = [
    "PROTOCOLS",
    "RETRYABLE_STATUS",
    "OTLPExportError",
    "SendResult",
    "parse_retry_after",
    "resolve_traces_url",
    "send_otlp",
]

_log = logging.getLogger("cirron.export")

PROTOCOLS = ("http/json", "http/protobuf")
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class OTLPExportError(CirronError):
    """The receiver refused the request, or it could not be delivered before the deadline."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@dataclass
class SendResult:
    status: int
    attempts: int
    rejected_spans: int = 0
    error_message: str = ""


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
        from cirron.export._otlp import to_protobuf

        return to_protobuf(request), "application/x-protobuf"
    raise ValueError(f"unknown OTLP protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")


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


def send_otlp(
    request: Mapping[str, Any],
    endpoint: str,
    *,
    protocol: str = "http/json",
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    deadline: float = 60.0,
    max_attempts: int = 6,
    compression: str | None = "gzip",
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    on_warning: Callable[[str], None] | None = None,
    base_backoff: float = 0.5,
    max_backoff: float = 8.0,
) -> SendResult:
    """POST ``request`` (an OTLP/JSON ``ExportTraceServiceRequest`` dict) to ``endpoint``.

    Returns a :class:`SendResult` on a 2xx answer; raises :class:`OTLPExportError` when the
    receiver refuses it (non-retryable status) or every attempt within ``deadline`` failed.
    ``client`` may be an ``httpx.Client`` to reuse; ``sleep`` is injectable for tests.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown OTLP protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    import httpx

    warn = on_warning or (lambda m: _log.warning("%s", m))
    url = resolve_traces_url(endpoint)
    body, ctype = _encode(request, protocol)
    hdrs = {"Content-Type": ctype, "User-Agent": "cirron-otlp"}
    if compression == "gzip":
        body = gzip.compress(body, compresslevel=6)
        hdrs["Content-Encoding"] = "gzip"
    hdrs.update(headers or {})
    start = time.monotonic()
    own = client is None
    if own:
        client = httpx.Client(timeout=timeout)
    attempt = 0
    last_error = ""
    last_status: int | None = None
    try:
        while True:
            attempt += 1
            retry_after: float | None = None
            remaining = deadline - (time.monotonic() - start)
            try:
                resp = client.post(url, content=body, headers=hdrs, timeout=max(0.1, min(timeout, remaining)))
            except (httpx.TransportError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                last_status = None
            else:
                last_status = resp.status_code
                if 200 <= resp.status_code < 300:
                    rejected, msg = _partial_success(resp.content, resp.headers.get("content-type", ""))
                    if rejected or msg:
                        warn(f"OTLP receiver accepted the export partially: {rejected} span(s) rejected"
                             + (f" ({msg})" if msg else ""))
                    return SendResult(resp.status_code, attempt, rejected, msg)
                text = resp.text[:200].strip().replace("\n", " ")
                last_error = f"HTTP {resp.status_code}" + (f": {text}" if text else "")
                if resp.status_code not in RETRYABLE_STATUS:
                    raise OTLPExportError(f"OTLP receiver at {url} refused the export ({last_error})",
                                          resp.status_code, attempt)
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt >= max_attempts:
                break
            if retry_after is not None:
                delay = retry_after
            else:
                delay = min(max_backoff, base_backoff * (2 ** (attempt - 1)))
                delay = delay * (0.5 + random.random() / 2)
            if time.monotonic() - start + delay >= deadline:
                break
            sleep(delay)
        raise OTLPExportError(
            f"could not export to {url} after {attempt} attempt(s): {last_error}", last_status, attempt
        )
    finally:
        if own:
            client.close()
