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

While ours is installed, a fork holds :data:`HANDLED_SIGNALS` blocked in the forking thread from
just before ``fork()`` until the child has made the session its own (:func:`hold_for_fork`,
:func:`release_after_fork`). Without that, a SIGTERM that reaches a child as it is born
(``Pool.terminate()`` on a worker that has not run yet) is lost or hangs it: CPython discards a
signal its handler caught before the child's interpreter was set up again, and one handled during
the after-fork hooks would find the parent's flush service, which does not exist in the child.
Held, it waits in the kernel and is handled, like any other, once the child is ready. A forked
child puts the earlier handlers back at once (it has nothing to write yet, so the signal's own
action is exact) and installs ours again with its first record.

A Python handler runs in the main thread, between bytecodes: inside whatever the main thread was
doing, locks it held included. Where that is cirron's own work that our handler would do again
(a shutdown, a flush, a process start: :func:`signals_deferred`), the signal is handled when that
work ends. Handled inside it, a SIGTERM reaching a ``Pool`` worker while it shut its session down
at its exit ran a second shutdown inside the first, which waited for a lock the first held
(``threading.Event.wait``'s), and the worker never ended.

A signal that arrives while the main
thread is in C code that goes back to sleep without returning to Python (a ``multiprocessing``
lock woken by its owner but not yet run when the signal comes: a ``Pool`` worker at
``terminate()`` on a loaded machine) would wait there forever, where the default action would
have ended the process. So, while ours is installed, :class:`_Waker` watches the signal wakeup fd
and, for a fatal signal whose handler has not started, sends it again to the main thread every
:data:`NUDGE_S` until it does: a signal that reaches a sleeping thread wakes it.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: The signals a job is stopped with (Kubernetes, Slurm, ``docker stop``, Ctrl-C).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: How long a fatal signal may wait for its handler to start before the main thread is sent it again.
NUDGE_S = 0.05

#: Chains whose handler is installed in this process: forks hold the signals while there are any.
_INSTALLED: weakref.WeakSet[SignalChain] = weakref.WeakSet()
#: The signal mask each forking thread had before :func:`hold_for_fork`, by thread id (the same
#: id in the child, where the forking thread is the only one).
_MASKS_BEFORE_FORK: dict[int, Any] = {}


class _Deferral:
    """Main thread only: how deep it is in :func:`signals_deferred`, and the signals caught there."""

    def __init__(self) -> None:
        self.depth = 0
        #: (chain, signal, frame, handler before ours, fatal) of each signal caught meanwhile.
        self.pending: list[tuple[SignalChain, int, Any, Any, bool]] = []


_DEFERRAL = _Deferral()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Around cirron's own work in the main thread that our handler would do again (see the
    module's docstring): a signal caught meanwhile is handled when the outermost such block ends.
    Other threads never run a Python handler, so nothing they hold is in its way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFERRAL.depth += 1
    try:
        yield
    finally:
        _DEFERRAL.depth = max(0, _DEFERRAL.depth - 1)  # 0 already in a child forked inside
        if not _DEFERRAL.depth and _DEFERRAL.pending:
            pending, _DEFERRAL.pending = _DEFERRAL.pending, []
            for chain, signum, frame, prior, fatal in pending:
                chain.hand_on(signum, frame, prior, fatal)


def forget_deferral_after_fork() -> None:
    """In a forked child: the blocks the parent's main thread was in are not the child's (a
    ``multiprocessing`` fork child never leaves them), so its signals are handled as they come."""
    _DEFERRAL.depth = 0
    _DEFERRAL.pending = []


def hold_for_fork() -> None:
    """``os.register_at_fork(before=...)``: block :data:`HANDLED_SIGNALS` in this thread (the child
    inherits the mask) while a chain of ours is installed."""
    if not _INSTALLED:
        return
    try:
        _MASKS_BEFORE_FORK[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    except (OSError, ValueError):
        pass


def release_after_fork() -> None:
    """After the fork, in the parent, and in the child once it is ready: the mask as it was."""
    mask = _MASKS_BEFORE_FORK.pop(threading.get_ident(), None)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _Waker:
    """The signal wakeup fd's reader (see the module's docstring): a thread that sends a fatal
    signal again to the main thread until the chain's handler has started."""

    def __init__(self, chain: SignalChain, read_fd: int, write_fd: int) -> None:
        self._chain = chain
        self._read_fd = read_fd
        self.write_fd = write_fd

    @classmethod
    def start(cls, chain: SignalChain) -> _Waker | None:
        """Main thread only. None where the wakeup fd is someone else's already (theirs stays)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            previous = None
        if previous != -1:
            if previous is not None:
                signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return None
        waker = cls(chain, read_fd, write_fd)
        threading.Thread(target=waker._run, name="cirron-signals", daemon=True).start()
        return waker

    def stop(self) -> None:
        """Main thread only: the wakeup fd back to none (unless someone else's is set by now)."""
        self._let_go_of_wakeup_fd()
        try:
            os.write(self.write_fd, b"\0")  # tells the thread to end
        except OSError:
            pass
        os.close(self.write_fd)

    def forget_after_fork(self) -> None:
        """In a forked child (main thread): the parent's pipe is closed here, its thread is not."""
        self._let_go_of_wakeup_fd()
        for fd in (self._read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _let_go_of_wakeup_fd(self) -> None:
        current = signal.set_wakeup_fd(-1)
        if current != self.write_fd:
            signal.set_wakeup_fd(current)  # someone else's by now: theirs stays

    def _run(self) -> None:
        main = threading.main_thread().ident
        try:
            while True:
                data = os.read(self._read_fd, 64)
                if not data or 0 in data:
                    return
                for signum in data:
                    self._until_handled(signum, main)
        except OSError:
            return
        finally:
            try:
                os.close(self._read_fd)
            except OSError:
                pass

    def _until_handled(self, signum: int, main: int | None) -> None:
        """Only while ours is the installed handler of a fatal ``signum``: a host's own handler
        (installed after ours) keeps Python's rules, as it would without us."""
        chain = self._chain
        while main is not None and chain.is_fatal(signum) and signal.getsignal(signum) == chain.handle:
            if chain.fatal_started.wait(NUDGE_S):
                return
            if signal.getsignal(signum) == chain.handle:
                signal.pthread_kill(main, signum)


class SignalChain:
    """Our handler for :data:`HANDLED_SIGNALS`, chained to the one installed before it.

    ``on_signal(signum, fatal)`` is the owner's work: ``fatal`` says the signal will end the process
    once we hand it on."""

    def __init__(self, on_signal: Callable[[int, bool], None]) -> None:
        self._on_signal = weakref.WeakMethod(on_signal) if hasattr(on_signal, "__self__") else lambda: on_signal
        self._prior: dict[int, Any] = {}
        self._waker: _Waker | None = None
        #: Set once the handler has started for a fatal signal (the process is ending).
        self.fatal_started = threading.Event()

    @property
    def installed(self) -> bool:
        return bool(self._prior)

    def is_fatal(self, signum: int) -> bool:
        """Our handler is in place for ``signum`` and hands it on to the default action."""
        return self._prior.get(signum, None) == signal.SIG_DFL

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
            _INSTALLED.add(self)
        if self._prior and self._waker is None:
            try:
                self._waker = _Waker.start(self)
            except (OSError, RuntimeError):  # no fd or thread left: the handler works without it
                self._waker = None

    def uninstall(self) -> None:
        """Give back the earlier handlers where ours is still the installed one."""
        if threading.current_thread() is not threading.main_thread():
            return
        prior, self._prior = self._prior, {}
        _INSTALLED.discard(self)
        waker, self._waker = self._waker, None
        if waker is not None:
            try:
                waker.stop()
            except (ValueError, OSError):
                pass
        for sig, handler in prior.items():
            try:
                if signal.getsignal(sig) == self.handle:
                    signal.signal(sig, handler)
            except (ValueError, OSError):
                pass

    def forget_after_fork(self) -> None:
        """In a forked child (its main thread, signals held): the earlier handlers back, until the
        child records and installs ours again; the parent's waker stays the parent's."""
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.forget_after_fork()
        self.fatal_started = threading.Event()
        self.uninstall()

    def handle(self, signum: int, frame: Any) -> None:
        prior = self._prior.get(signum, signal.SIG_DFL)
        fatal = prior == signal.SIG_DFL
        if fatal:
            if self.fatal_started.is_set():
                return  # sent again by the waker after we had started: we are ending already
            self.fatal_started.set()
        if _DEFERRAL.depth:
            _DEFERRAL.pending.append((self, signum, frame, prior, fatal))
            return
        self.hand_on(signum, frame, prior, fatal)

    def hand_on(self, signum: int, frame: Any, prior: Any, fatal: bool) -> None:
        """The owner's work, then what ``prior`` (the handler before ours) would have done."""
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
