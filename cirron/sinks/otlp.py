"""``output="otlp"``: closed spans, with their marks as events, sent live over OTLP/HTTP.

Where and how it sends comes from the standard ``OTEL_EXPORTER_OTLP_*`` variables
(:class:`cirron.export.otlp_http.OtlpSettings`); the encoding is the one the file export uses
(:mod:`cirron.export._otlp`), so a live trace and an exported one look the same to a receiver.

What the sink does with each batch the flush service hands it:

* open span records (``end_ns`` null) are only remembered; a span is sent once, when its closed
  record arrives. The session root therefore goes out when the session ends.
* marks travel as events of their span, so a mark whose span is still open (or not seen yet)
  waits for it, within :data:`MAX_HELD_MARKS`; beyond that, or when its span never shows up,
  it is counted as dropped (``marks_held_overflow`` / ``marks_orphaned``). Marks recorded outside
  any scope belong to the session root and wait for the end of the session, within
  :data:`MAX_ROOT_MARKS` (``marks_root_overflow`` beyond).
* ``request`` spans get the GenAI semantic-convention attributes from the encoder
  (:func:`cirron.export._otlp.genai_attributes`), from the marks that travel with them.
* closed spans (with their marks) wait in the sink's own bounded queue
  (:data:`MAX_QUEUE_SPANS` spans, :data:`MAX_QUEUE_MARKS` marks; the oldest request is dropped
  and counted as ``spans_queue_full`` when it is full) and go out in requests of at most
  :data:`EXPORT_BATCH_SPANS` spans, each retried under the shared policy of
  :mod:`cirron.export.otlp_http` (429/502/503/504 and dropped connections only, backoff with
  jitter, ``Retry-After``). A refused request (400, …) is counted as ``spans_export_failed``.
* sending runs in the sink's own background task: :meth:`OtlpSink.write` only sorts and queues.
  The first failed attempt shows the receiver as down in ``health()`` (``receiver_down``,
  ``errors``, ``last_error``) at once; when a request still fails after its retries, the sink
  pauses (1 s, doubling up to :data:`MAX_DOWN_BACKOFF`), then probes again with a single attempt,
  in the background, whether or not new records arrive. A request that failed
  :data:`MAX_ROUNDS` rounds is dropped (``spans_export_failed``). So a dead collector costs one
  connection attempt now and then, the flush service's stream never backs up, and memory stays
  bounded by the queue.
* the user's threads never wait on any of this; at shutdown the sink notices that the session
  root has closed and gives what is queued a bounded final budget
  (:data:`FINAL_FLUSH_FRACTION` of the shutdown timeout, at most the OTLP timeout; none at all
  when the receiver is marked down at that moment); whatever does not make it is counted
  (``spans_shutdown``/``marks_shutdown``). ``ci.flush()`` waits (within its own timeout) until
  the sink has sent what it was given, and returns False at once while the receiver is down
  (the records stay queued for the background retries).

``http/protobuf`` (the OpenTelemetry default) needs the ``otlp`` extra
(``pip install 'cirron-trace[otlp]'``); without it ``ci.profile(output="otlp")`` raises
:class:`cirron.CirronDependencyError` right away rather than failing later in the background.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import anyio

from cirron._errors import require
from cirron._flush.batch import Batch
from cirron._redact import install_log_filter
from cirron._schema import ROOT_SENTINEL
from cirron.export.otlp_http import OtlpSettings
from cirron.sinks import Sink

_log = install_log_filter(logging.getLogger("cirron.otlp"))

#: Spans per OTLP request (the OpenTelemetry SDK's default ``max_export_batch_size``).
EXPORT_BATCH_SPANS = 512
#: Marks held back while their span is open (all spans together, the session root apart).
MAX_HELD_MARKS = 100_000
#: Marks recorded outside any scope wait for the session root, sent at the end: at most this many.
MAX_ROOT_MARKS = 10_000
#: Open spans remembered; beyond this their marks are treated as orphans.
MAX_OPEN_TRACKED = 100_000
#: Writes a mark waits for a span that was never seen open before it counts as orphaned.
ORPHAN_AFTER_WRITES = 3
#: Per request and round: attempts and overall deadline (seconds).
MAX_ATTEMPTS = 6
SEND_DEADLINE = 15.0
#: Attempts per request once the session has ended (the program is exiting).
FINAL_MAX_ATTEMPTS = 2
#: Rounds (a retry loop each) before a request that keeps failing is dropped.
MAX_ROUNDS = 3
#: Queued for sending (closed spans / their marks) while the receiver is slow or down.
MAX_QUEUE_SPANS = 8_192
MAX_QUEUE_MARKS = 65_536
#: Pause after a failed round while the receiver looks down: starts at 1 s, doubles up to this.
MAX_DOWN_BACKOFF = 30.0
#: Share of the shutdown timeout given to the final sends once the session root has closed.
FINAL_FLUSH_FRACTION = 0.6
#: How often an in-flight request checks whether the session is shutting down (seconds).
STOP_POLL = 0.05

class _QueuedExport:
    """One queued OTLP request: the records until first encoded, then only the body."""

    __slots__ = ("session_id", "resource", "spans", "marks", "n_spans", "n_marks", "rounds", "body", "headers")

    def __init__(self, session_id: str, resource: dict[str, Any], spans: list[dict[str, Any]],
                 marks: list[dict[str, Any]]) -> None:
        self.session_id, self.resource, self.spans, self.marks = session_id, resource, spans, marks
        self.n_spans, self.n_marks = len(spans), len(marks)
        self.rounds = 0
        self.body: bytes | None = None
        self.headers: dict[str, str] = {}

    def encode(self, settings: OtlpSettings) -> None:
        from cirron.export._otlp import build_request, encode_resource_spans
        from cirron.export.otlp_http import encode_body

        request = build_request([encode_resource_spans(self.session_id, self.resource, self.spans, self.marks)])
        self.body, self.headers = encode_body(request, settings.protocol, settings.compression)
        self.spans = self.marks = []  # a retry re-sends the bytes; the dicts can go


class OtlpSink(Sink):
    name = "otlp"
    is_async = True

    def __init__(self, owner: Any, settings: OtlpSettings | None = None) -> None:
        super().__init__()
        self.settings: OtlpSettings = settings or OtlpSettings.from_env()
        if self.settings.protocol == "http/protobuf":
            # Fail at profile() time, in the user's thread, with the pip hint; not later in the background.
            require("opentelemetry.proto.collector.trace.v1.trace_service_pb2", "OTLP http/protobuf export", "otlp")
        self._verify = self.settings.ssl_context()  # a bad TLS file fails profile(), not the background
        self._owner = owner
        cfg = getattr(owner, "_config", None)
        shutdown_timeout = getattr(cfg, "shutdown_timeout", 5.0) or 5.0
        self.final_budget: float = min(self.settings.timeout, FINAL_FLUSH_FRACTION * shutdown_timeout)
        self._client: Any = None
        self._root: Any = None
        self._session_id: str | None = None
        self._open: dict[str, None] = {}
        #: span id → [marks]; ``_held_since`` for spans never seen open (write number of the first mark).
        self._held: dict[str, list[dict[str, Any]]] = {}
        self._held_since: dict[str, int] = {}
        self._held_count = 0
        self._writes = 0
        self._stop_deadline: float | None = None
        self._warned_partial = False
        self._warned_refused = False
        #: Requests waiting to be sent, oldest first.
        self._queue: deque[_QueuedExport] = deque()
        self._queued_spans = 0
        self._queued_marks = 0
        self._down_until = 0.0
        self._down_backoff = 0.0
        #: An attempt failed and none has succeeded since: the receiver is shown as down.
        self._failing = False
        #: Set to wake the background sender; ``_progress`` is set whenever the queue moved on.
        self._kick: anyio.Event | None = None
        self._progress: anyio.Event | None = None
        self.requests_sent: int = 0
        self.retries: int = 0
        self.spans_rejected: int = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        import httpx

        self._root = getattr(getattr(self._owner, "_rec", None), "root", None)
        self._kick = anyio.Event()
        self._progress = anyio.Event()
        self._client = httpx.AsyncClient(timeout=self.settings.timeout, headers=dict(self.settings.headers or {}),
                                         verify=self._verify)

    async def aclose(self) -> None:
        # Called by the service after the final batch; whatever is still here cannot be sent now.
        if self._queue:
            self._drop("shutdown", spans=self._queued_spans, marks=self._queued_marks)
            self._queue.clear()
            self._queued_spans = self._queued_marks = 0
        if self._held_count:
            self._drop("shutdown", marks=self._held_count)
            self._held.clear()
            self._held_since.clear()
            self._held_count = 0
        if self._open:
            self._drop("open_at_shutdown", spans=len(self._open))
            self._open.clear()
        client, self._client = self._client, None
        if client is not None:
            with anyio.move_on_after(0.5):
                await client.aclose()

    def pending(self) -> tuple[int, int]:
        return self._queued_spans, self._queued_marks + self._held_count

    def backlog(self) -> tuple[int, int]:
        return self._queued_spans, self._queued_marks

    @property
    def receiver_down(self) -> bool:
        return self._failing or time.monotonic() < self._down_until

    def state(self) -> dict[str, Any]:
        st = super().state()
        st.update(endpoint=self.settings.endpoint, protocol=self.settings.protocol, requests_sent=self.requests_sent,
                  retries=self.retries, spans_rejected=self.spans_rejected, open_spans_tracked=len(self._open),
                  queued_requests=len(self._queue), receiver_down=self.receiver_down)
        return st

    # -- writing -------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        self._writes += 1
        if batch.session_id is not None:
            self._session_id = batch.session_id
        final = self._final_time_left()
        if final is not None and time.monotonic() < self._down_until:
            self._stop_deadline = time.monotonic()  # exiting while the receiver is down: do not wait for it
            final = 0.0
        if self._client is None or final == 0.0:
            # Past the final deadline (or never started): count without sorting, the exit is waiting.
            self._drop("shutdown", spans=batch.closed_spans, marks=batch.mark_count)
            if self._open:  # their closed records are counted here, not again as open_at_shutdown
                open_ids = self._open
                for s in batch.spans:
                    if s.get("end_ns") is not None and s.get("id") in open_ids:
                        del open_ids[s["id"]]
            return
        spans, marks = self._sort(batch)
        session_id = self._session_id or batch.session_id or "unknown"
        for i in range(0, len(spans), EXPORT_BATCH_SPANS):
            chunk = spans[i : i + EXPORT_BATCH_SPANS]
            chunk_marks = [m for s in chunk for m in marks.get(s["id"], ())]
            self._enqueue(_QueuedExport(session_id, batch.resource, chunk, chunk_marks))
        if self._kick is not None:
            self._kick.set()

    async def run_background(self) -> None:
        """Send the queue as it fills; while the receiver is down, probe it again after each pause."""
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick = anyio.Event()
            while self._queue and self._client is not None:
                final = self._final_time_left()
                if final == 0.0:
                    break  # counted in aclose()
                pause = self._down_until - time.monotonic()
                if pause > 0:
                    if final is not None:
                        break  # exiting while the receiver is down: aclose() counts the rest
                    await anyio.sleep(pause)
                    continue
                await self._drain()
                self._note_progress()
            self._note_progress()

    async def settle(self) -> None:
        """Wait until the queue is sent, unless the receiver is down or the exit deadline passed."""
        while self._queue and self._client is not None and not self.receiver_down:
            progress = self._progress
            if progress is None:
                return
            final = self._final_time_left()
            if final == 0.0:
                return
            with anyio.move_on_after(final):
                await progress.wait()

    def _note_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = anyio.Event()

    async def _pause_after_failed_attempt(self, delay: float) -> None:
        """Between two attempts of one request: show the receiver as down now, not after the round."""
        self._failing = True
        self.note_error(ConnectionError(
            f"OTLP receiver {self.settings.endpoint} did not take a request; retrying in {delay:.1f} s"))
        self._note_progress()
        await anyio.sleep(delay)

    def _enqueue(self, item: _QueuedExport) -> None:
        self._queue.append(item)
        self._queued_spans += item.n_spans
        self._queued_marks += item.n_marks
        while len(self._queue) > 1 and (self._queued_spans > MAX_QUEUE_SPANS or self._queued_marks > MAX_QUEUE_MARKS):
            old = self._queue.popleft()
            self._unqueue(old)
            self._drop("queue_full", spans=old.n_spans, marks=old.n_marks)

    def _unqueue(self, item: _QueuedExport) -> None:
        self._queued_spans -= item.n_spans
        self._queued_marks -= item.n_marks

    async def _drain(self) -> None:
        """Send the queue in order, unless the receiver looks down (then it waits for a later write)."""
        while self._queue:
            final = self._final_time_left()
            if final == 0.0 or self._client is None:
                return  # counted in aclose()
            if final is None and time.monotonic() < self._down_until:
                return
            item = self._queue[0]
            if self._down_backoff > 0:
                attempts = 1  # the receiver looked down: one probe, no retry loop
            elif final is not None:
                attempts = FINAL_MAX_ATTEMPTS  # the user's program is exiting: one retry at most
            else:
                attempts = MAX_ATTEMPTS
            outcome = await self._export(item, max_attempts=attempts)
            if outcome == "retry":
                self._failing = True
                item.rounds += 1
                if item.rounds >= MAX_ROUNDS:
                    self._queue.popleft()
                    self._unqueue(item)
                    self._drop("export_failed", spans=item.n_spans, marks=item.n_marks)
                self._down_backoff = min(MAX_DOWN_BACKOFF, max(1.0, self._down_backoff * 2))
                self._down_until = time.monotonic() + self._down_backoff
                if final is not None:
                    self._stop_deadline = time.monotonic()  # down at exit: no more tries; aclose() counts the rest
                return
            self._queue.popleft()
            self._unqueue(item)
            if outcome == "cut":
                self._drop("shutdown", spans=item.n_spans, marks=item.n_marks)
                return
            if outcome == "ok":
                self._failing = False
                self._down_backoff = 0.0
                self._down_until = 0.0

    def _sort(self, batch: Batch) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """Closed spans ready to go, and their marks (the held ones included); hold the rest."""
        root_id = self._session_id
        closed: list[dict[str, Any]] = []
        for s in batch.spans:
            sid = s.get("id")
            if not isinstance(sid, str):
                continue
            if s.get("end_ns") is None:
                if len(self._open) < MAX_OPEN_TRACKED:
                    self._open[sid] = None
                    self._held_since.pop(sid, None)  # seen open: its marks wait without a limit in writes
            else:
                self._open.pop(sid, None)
                closed.append(s)
        for m in batch.marks:
            sid = m.get("span_id")
            if sid == ROOT_SENTINEL or not isinstance(sid, str):
                sid = root_id
                if sid is None:
                    self._drop("orphaned", marks=1)
                    continue
            self._hold(sid, m)
        ready: dict[str, list[dict[str, Any]]] = {}
        out = []
        for s in closed:
            sid = s["id"]
            ms = self._held.pop(sid, None)
            self._held_since.pop(sid, None)
            if ms:
                self._held_count -= len(ms)
                ready[sid] = ms
            out.append(s)
        # Marks of spans never seen, after a few writes: their span closed before we knew it.
        if self._held_since:
            for sid, first in list(self._held_since.items()):
                if self._writes - first >= ORPHAN_AFTER_WRITES:
                    ms = self._held.pop(sid, [])
                    del self._held_since[sid]
                    self._held_count -= len(ms)
                    self._drop("orphaned", marks=len(ms))
        return out, ready

    def _hold(self, sid: str, mark: dict[str, Any]) -> None:
        lst = self._held.get(sid)
        if sid == self._session_id:
            # The session root's marks wait for the whole run: a budget of their own, so a long
            # loop of top-level marks never crowds out the marks of ordinary spans.
            if lst is not None and len(lst) >= MAX_ROOT_MARKS:
                self._drop("root_overflow", marks=1)
                return
        elif self._held_count - len(self._held.get(self._session_id, ())) >= MAX_HELD_MARKS:
            self._drop("held_overflow", marks=1)
            return
        if lst is None:
            lst = self._held[sid] = []
            if sid not in self._open and sid != self._session_id:
                self._held_since[sid] = self._writes
        lst.append(mark)
        self._held_count += 1

    async def _export(self, item: _QueuedExport, max_attempts: int) -> str:
        """One request with its retries: ``ok`` | ``dropped`` (refused/unencodable) | ``retry`` | ``cut``."""
        from cirron.export.otlp_http import OTLPExportError, apost_with_retries

        spans, marks = item.n_spans, item.n_marks
        if item.body is None:
            try:
                item.encode(self.settings)
            except Exception as exc:  # noqa: BLE001 - a record we cannot encode is dropped, not retried
                self.note_error(exc)
                self._drop("encode_error", spans=spans, marks=marks)
                return "dropped"
        body, headers = item.body, item.headers
        box: list[Any] = []

        async def send() -> None:
            try:
                box.append(await apost_with_retries(
                    self._client, self.settings.endpoint, body, headers, timeout=self.settings.timeout,
                    deadline=SEND_DEADLINE, max_attempts=max_attempts, base_backoff=0.5, max_backoff=8.0,
                    on_warning=self._warn_partial, sleep=self._pause_after_failed_attempt))
            except Exception as exc:  # noqa: BLE001 - reported below
                box.append(exc)
            tg.cancel_scope.cancel()

        async def watch_stop() -> None:
            # The user's shutdown() closed the root: cut this request at the final deadline.
            while self._final_time_left() is None:
                await anyio.sleep(STOP_POLL)
            assert self._stop_deadline is not None
            tg.cancel_scope.deadline = min(tg.cancel_scope.deadline, self._stop_deadline)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(watch_stop)
        result = box[0] if box else None
        if result is None:
            self.note_error(TimeoutError("shutdown deadline reached before the OTLP receiver answered"))
            return "cut"
        if isinstance(result, OTLPExportError):
            self.retries += max(0, result.attempts - 1)
            self.note_error(result)
            if result.transient:
                return "retry"
            self._warn_refused(result)
            self._drop("export_failed", spans=spans, marks=marks)
            return "dropped"
        if isinstance(result, BaseException):
            self.note_error(result)
            self._drop("export_failed", spans=spans, marks=marks)
            return "dropped"
        self.requests_sent += 1
        self.retries += max(0, result.attempts - 1)
        self.batches_written += 1
        rejected = min(result.rejected_spans, spans)
        self.spans_rejected += rejected
        if rejected:
            self.dropped["spans_rejected"] = self.dropped.get("spans_rejected", 0) + rejected
        self.spans_written += spans - rejected
        self.marks_written += marks
        return "ok"

    # -- helpers -------------------------------------------------------------------------------

    def _final_time_left(self) -> float | None:
        """``None`` while the session runs; once its root has closed, the seconds left to send (≥ 0)."""
        root = self._root
        if root is None or root.end_ns is None:
            return None
        now = time.monotonic()
        if self._stop_deadline is None:
            self._stop_deadline = now + self.final_budget
        return max(0.0, self._stop_deadline - now)

    def _warn_refused(self, exc: BaseException) -> None:
        if not self._warned_refused:
            self._warned_refused = True
            _log.warning("cirron otlp sink: %s; the spans are dropped (counted in health())", exc)

    def _warn_partial(self, message: str) -> None:
        if not self._warned_partial:
            self._warned_partial = True
            _log.warning("%s (further partial successes are counted in health() only)", message)

    def _drop(self, reason: str, spans: int = 0, marks: int = 0) -> None:
        if spans:
            self.dropped[f"spans_{reason}"] = self.dropped.get(f"spans_{reason}", 0) + spans
        if marks:
            self.dropped[f"marks_{reason}"] = self.dropped.get(f"marks_{reason}", 0) + marks

