"""Why a ``ci.epochs`` / ``ci.batches`` loop ended early: a ``break``, or an exception.

An exception raised in the body of a ``for`` loop never reaches the loop's generator: Python
only closes it (``GeneratorExit``) while unwinding, and hides the exception from it. So the
span of the iteration that was running is measured at that moment, leaves the context, and
waits here for its cause:

* the program goes on (another ``ci.epochs``/``ci.batches`` loop starts, or
  :data:`GRACE_S` pass before a flush): a ``break`` or an exception the program caught — the
  span is written as it is;
* the process ends on an uncaught exception (Ctrl-C included): the exit handler writes it with
  ``error`` (``"Type: message"``) or ``interrupted`` (``KeyboardInterrupt``...), as ``ci.scope``
  does.
"""

from __future__ import annotations

import threading
import time
from time import thread_time_ns, time_ns
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

    def defer(self, scope: Any) -> None:
        """Called where the loop's generator is closed: measure now, leave the context now.
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
        with self._lock:
            self._pending.append((scope, cpu1, end, time.monotonic()))

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
        for scope, cpu1, end, _t in ready:
            try:
                scope._close(exc, cpu1, end)
            except Exception as err:  # noqa: BLE001
                self._rec.note_internal_error(err)


def uncaught_exception() -> BaseException | None:
    """The exception that is ending the process, when one is (read from the exit handler)."""
    import sys

    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return exc if isinstance(exc, BaseException) else None
