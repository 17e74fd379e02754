"""Where the flush service's event loop lives.

* :class:`ThreadRuntime` — for sync hosts (a script, Flask): one daemon thread running an anyio
  loop with a blocking portal. Daemon, because Python joins non-daemon threads *before* atexit
  handlers run, and our atexit handler is what stops the loop.
* :class:`LoopRuntime` — for async hosts (``async with ci.profiling()`` in a FastAPI lifespan):
  the service's task group runs inside the host's own loop; no extra thread.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.from_thread import BlockingPortal

from cirron._flush.service import FlushService


class ThreadRuntime:
    def __init__(self, service: FlushService) -> None:
        self.service = service
        self._portal: BlockingPortal | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self, wait: float | None = 5.0) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="cirron-flush", daemon=True)
        self._thread.start()
        if wait:
            self._ready.wait(wait)

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported through health()
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            async with anyio.create_task_group() as tg:
                await tg.start(self.service.run)
                self._ready.set()
            self._portal = None

    def is_service_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float) -> Any:
        """Run ``fn(*args)`` on the service loop and wait at most ``timeout`` s; TimeoutError after."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            # e.g. a forked child's copy of the parent's runtime: its portal would never answer
            raise RuntimeError("flush service is not running")
        if not self._ready.wait(timeout):
            raise TimeoutError("flush service did not start in time")
        portal = self._portal
        if portal is None:
            raise RuntimeError("flush service is not running")
        fut = portal.start_task_soon(fn, *args)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("flush service did not answer in time") from None

    def stop(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ok = False
        try:
            ok = bool(self.call(self.service.stop, max(0.0, timeout - 0.05), timeout=timeout + 0.5))
        except Exception:  # noqa: BLE001 - a stuck service must not stop the host from exiting
            ok = False
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        return ok


class LoopRuntime:
    def __init__(self, service: FlushService) -> None:
        self.service = service
        self._tg: anyio.abc.TaskGroup | None = None
        self._token: Any = None
        self._thread_id: int | None = None
        self.error: str | None = None

    async def start(self) -> None:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.service.run)
        self._token = anyio.lowlevel.current_token()
        self._thread_id = threading.get_ident()

    def is_service_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float) -> Any:
        """From another thread: run on the host loop and wait at most ``timeout`` seconds."""
        done = threading.Event()
        box: list[Any] = []

        async def runner() -> None:
            try:
                box.append(await fn(*args))
            except BaseException as exc:  # noqa: BLE001
                box.append(exc)
            finally:
                done.set()

        def schedule() -> None:
            assert self._tg is not None
            self._tg.start_soon(runner)

        anyio.from_thread.run_sync(schedule, token=self._token)
        if not done.wait(timeout):
            raise TimeoutError("flush service did not answer in time")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop_in_place(self) -> None:
        """Sync shutdown from the loop's own thread: we cannot await here, so tell the service
        loop to end; the task group is left for :meth:`close_task_group`."""
        self.service._stopping = True
        self.service.wake()

    async def stop(self, timeout: float) -> bool:
        ok = await self.service.stop(timeout)
        await self.close_task_group()
        return ok

    async def close_task_group(self) -> None:
        """Leave the task group entered by :meth:`start` (must run in the task that entered it)."""
        if self._tg is not None:
            tg, self._tg = self._tg, None
            await tg.__aexit__(None, None, None)
