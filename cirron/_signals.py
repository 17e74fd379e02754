"""SIGTERM and SIGINT: write what the session holds, then let the signal do what it would have done.

``ci.profile()`` in a sync host's main thread puts :class:`SignalChain` in front of the handler
that was there. When a signal comes:

* the handler before ours is Python code (the host's own, or SIGINT's ``KeyboardInterrupt``):
  the session is flushed and that handler runs; the host decides what happens next and the
  session goes on (its atexit shutdown writes the rest);
* it was the default action (SIGTERM's, a terminated process): the open spans are closed with
  ``interrupted`` set to the signal's name, the session is shut down within ``shutdown_timeout``,
  and the signal is raised again with the default action, so the exit status is the one the host
  would have had without cirron (``-15``);
* it was ignored, or set from C code we cannot call: we do not install anything.

A handler the host installs after ours replaces it and keeps working; we never install again
over it, and at shutdown we put the earlier handler back only where ours is still in place.
A forked child inherits the handler: there it writes that child's own records.
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any

#: The signals a job is stopped with (Kubernetes, Slurm, ``docker stop``, Ctrl-C).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalChain:
    """Our handler for :data:`HANDLED_SIGNALS`, chained to the one installed before it.

    ``on_signal(signum, fatal)`` is the owner's work: ``fatal`` says the signal will end the process
    once we hand it on."""

    def __init__(self, on_signal: Callable[[int, bool], None]) -> None:
        self._on_signal = weakref.WeakMethod(on_signal) if hasattr(on_signal, "__self__") else lambda: on_signal
        self._prior: dict[int, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._prior)

    def install(self) -> None:
        """Put our handler in front of the current one (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HANDLED_SIGNALS:
            if sig in self._prior:
                continue
            try:
                prior = signal.getsignal(sig)
                if prior is None or prior == signal.SIG_IGN or prior == self.handle:
                    continue  # set from C, or ignored: nothing of ours to add
                signal.signal(sig, self.handle)
            except (ValueError, OSError):  # not the main interpreter, or an unsupported platform
                continue
            self._prior[sig] = prior

    def uninstall(self) -> None:
        """Give back the earlier handlers where ours is still the installed one."""
        if threading.current_thread() is not threading.main_thread():
            return
        prior, self._prior = self._prior, {}
        for sig, handler in prior.items():
            try:
                if signal.getsignal(sig) == self.handle:
                    signal.signal(sig, handler)
            except (ValueError, OSError):
                pass

    def handle(self, signum: int, frame: Any) -> None:
        prior = self._prior.get(signum, signal.SIG_DFL)
        fatal = prior == signal.SIG_DFL
        work = self._on_signal()
        if work is not None:
            try:
                work(signum, fatal)
            except Exception:  # noqa: BLE001 - the host's signal must go on whatever happened to us
                pass
        if callable(prior):
            prior(signum, frame)
        elif fatal:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
