"""Worker processes record into the session that started them.

A worker is any process started while a session runs: a ``multiprocessing`` child (fork,
forkserver or spawn; ``Process``, ``Pool``, ``ProcessPoolExecutor``), a joblib/loky worker, a
PyTorch ``DataLoader`` worker. Its records go to the parent's spool, in batches of its own (its own
pid in ``resource``), under the parent's ``session_id``, below a **process root**: a span named
``cirron.process`` whose parent is the span that was open in the parent when the work was
submitted (else the parent's session root). ``cirron traces view`` shows the worker's spans inside
the parent's tree and ``list`` counts them with the session.

Which span a task was submitted under: while the session runs, ``Pool.apply_async``/``map``/
``imap``/``starmap``, ``ProcessPoolExecutor.submit``/``map`` and ``joblib.Parallel`` wrap the
callable in a :class:`SubmittedTask` that carries the id of the span open in the submitting thread.
In the worker, the task's spans go below a process root under that span (one per submitting span,
opened on its first task): a reused worker's tasks each hang where they were submitted. Work that
is not submitted that way (a ``Process`` target) goes below the process root opened when the
worker started, under the span open at that moment.

How a worker learns where to write:

* a **forked** child inherits everything; ``os.register_at_fork`` opens its process root;
* a **spawned** one (spawn, forkserver, loky, ``subprocess`` running Python) reads
  :data:`ENV_PARENT_SESSION`, which ``ci.profile()`` sets in the parent's environment and
  ``shutdown()`` takes away. While the session runs, starting a ``multiprocessing`` process sets
  it to the span open at that moment, for that child only.

Either way the worker starts its own flush service on its first record (a worker that records
nothing writes nothing) and writes what it holds when it ends: at a normal exit, at
``multiprocessing``'s own exit (which skips atexit), and on SIGTERM (``Pool.terminate()``,
loky's shutdown), through a handler like the parent's that it installs with its first record
(until then it has the handlers that were there before cirron's: see :mod:`cirron._signals`).

A worker that records holds a :class:`WorkerMark` (``.live/<session>.<pid>.worker``, flock'ed)
until it has written everything. One left behind and no longer locked is a worker that died
before that (SIGKILL, the OOM killer): the parent finds it at its own shutdown
(:func:`lost_workers`), counts it in ``health()`` and names it in its exit warning.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

#: Set by ``ci.profile()`` in the parent: JSON with where and under which span a worker writes.
ENV_PARENT_SESSION = "CIRRON_PARENT_SESSION"
#: Name of a worker's process root span.
PROCESS_SPAN_NAME = "cirron.process"
#: The settings a worker takes from its parent (the rest of its configuration is the default).
INHERITED_SETTINGS = ("output", "flush_interval", "max_spool_bytes", "shutdown_timeout",
                      "trace_buffer_max_spans", "mark_buffer_capacity", "sample_rate", "snapshots")


class RemoteSpan:
    """A span of another process, known only by its id: the parent of a worker's process root."""

    __slots__ = ("id",)

    def __init__(self, span_id: int) -> None:
        self.id = span_id


def describe_session(owner: Any, span: Any) -> str:
    """The value of :data:`ENV_PARENT_SESSION` for workers of ``owner``'s session under ``span``."""
    cfg = owner.config
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "session_id": owner.session_id,
        "span": span.id,
        "spool_dir": str(cfg.spool_dir.absolute()),
        **{name: getattr(cfg, name) for name in INHERITED_SETTINGS},
    }
    info["output"] = list(cfg.output)
    info.update({k: owner._resource[k] for k in ("rank", "world_size", "local_rank", "run_id")
                 if owner._resource.get(k) is not None})
    return json.dumps(info, separators=(",", ":"))


def inherited_session(environ: Any = None) -> dict[str, Any] | None:
    """The parent's session this process is a worker of, or None (not a worker, or a bad value)."""
    raw = (environ or os.environ).get(ENV_PARENT_SESSION)
    if not raw:
        return None
    from cirron.spool.paths import is_safe_id  # only in a worker: `import cirron` stays light

    try:
        info = json.loads(raw)
        if int(info["pid"]) == os.getpid() or not is_safe_id(info["session_id"]):
            return None  # set by this very process, or not an id a path may be made of
        info["span"] = int(info["span"])
        str(info["spool_dir"])
    except (ValueError, TypeError, KeyError):
        return None
    return info


class SubmittedTask:
    """A callable handed to a pool, with the span open in the parent when it was submitted."""

    __slots__ = ("fn", "span_id", "pid")

    def __init__(self, fn: Any, span_id: int, pid: int) -> None:
        self.fn = fn
        self.span_id = span_id
        self.pid = pid

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = _TASK_OWNER[0]
        roots = None if owner is None or self.pid == os.getpid() else owner._task_roots
        if roots is None:  # run in the submitting process (its spans are right), or not a worker
            return self.fn(*args, **kwargs)
        return roots.run(self.span_id, self.fn, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # __name__, __module__, ... for those who look
        if name in SubmittedTask.__slots__:
            raise AttributeError(name)  # not set yet (unpickling)
        return getattr(self.fn, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SubmittedTask, (self.fn, self.span_id, self.pid))


#: The instance a worker runs submitted tasks through (see :func:`run_tasks_through`).
_TASK_OWNER: list[Any] = [None]


def run_tasks_through(owner: Any) -> None:
    """Make ``owner`` (the default instance, at ``import cirron``) the one that runs submitted tasks."""
    _TASK_OWNER[0] = owner


class TaskRoots:
    """In a worker: the process roots below the spans that submitted work to it, one per span."""

    def __init__(self, rec: Any) -> None:
        self._rec = rec
        self._by_span: dict[int, Any] = {}
        self._lock = threading.Lock()

    def run(self, span_id: int, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        rec = self._rec
        root = rec.root
        if root is None:  # the worker's session has ended
            return fn(*args, **kwargs)
        parent = root.parent
        target = root if parent is not None and parent.id == span_id else self._root_below(span_id)
        token = rec.current.set(target)
        try:
            return fn(*args, **kwargs)
        finally:
            rec.current.reset(token)

    def _root_below(self, span_id: int) -> Any:
        root = self._by_span.get(span_id)
        if root is not None:
            return root
        from cirron._record.span import PyRecorderBase

        with self._lock:
            root = self._by_span.get(span_id)
            if root is None:
                attrs = {"pid": os.getpid(), "parent_pid": os.getppid()}
                parent: Any = RemoteSpan(span_id)
                # like the first process root: opening it makes no buffer, so a task that records
                # nothing leaves the worker writing nothing
                root = PyRecorderBase.start_span(self._rec, PROCESS_SPAN_NAME, attrs, parent=parent)
                root._cpu0 = time.process_time_ns()
                self._by_span[span_id] = root
        return root

    def is_one(self, span: Any) -> bool:
        return self._by_span.get(getattr(span.parent, "id", -1)) is span

    def close(self) -> None:
        """At the worker's end, with its first process root."""
        cpu, end = time.process_time_ns(), time.time_ns()
        roots, self._by_span = self._by_span, {}
        for root in roots.values():
            if root.end_ns is None:
                root._close(None, cpu, end)


class _TaggedCalls:
    """joblib's iterable of ``(function, args, kwargs)``, each function a :class:`SubmittedTask`."""

    def __init__(self, calls: Any, span_id: int) -> None:
        self._calls = calls
        self._span_id = span_id
        self._pid = os.getpid()

    def __iter__(self) -> Iterator[Any]:
        for fn, args, kwargs in self._calls:
            yield SubmittedTask(fn, self._span_id, self._pid), args, kwargs


class _SizedTaggedCalls(_TaggedCalls):
    """The same for an iterable with a length (joblib counts the tasks of those)."""

    def __len__(self) -> int:
        return len(self._calls)


def _submitting(method: Any, position: int, propagation: WorkerPropagation) -> Any:
    """``method`` with its callable (argument ``position``, after self) wrapped in a SubmittedTask."""

    def submit(*args: Any, **kwargs: Any) -> Any:
        span = propagation.submitting_span()
        if span is not None and len(args) > position:
            args = (*args[:position], SubmittedTask(args[position], span, os.getpid()), *args[position + 1:])
        return method(*args, **kwargs)

    submit.__wrapped__ = method  # type: ignore[attr-defined]
    submit.__doc__ = method.__doc__
    return submit


def _parallel_call(method: Any, propagation: WorkerPropagation) -> Any:
    def call(parallel: Any, iterable: Any) -> Any:
        span = propagation.submitting_span()
        if span is not None:
            iterable = (_SizedTaggedCalls if hasattr(iterable, "__len__") else _TaggedCalls)(iterable, span)
        return method(parallel, iterable)

    call.__wrapped__ = method  # type: ignore[attr-defined]
    call.__doc__ = method.__doc__
    return call


#: (module, class, method, position of the callable after self); joblib's whole call is wrapped.
SUBMIT_METHODS = (
    ("multiprocessing.pool", "Pool", "apply_async", 1),
    ("multiprocessing.pool", "Pool", "_map_async", 1),  # map, map_async, starmap, starmap_async
    ("multiprocessing.pool", "Pool", "imap", 1),
    ("multiprocessing.pool", "Pool", "imap_unordered", 1),
    ("concurrent.futures.process", "ProcessPoolExecutor", "submit", 1),  # and map, through submit
)


class WorkerPropagation:
    """While the default instance's session runs: the environment variable, and the span open
    when a ``multiprocessing`` process is started written into it for that start."""

    _lock = threading.Lock()
    _patched: Any = None  # the original BaseProcess.start while ours is installed
    #: (class, name, original) of each submit method patched while ours is installed.
    _submit_patches: ClassVar[list[tuple[Any, str, Any]]] = []

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._previous: str | None = None
        self.active = False

    def install(self) -> None:
        owner = self._owner
        root = owner._rec.root
        if root is None:
            return
        self._previous = os.environ.get(ENV_PARENT_SESSION)
        os.environ[ENV_PARENT_SESSION] = describe_session(owner, root)
        self.active = True
        self._patch_process_start()
        self.patch_submits()

    def uninstall(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._previous is None:
            os.environ.pop(ENV_PARENT_SESSION, None)
        else:
            os.environ[ENV_PARENT_SESSION] = self._previous
        self._unpatch_process_start()
        self._unpatch_submits()

    def submitting_span(self) -> int | None:
        """The id of the span open in this thread (the session root if none), while ours runs."""
        if not self.active:
            return None
        rec = self._owner._rec
        span = rec.current.get() or rec.root
        return None if span is None else span.id

    def patch_submits(self) -> None:
        """Wrap the submit methods of the pools imported by now (again at each process start, so
        a pool module imported after ``ci.profile()`` is wrapped before its first task)."""
        import sys

        from cirron._signals import signals_deferred

        with signals_deferred(), self._lock:
            done = {(cls, name) for cls, name, _ in WorkerPropagation._submit_patches}
            targets = [(sys.modules.get(m), c, n, pos) for m, c, n, pos in SUBMIT_METHODS]
            targets.append((sys.modules.get("joblib.parallel"), "Parallel", "__call__", -1))
            for module, cls_name, name, position in targets:
                cls = getattr(module, cls_name, None)
                original = cls.__dict__.get(name) if cls is not None else None
                if original is None or (cls, name) in done:
                    continue
                wrapper = (_parallel_call(original, self) if position < 0
                           else _submitting(original, position, self))
                setattr(cls, name, wrapper)
                WorkerPropagation._submit_patches.append((cls, name, original))

    def _unpatch_submits(self) -> None:
        from cirron._signals import signals_deferred

        with signals_deferred(), self._lock:
            patches, WorkerPropagation._submit_patches = WorkerPropagation._submit_patches, []
        for cls, name, original in patches:
            setattr(cls, name, original)

    @contextmanager
    def span_for_child(self) -> Iterator[None]:
        """Around a process start: the variable names the span open in this thread right now."""
        owner = self._owner
        span = owner._rec.current.get() if self.active else None
        if span is None or span.id is None:
            yield
            return
        from cirron._signals import signals_deferred

        # the lock is held through the start (a fork, a spawn): a signal waits for its end
        with signals_deferred(), self._lock:
            saved = os.environ.get(ENV_PARENT_SESSION)
            try:
                os.environ[ENV_PARENT_SESSION] = describe_session(owner, span)
            except Exception:  # noqa: BLE001 - the start goes on with the session root
                pass
            try:
                yield
            finally:
                if saved is None:
                    os.environ.pop(ENV_PARENT_SESSION, None)
                else:
                    os.environ[ENV_PARENT_SESSION] = saved

    def _patch_process_start(self) -> None:
        import multiprocessing.process as mp_process

        cls = mp_process.BaseProcess
        if WorkerPropagation._patched is not None:
            return
        original = cls.start
        propagation = self

        def start(process: Any, *args: Any, **kwargs: Any) -> Any:
            if propagation.active:
                propagation.patch_submits()
            with propagation.span_for_child():
                return original(process, *args, **kwargs)

        start.__wrapped__ = original  # type: ignore[attr-defined]
        start.__doc__ = original.__doc__
        WorkerPropagation._patched = original
        cls.start = start  # type: ignore[method-assign,assignment]

    def _unpatch_process_start(self) -> None:
        import multiprocessing.process as mp_process

        original = WorkerPropagation._patched
        if original is not None:
            WorkerPropagation._patched = None
            mp_process.BaseProcess.start = original  # type: ignore[method-assign]


def worker_mark_path(spool_dir: str | os.PathLike[str], session_id: str, pid: int) -> Path:
    """``ValueError`` for a session id that is not :func:`cirron.spool.paths.is_safe_id`."""
    from cirron.spool.paths import is_safe_id, live_dir

    if not is_safe_id(session_id):
        raise ValueError(f"unsafe session id {session_id!r}")
    return live_dir(spool_dir) / f"{session_id}.{pid}.worker"


class WorkerMark:
    """A worker's own lock file: held while it records, removed once all it recorded is written.

    Its content is the worker's last report of what it holds unwritten (:meth:`publish`, at each
    look of its flush service, every :data:`cirron._flush.service.POLL_MAX_S` at most): what the
    parent counts as lost if the worker is killed before it writes."""

    def __init__(self, spool_dir: str | os.PathLike[str], session_id: str) -> None:
        self.path = worker_mark_path(spool_dir, session_id, os.getpid())
        self._fd: int | None = None
        self._published: tuple[int, int] | None = None

    def publish(self, spans: int, marks: int) -> None:
        """Write ``{"spans": .., "marks": ..}`` (closed spans and marks not written yet) if changed."""
        fd = self._fd
        if fd is None or self._published == (spans, marks):
            return
        data = json.dumps({"spans": spans, "marks": marks}).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._published = (spans, marks)

    def take(self) -> None:
        from cirron.spool.paths import hold_lock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = hold_lock(self.path)

    def release(self, everything_written: bool) -> None:
        """Let go of the lock; the file goes too unless something was lost (the parent counts it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if everything_written:
            try:
                self.path.unlink()
            except OSError:
                pass
        os.close(fd)

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy so the lock lives and dies with this worker only."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class LostWorker(NamedTuple):
    """A worker that ended without writing all it recorded, and what it last said it held
    unwritten (None where it never said: killed before its flush service first looked)."""

    pid: int
    spans: int | None
    marks: int | None


def _last_report(fd: int) -> tuple[int | None, int | None]:
    try:
        report = json.loads(os.pread(fd, 256, 0) or b"null")
        return int(report["spans"]), int(report["marks"])
    except (OSError, ValueError, TypeError, KeyError):
        return None, None


def lost_workers(spool_dir: str | os.PathLike[str], session_id: str) -> list[LostWorker]:
    """The session's workers that ended without writing all they recorded. Their marks are
    removed (each is counted once); workers still running are left alone."""
    from cirron._safeopen import open_regular_fd
    from cirron.spool.paths import is_safe_id, live_dir

    lost: list[LostWorker] = []
    if not is_safe_id(session_id):
        return lost
    try:
        paths = sorted(live_dir(spool_dir).glob(f"{glob.escape(session_id)}.*.worker"))
    except OSError:
        return lost
    for path in paths:
        try:
            fd = open_regular_fd(path, follow_symlinks=False)  # never a FIFO that blocks, never a link
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # still held: the worker is running and will write for itself
        else:
            lost.append(LostWorker(_pid_of(path), *_last_report(fd)))
            try:
                path.unlink()
            except OSError:
                pass
        finally:
            os.close(fd)
    return [worker for worker in lost if worker.pid]


def _pid_of(path: Path) -> int:
    part = path.name.rsplit(".", 2)[-2]
    return int(part) if part.isdigit() else 0
