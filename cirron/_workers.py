"""Worker processes record into the session that started them.

A worker is any process started while a session runs: a ``multiprocessing`` child (fork,
forkserver or spawn; ``Process``, ``Pool``, ``ProcessPoolExecutor``), a joblib/loky worker, a
PyTorch ``DataLoader`` worker. Its records go to the parent's spool, in batches of its own (its own
pid in ``resource``), under the parent's ``session_id``, below a **process root**: a span named
``cirron.process`` whose parent is the span that was open in the parent when the worker was
started (else the parent's session root). ``cirron traces view`` shows the worker's spans inside
the parent's tree and ``list`` counts them with the session.

How a worker learns where to write:

* a **forked** child inherits everything; ``os.register_at_fork`` opens its process root;
* a **spawned** one (spawn, forkserver, loky, ``subprocess`` running Python) reads
  :data:`ENV_PARENT_SESSION`, which ``ci.profile()`` sets in the parent's environment and
  ``shutdown()`` takes away. While the session runs, starting a ``multiprocessing`` process sets
  it to the span open at that moment, for that child only.

Either way the worker starts its own flush service on its first record (a worker that records
nothing writes nothing), holds no liveness lock (the session is the parent's), and writes what it
holds when it ends: at a normal exit, at ``multiprocessing``'s own exit (which skips atexit), and
on SIGTERM (``Pool.terminate()``, loky's shutdown), through the same handler the parent has.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    try:
        info = json.loads(raw)
        if int(info["pid"]) == os.getpid() or not isinstance(info["session_id"], str):
            return None  # set by this very process
        info["span"] = int(info["span"])
        str(info["spool_dir"])
    except (ValueError, TypeError, KeyError):
        return None
    return info


class WorkerPropagation:
    """While the default instance's session runs: the environment variable, and the span open
    when a ``multiprocessing`` process is started written into it for that start."""

    _lock = threading.Lock()
    _patched: Any = None  # the original BaseProcess.start while ours is installed

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

    def uninstall(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._previous is None:
            os.environ.pop(ENV_PARENT_SESSION, None)
        else:
            os.environ[ENV_PARENT_SESSION] = self._previous
        self._unpatch_process_start()

    @contextmanager
    def span_for_child(self) -> Iterator[None]:
        """Around a process start: the variable names the span open in this thread right now."""
        owner = self._owner
        span = owner._rec.current.get() if self.active else None
        if span is None or span.id is None:
            yield
            return
        with self._lock:
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
