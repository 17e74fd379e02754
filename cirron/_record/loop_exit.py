"""Why a ``ci.epochs`` / ``ci.batches`` loop ended early: a ``break``, or an exception.

An exception raised in the body of a ``for`` loop never reaches the loop's generator: Python
only closes it (``GeneratorExit``) while unwinding, and hides the exception from it. So the
span of the iteration that was running is measured at that moment, leaves the context, and
waits here for its cause:

* the frame that ran the loop says how it was left: a ``break`` (or ``return``) pops the
  iterator with ``POP_TOP``; anything else is an exception on its way up. For an exception,
  :class:`_Watch` follows it with a trace function on this thread (only when no other one —
  a debugger, coverage — is set) until a frame catches it or it leaves the loop's frame, and
  the spans get it as their cause then, as ``ci.scope`` would record it: ``error``
  (``"Type: message"``) or ``interrupted`` (``KeyboardInterrupt``...). The trace function
  is removed at that first event, so it costs a few calls, once per exception;
* otherwise (or when another trace function is set), the program goes on — another
  ``ci.epochs``/``ci.batches`` loop starts, or :data:`GRACE_S` pass before a flush — and the
  span is written as it is; when the process ends on an uncaught exception (Ctrl-C included)
  the exit handler writes it with ``error`` / ``interrupted``.
"""

from __future__ import annotations

import dis
import sys
import threading
import time
from time import thread_time_ns, time_ns
from types import FrameType
from typing import Any

#: Seconds a loop span waits for its cause before a flush writes it as a clean exit.
GRACE_S = 5.0


class LoopExits:
    """The loop spans closed early whose cause is not known yet (see the module docstring)."""

    def __init__(self, rec: Any) -> None:
        self._rec = rec
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, int, int, float]] = []

    def __bool__(self) -> bool:
        return bool(self._pending)

    def defer(self, scope: Any, loop_frame: FrameType | None = None) -> None:
        """Called where the loop's generator is closed: measure now, leave the context now; when
        ``loop_frame`` (the frame running the ``for``) is being left by an exception, follow it.
        A scope measured on the GPU too (a device wrapper) is closed at once, cleanly."""
        if not hasattr(scope, "_close"):
            scope.__exit__(None, None, None)
            return
        cpu1, end = thread_time_ns(), time_ns()
        rec = self._rec
        try:
            token = scope._token
            if token is not None:
                scope._token = None
                try:
                    rec.current.reset(token)
                except ValueError:  # closed in another context than it was opened in
                    parent = scope.parent
                    rec.current.set(parent if parent is not rec.root else None)
        except Exception as exc:  # noqa: BLE001
            rec.note_internal_error(exc)
        entry = (scope, cpu1, end, time.monotonic())
        with self._lock:
            self._pending.append(entry)
        if loop_frame is not None and _left_by_exception(loop_frame):
            try:
                _Watch.follow(self, entry, loop_frame)
            except Exception as exc:  # noqa: BLE001 - the span then waits as it would without it
                rec.note_internal_error(exc)

    def settle(self, entries: list[tuple[Any, int, int, float]], exc: BaseException) -> None:
        """Write ``entries`` (still waiting) with ``exc`` as their cause."""
        with self._lock:
            ready = [e for e in entries if e in self._pending]
            self._pending = [p for p in self._pending if p not in ready]
        self._close(ready, exc)

    def resolve(self, exc: BaseException | None = None, older_than: float | None = None) -> None:
        """Write the waiting spans with ``exc`` as their cause (``None``: a clean exit); with
        ``older_than``, only those that waited at least that many seconds."""
        with self._lock:
            if older_than is None:
                ready, self._pending = self._pending, []
            else:
                cut = time.monotonic() - older_than
                ready = [p for p in self._pending if p[3] <= cut]
                self._pending = [p for p in self._pending if p[3] > cut]
        self._close(ready, exc)

    def _close(self, ready: list[tuple[Any, int, int, float]], exc: BaseException | None) -> None:
        for scope, cpu1, end, _t in ready:
            try:
                scope._close(exc, cpu1, end)
            except Exception as err:  # noqa: BLE001
                self._rec.note_internal_error(err)


#: The opcodes that pop a ``for`` loop's iterator on ``break``/``return`` (3.10-3.13; 3.14+).
_POP_ITERATOR = frozenset(dis.opmap[n] for n in ("POP_TOP", "POP_ITER") if n in dis.opmap)
#: Frames above the loop's that the watch follows the exception through.
_MAX_WATCHED_FRAMES = 200
#: Lines run without the exception in hand before the watch concludes it was swallowed.
_MAX_LINES_WITHOUT = 4


def _left_by_exception(frame: FrameType) -> bool:
    """Whether ``frame``, which just dropped a loop's generator, is unwinding an exception
    (rather than leaving the loop by ``break``/``return``)."""
    code = frame.f_code.co_code
    i = frame.f_lasti
    return 0 <= i < len(code) and code[i] not in _POP_ITERATOR


class _Watch:
    """Follows the exception unwinding a loop's frame to the first frame that catches it (or that
    it leaves), then writes the waiting loop spans with it and removes itself."""

    _local = threading.local()

    def __init__(self, owner: LoopExits, frames: list[FrameType]) -> None:
        self.owner = owner
        self.frames = frames
        self.entries: list[tuple[Any, int, int, float]] = []
        self.done = False
        self.lines = 0

    @classmethod
    def follow(cls, owner: LoopExits, entry: tuple[Any, int, int, float], frame: FrameType) -> None:
        active = getattr(cls._local, "watch", None)
        if active is not None and not active.done and active.owner is owner:
            active.entries.append(entry)  # an outer loop left by the same exception
            return
        if sys.gettrace() is not None:
            return  # a debugger or coverage owns tracing: the span waits for its cause as before
        frames: list[FrameType] = []
        f: FrameType | None = frame
        while f is not None and len(frames) < _MAX_WATCHED_FRAMES:
            frames.append(f)
            f = f.f_back
        watch = cls(owner, frames)
        watch.entries.append(entry)
        cls._local.watch = watch
        for f in frames:
            f.f_trace = watch._local_trace
        sys.settrace(_no_new_frames)

    def _local_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.done:
            return None
        if event == "exception":  # it left the frames below: arg is (type, value, traceback)
            self._finish(arg[1])
        elif event == "line":  # a handler (``except``, ``finally``, a ``with``'s exit) runs it
            exc = sys.exc_info()[1]
            if exc is not None and _went_through(exc, self.frames[0]):
                self._finish(exc)
            else:
                # A handler's first line may run before the exception is bound to it; past a few
                # lines without it, a context manager swallowed it.
                self.lines += 1
                if self.lines > _MAX_LINES_WITHOUT:
                    self._finish(None)
        return None if self.done else self._local_trace

    def _finish(self, exc: BaseException | None) -> None:
        self.done = True
        sys.settrace(None)
        for f in self.frames:
            f.f_trace = None
        self.frames = []
        if getattr(self._local, "watch", None) is self:
            self._local.watch = None
        if exc is not None:  # else the spans wait as before (a clean exit, or the exit handler)
            self.owner.settle(self.entries, exc)


def _no_new_frames(frame: FrameType, event: str, arg: Any) -> None:
    """The thread's trace function while a watch runs: frames called meanwhile are not traced."""
    return None


def _went_through(exc: BaseException, frame: FrameType) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame is frame:
            return True
        tb = tb.tb_next
    return False


def uncaught_exception() -> BaseException | None:
    """The exception that is ending the process, when one is (read from the exit handler)."""
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return exc if isinstance(exc, BaseException) else None
