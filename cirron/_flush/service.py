"""The flush service: an anyio task group that drains the buffers on a timer and feeds the sinks.

``run()`` is started with ``tg.start()``: it reports ready once the sync sinks are open (the spool
directory exists, the liveness lock is held), so the first flush never races their creation.
Sync sinks are written in a worker thread right after each drain; async sinks each run as a task
fed through a bounded memory stream. ``stop()`` does the final drain and closes everything under
one deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from cirron._flush.batch import Batch
from cirron.sinks import Sink

#: A thread buffer this full (0-1) is flushed at once rather than at the next interval.
EARLY_FLUSH_FILL = 0.5
#: Bounds on the wait between two looks at the buffers. Quiet buffers are looked at every
#: POLL_MAX_S (each look wakes a thread, which is not free in an idle server), short enough that
#: a burst starting from quiet is seen before the default mark ring fills; filling buffers more
#: often, down to POLL_MIN_S, so that they are flushed before they overflow.
POLL_MIN_S = 0.05
POLL_MAX_S = 0.1
#: Batches queued per async sink before new ones are dropped for it.
ASYNC_SINK_QUEUE = 64


def next_look(fill: float, rate: float) -> float:
    """Seconds until the next look at the buffers: half the time the fullest one needs to reach
    :data:`EARLY_FLUSH_FILL` at ``rate`` (its fill per second), within the poll bounds."""
    if rate <= 0.0:
        return POLL_MAX_S
    return min(POLL_MAX_S, max(POLL_MIN_S, (EARLY_FLUSH_FILL - fill) / rate / 2))


class _Barrier:
    """Passed down an async sink's stream; set once the sink has handled everything before it."""

    def __init__(self) -> None:
        self.event = anyio.Event()


class FlushService:
    def __init__(self, sinks: list[Sink], flush_sync: Callable[[bool], list[Batch]],
                 buffer_fill: Callable[[], float], interval: float) -> None:
        self.sinks = sinks
        self.sync_sinks = [s for s in sinks if not s.is_async]
        self.async_sinks = [s for s in sinks if s.is_async]
        self._flush_sync = flush_sync
        self._buffer_fill = buffer_fill
        self.interval = interval
        self._streams: dict[Sink, Any] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self._stopping = False
        self.running = False
        self.last_flush_ns: int | None = None
        self.last_error: str | None = None
        self.async_drops = 0
        #: Whether the last flush got everything drained into every sink, and if not, why.
        self.last_flush_ok: bool | None = None
        self.last_flush_problem: str | None = None
        #: Called at each look at the buffers (a worker reports what it holds unwritten there).
        self.on_look: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        await anyio.to_thread.run_sync(self._open_sync_sinks)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for sink in self.async_sinks:
                    send, recv = anyio.create_memory_object_stream[Any](ASYNC_SINK_QUEUE)
                    self._streams[sink] = send
                    await tg.start(self._run_async_sink, sink, recv)
                self.running = True
                task_status.started()
                await self._loop()
        finally:
            self.running = False

    async def _loop(self) -> None:
        now = time.monotonic()
        next_flush = now + self.interval
        seen_at, seen_fill, rate = now, 0.0, 0.0
        look = POLL_MAX_S
        while not self._stopping:
            wait = max(0.0, min(look, next_flush - time.monotonic()))
            with anyio.move_on_after(wait):
                await self._wake.wait()
            if self._stopping:
                break
            if self._wake.is_set():
                self._wake = anyio.Event()
            now = time.monotonic()
            fill = self._buffer_fill()
            if self.on_look is not None:
                try:
                    self.on_look()
                except Exception as exc:  # noqa: BLE001 - the loop must survive a bad tick
                    self.last_error = f"{type(exc).__name__}: {exc}"
            if now > seen_at:
                rate = max(0.0, (fill - seen_fill) / (now - seen_at))
            if now >= next_flush or fill >= EARLY_FLUSH_FILL:
                try:
                    await self.flush(wait_async=False)
                except Exception as exc:  # noqa: BLE001 - the loop must survive a bad tick
                    self.last_error = f"{type(exc).__name__}: {exc}"
                next_flush = time.monotonic() + self.interval
                fill = 0.0  # drained; the rate seen before the flush still predicts the next fill
            seen_at, seen_fill = now, fill
            look = next_look(fill, rate)

    def _open_sync_sinks(self) -> None:
        for sink in self.sync_sinks:
            try:
                sink.open()
            except Exception as exc:  # noqa: BLE001 - e.g. an unwritable spool: counted, retried
                sink.note_error(exc)

    def _close_sync_sinks(self) -> None:
        for sink in self.sync_sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                sink.note_error(exc)

    async def _run_async_sink(self, sink: Sink, recv: Any, *, task_status: TaskStatus[None]) -> None:
        try:
            await sink.start()
        except Exception as exc:  # noqa: BLE001
            sink.note_error(exc)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_background, sink)
                async with recv:
                    async for item in recv:
                        if isinstance(item, _Barrier):
                            item.event.set()
                            continue
                        try:
                            await sink.write(item)
                        except Exception as exc:  # noqa: BLE001 - a sink failure is the sink's to count
                            sink.note_error(exc)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                try:
                    await sink.aclose()
                except Exception as exc:  # noqa: BLE001
                    sink.note_error(exc)

    @staticmethod
    async def _run_background(sink: Sink) -> None:
        try:
            await sink.run_background()
        except Exception as exc:  # noqa: BLE001 - the sink's own work; counted, never fatal
            sink.note_error(exc)

    # -- flushing --------------------------------------------------------------------------

    async def flush(self, wait_async: bool = True, final: bool = False) -> bool:
        """Drain now; sync sinks are written before this returns, async ones too if ``wait_async``.

        True only when every sink took everything drained: nothing it holds back for a retry,
        nothing it dropped meanwhile. Otherwise False, with the reason in :attr:`last_flush_problem`
        (a sink known to be down answers at once: it keeps what it can and retries in the background)."""
        assert self._lock is not None
        async with self._lock:
            before = {sink: sink.losses() for sink in self.sinks}
            batches = await anyio.to_thread.run_sync(self._flush_sync, final, abandon_on_cancel=True)
            self.last_flush_ns = time.time_ns()
            barriers = []
            for sink, send in self._streams.items():
                for batch in batches:
                    try:
                        send.send_nowait(batch)
                    except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        sink.count_dropped("queue_full", batch)
                        self.async_drops += 1
                if wait_async:
                    barrier = _Barrier()
                    try:
                        await send.send(barrier)
                        barriers.append((sink, barrier))
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        pass
            for sink, barrier in barriers:
                await barrier.event.wait()
                await sink.settle()
            problems = [problem for sink in (self.sinks if wait_async else self.sync_sinks)
                        if (problem := sink.flush_problem(before[sink])) is not None]
            self.last_flush_ok = not problems
            self.last_flush_problem = "; ".join(problems) or None
        return not problems

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def stop(self, timeout: float) -> bool:
        """Final flush, then close every sink; all of it within ``timeout`` seconds."""
        ok = False
        with anyio.move_on_after(timeout if math.isfinite(timeout) else None):
            await self.flush(wait_async=True, final=True)
            for send in self._streams.values():
                await send.aclose()
            ok = True
        self._stopping = True
        self.wake()
        if not ok and self._tg is not None:
            self._tg.cancel_scope.cancel()
        # Releasing the liveness lock is instant and must happen even after a timeout.
        self._close_sync_sinks()
        return ok
