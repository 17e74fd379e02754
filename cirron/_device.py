"""Device truth: GPU time and peak device memory of spans, and the device on the session root.

A span measured on the device gets two things:

* ``memory_peak_bytes``: the most memory the allocator held while the span was open. The
  allocator keeps one high-water mark per device, so every open measured span shares it: when
  one opens or closes, the mark so far is folded into every open span and then reset. Nested
  spans are therefore right (an outer span's peak is at least each inner one's). Resetting the
  mark means ``torch.cuda.max_memory_allocated()`` in user code reads the peak since the last
  span boundary while measured spans are open.
* ``gpu_ns``: the time between two device events recorded on the current stream when the span
  opens and closes. The training thread never waits for them: a span whose end event has not
  fired yet leaves the context at once and is completed later, by the next measured span that
  opens (a non-blocking query) or by the flush service before it writes a batch. Until then the
  span is written as open, as any span open at flush time is.

Nothing here imports torch: the CUDA backend is used only when torch is imported already and
reports a usable CUDA device. The backend is a small protocol, so tests drive all of the logic
with a fake one.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from typing import Any, Protocol

__all__ = ["CudaBackend", "DeviceBackend", "DeviceTimer", "DeviceTracker", "cuda_backend", "session_device_attrs",
           "tracker_for", "use_backend"]


class DeviceBackend(Protocol):
    """What the tracker needs from a device: timing events and the allocator's counters."""

    def event(self) -> Any:
        """Record an event on the current stream now and return it."""

    def done(self, event: Any) -> bool:
        """Whether the device has reached ``event`` (never blocks)."""

    def wait(self, event: Any) -> None:
        """Block until the device has reached ``event``."""

    def elapsed_ns(self, start: Any, end: Any) -> int:
        """Device time between two events that are both done."""

    def allocated(self) -> int:
        """Bytes allocated now."""

    def peak(self) -> int:
        """The allocator's high-water mark since its last reset."""

    def reset_peak(self) -> None:
        """Start a new high-water mark at what is allocated now."""


class CudaBackend:
    """CUDA events and the caching allocator's counters, through torch."""

    def __init__(self, torch: Any) -> None:
        self.cuda = torch.cuda

    def event(self) -> Any:
        ev = self.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def done(self, event: Any) -> bool:
        return bool(event.query())

    def wait(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ns(self, start: Any, end: Any) -> int:
        return int(start.elapsed_time(end) * 1_000_000)

    def allocated(self) -> int:
        return int(self.cuda.memory_allocated())

    def peak(self) -> int:
        return int(self.cuda.max_memory_allocated())

    def reset_peak(self) -> None:
        self.cuda.reset_peak_memory_stats()


def cuda_backend() -> CudaBackend | None:
    """The CUDA backend when torch is imported and has a usable CUDA device, else None (no import)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return CudaBackend(torch) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken driver means no device measurements, not a failure
        return None


def session_device_attrs() -> dict[str, Any]:
    """``device_*`` attrs for the session root on a CUDA machine; empty (and no import) otherwise."""
    if cuda_backend() is None:
        return {}
    torch = sys.modules["torch"]
    attrs: dict[str, Any] = {"device_type": "cuda"}
    try:
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        attrs.update(device_count=int(count), device_name=str(props.name),
                     device_capability=f"{props.major}.{props.minor}",
                     device_memory_bytes=int(props.total_memory), cuda_version=torch.version.cuda)
        driver = getattr(torch._C, "_cuda_getDriverVersion", None)
        if driver is not None:
            v = int(driver())  # e.g. 12040 → "12.4", the CUDA version the driver supports
            attrs["driver_cuda_version"] = f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:  # noqa: BLE001 - partial information is still worth keeping
        pass
    return attrs


class DeviceTimer:
    """A start event recorded when made and an end event recorded by :meth:`record_end`."""

    __slots__ = ("backend", "end", "start")

    def __init__(self, backend: DeviceBackend) -> None:
        self.backend = backend
        self.start = backend.event()
        self.end: Any = None

    def record_end(self) -> None:
        self.end = self.backend.event()

    def done(self) -> bool:
        return self.end is not None and self.backend.done(self.end)

    def wait(self) -> None:
        self.backend.wait(self.end)

    def elapsed_ns(self) -> int:
        return self.backend.elapsed_ns(self.start, self.end)


class _Open:
    """One measured span while it is open: its timer and its memory high-water mark so far."""

    __slots__ = ("peak", "timer")

    def __init__(self, timer: DeviceTimer | None, peak: int) -> None:
        self.timer = timer
        self.peak = peak


class DeviceTracker:
    """Measures spans on one device for one :class:`cirron.Cirron` (see the module docstring)."""

    def __init__(self, c: Any, backend: DeviceBackend) -> None:
        self.c = c
        self.backend = backend
        self._open: list[_Open] = []
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, DeviceTimer, BaseException | None, int, int]] = []
        self._scheduled = False

    def scope(self, scope: Any) -> DeviceScope:
        return DeviceScope(self, scope)

    # -- open / close ----------------------------------------------------------------------------

    def begin(self, timing: bool = True) -> _Open:
        """Start measuring a span that is about to open."""
        self.poll()
        b = self.backend
        with self._lock:
            high = b.peak()
            for other in self._open:
                other.peak = max(other.peak, high)
            b.reset_peak()
            entry = _Open(None, b.allocated())
            self._open.append(entry)
        if timing:
            entry.timer = DeviceTimer(b)
        return entry

    def end(self, scope: Any, entry: _Open, exc: BaseException | None) -> None:
        """Close ``scope`` with its peak memory, and its GPU time once the device got there."""
        b = self.backend
        timer = entry.timer
        if timer is not None:
            timer.record_end()
        with self._lock:
            high = b.peak()
            entry.peak = max(entry.peak, high)
            try:
                self._open.remove(entry)
            except ValueError:
                pass
            for other in self._open:
                other.peak = max(other.peak, entry.peak)
            b.reset_peak()
        if scope.span is not None:
            scope.memory_peak_bytes = entry.peak
        close_scope(self, scope, timer, exc)

    # -- spans whose GPU work was still queued when they ended ------------------------------------

    def defer(self, scope: Any, timer: DeviceTimer, exc: BaseException | None, cpu1: int, end: int) -> None:
        with self._lock:
            self._pending.append((scope, timer, exc, cpu1, end))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self.c._offload(self.resolve_all)

    def poll(self) -> None:
        """Complete the deferred spans whose end event has fired, without waiting for the rest."""
        if not self._pending:
            return
        with self._lock:
            ready: list[Any] = []
            keep: list[Any] = []
            for item in self._pending:
                (ready if item[1].done() else keep).append(item)
            self._pending = keep
        for item in ready:
            self._complete(*item)

    def resolve_all(self) -> None:
        """Wait for and complete every deferred span (the flush service runs this, off the hot path)."""
        with self._lock:
            items, self._pending = self._pending, []
            self._scheduled = False
        for item in items:
            try:
                item[1].wait()
            except Exception as exc:  # noqa: BLE001
                self.c._rec.note_internal_error(exc)
            self._complete(*item)

    def _complete(self, scope: Any, timer: DeviceTimer, exc: BaseException | None, cpu1: int, end: int) -> None:
        rec = self.c._rec
        try:
            scope.gpu_ns = timer.elapsed_ns()
        except Exception as err:  # noqa: BLE001
            rec.note_internal_error(err)
        try:
            scope._close(exc, cpu1, end)
        except Exception as err:  # noqa: BLE001
            rec.note_internal_error(err)


def close_scope(tracker: DeviceTracker, scope: Any, timer: DeviceTimer | None, exc: BaseException | None) -> None:
    """Close ``scope``; with a timer whose end has not fired yet, leave the context now and
    complete the record later (:meth:`DeviceTracker.defer`)."""
    if timer is None or scope.span is None:
        scope.__exit__(type(exc) if exc else None, exc, None)
        return
    if timer.done() or not _can_defer(scope):
        timer.wait()  # already done (free), or a scope we cannot close later: wait now
        scope.gpu_ns = timer.elapsed_ns()
        scope.__exit__(type(exc) if exc else None, exc, None)
        return
    cpu1, end = time.thread_time_ns(), time.time_ns()
    rec = scope._rec
    token, scope._token = scope._token, None
    if token is not None:
        try:
            rec.current.reset(token)
        except ValueError:  # closed in another context than it was opened in
            parent = scope.parent
            rec.current.set(parent if parent is not rec.root else None)
    tracker.defer(scope, timer, exc, cpu1, end)


def _can_defer(scope: Any) -> bool:
    return all(hasattr(scope, a) for a in ("_close", "_token", "_rec", "parent")) and \
        getattr(scope, "_outer", None) is None


class DeviceScope:
    """A scope measured on the device as well: ``with``, ``async with`` or a decorator."""

    __slots__ = ("_entry", "_scope", "_tracker")

    def __init__(self, tracker: DeviceTracker, scope: Any) -> None:
        self._tracker = tracker
        self._scope = scope
        self._entry: _Open | None = None

    def __getattr__(self, name: str) -> Any:  # name, index, attrs, id, span, set_attr, ...
        return getattr(self._scope, name)

    def __enter__(self) -> Any:
        if self._entry is not None:  # entered again while open: measure the new entry on its own
            return DeviceScope(self._tracker, type(self._scope)(self._scope._rec, self._scope.name,
                               dict(self._scope.attrs) if self._scope.attrs else None,
                               self._scope.index)).__enter__()
        scope = self._scope.__enter__()
        try:
            self._entry = self._tracker.begin()
        except Exception as exc:  # noqa: BLE001 - the span stays a plain one
            self._tracker.c._rec.note_internal_error(exc)
        return scope

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        entry, self._entry = self._entry, None
        if entry is None:
            return self._scope.__exit__(exc_type, exc, tb)
        try:
            self._tracker.end(self._scope, entry, exc)
        except Exception as err:  # noqa: BLE001
            self._tracker.c._rec.note_internal_error(err)
            self._scope.__exit__(exc_type, exc, tb)
        return None

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: Any) -> Any:
        import functools
        import inspect

        tracker, scope = self._tracker, self._scope

        def fresh() -> DeviceScope:
            return DeviceScope(tracker, type(scope)(scope._rec, scope.name, dict(scope.attrs) if scope.attrs else None,
                                                    scope.index))

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with fresh():
                    return await fn(*args, **kwargs)
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return fn(*args, **kwargs)
        return wrapper


_TRACKERS: weakref.WeakKeyDictionary[Any, DeviceTracker] = weakref.WeakKeyDictionary()


def tracker_for(c: Any) -> DeviceTracker | None:
    """``c``'s tracker on this machine's device, or None where there is no CUDA device."""
    tracker = _TRACKERS.get(c)
    if tracker is None:
        backend = cuda_backend()
        if backend is None:
            return None
        tracker = _TRACKERS[c] = DeviceTracker(c, backend)
    return tracker


def use_backend(c: Any, backend: DeviceBackend | None) -> DeviceTracker | None:
    """Measure ``c``'s spans with ``backend`` (tests use a fake one); None goes back to CUDA."""
    if backend is None:
        _TRACKERS.pop(c, None)
        return tracker_for(c)
    tracker = _TRACKERS[c] = DeviceTracker(c, backend)
    if c._device is not None:
        c._device = tracker
    return tracker
