"""The :class:`Cirron` class: one recorder, its configuration and its flush service.

``import cirron as ci`` exposes the methods of a process-wide default instance; ``Cirron(...)``
builds independent ones (own buffers, own spool, own sinks).
"""

from __future__ import annotations

import atexit
import enum
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from cirron._config import Config, enabled_in_env
from cirron._env import env as _env
from cirron._env import secret as _secret
from cirron._flush.batch import GilBudget
from cirron._flush.collector import Collector, TraceStore, resource_attributes
from cirron._losses import Loss, loss_line, sink_loss, warn
from cirron._native import compiled_speedups
from cirron._ranks import detect_rank
from cirron._record.loop_exit import GRACE_S, LoopExits, uncaught_exception
from cirron._record.span import NOOP_SCOPE, PyRecorder, Recorder, Scope, scope_factory
from cirron._redact import redact_tree
from cirron._schema import SESSION_SPAN_NAME
from cirron._signals import signals_deferred
from cirron._version import __version__

if TYPE_CHECKING:
    from cirron._record.instrument import InferenceDecorator

T = TypeVar("T")


class State(enum.Enum):
    IDLE = "idle"  # recording into memory only
    RUNNING = "running"  # a session and its flush service are up
    CLOSED = "closed"  # shut down; a later profile() starts a new session


class Cirron:
    """An independent profiler: its own buffers, spool directory and sinks."""

    def __init__(
        self,
        api_key: str | None = None,
        api_endpoint: str | None = None,
        workspace_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        output: str | list[str] | tuple[str, ...] | None = None,
        flush_interval: float | None = None,
        snapshots: str | None = None,
        sample_rate: float | None = None,
        trace_buffer_max_spans: int | None = None,
        mark_buffer_capacity: int | None = None,
        max_spool_bytes: int | None = None,
        shutdown_timeout: float | None = None,
        *,
        _lazy: bool = False,
        _pure_python: bool = False,
    ) -> None:
        self._explicit: dict[str, Any] = {
            "api_key": api_key, "api_endpoint": api_endpoint, "workspace_id": workspace_id,
            "spool_dir": spool_dir, "output": output, "flush_interval": flush_interval,
            "snapshots": snapshots, "sample_rate": sample_rate,
            "trace_buffer_max_spans": trace_buffer_max_spans, "mark_buffer_capacity": mark_buffer_capacity,
            "max_spool_bytes": max_spool_bytes, "shutdown_timeout": shutdown_timeout,
        }
        self._config: Config | None = None if _lazy else self._resolve_config({})
        mark_cap = mark_buffer_capacity or (self._config.mark_buffer_capacity if self._config else 65_536)
        max_spans = trace_buffer_max_spans or (self._config.trace_buffer_max_spans if self._config else 100_000)
        # _pure_python: the pure-Python recorder even where the C one is built (the twins' contract tests).
        # (The two recorders have one interface: PyRecorder stands in for Recorder everywhere.)
        self._rec: Recorder = cast(Recorder, PyRecorder(mark_cap)) if _pure_python else Recorder(mark_cap)
        self._loop_exits = LoopExits(self._rec)
        self._scope_factory = None if _pure_python else scope_factory(self._rec, types.MethodType(Cirron.scope, self))
        if self._scope_factory is not None:  # the same call as the scope() method below, made in C
            self.scope = self._scope_factory  # type: ignore[method-assign]
        #: Framework integrations installed by profile() (cirron.integrations), removed by shutdown().
        self._integrations: Any = None
        #: GPU time and peak memory for every scope (``profile(gpu=True)``); see cirron._device.
        self._device: Any = None
        self._gpu_all = False
        self._trace = TraceStore(max_spans, self._rec.open)
        self._collector = Collector(self._rec, self._trace, backlog_max_spans=max_spans, backlog_max_marks=mark_cap)
        self._state = State.IDLE
        self._lifecycle = threading.RLock()
        self._runtime: Any = None
        self._service: Any = None
        self._sinks: list[Any] = []
        self._resource: dict[str, Any] = {}
        self._snapshots: Any = None
        self._pid = os.getpid()
        self._atexit_registered = False
        self.session_id: str | None = None
        from cirron._signals import SignalChain

        self._signals = SignalChain(self._on_signal)
        #: Set on the default instance only (see :meth:`_share_with_workers`).
        self._workers: Any = None
        #: Problems met while starting the session (unreadable config, …), each warned about once.
        self._warned: set[str] = set()
        #: This process records into another process's session (below a ``cirron.process`` root).
        self._is_worker = False
        self._worker_mark: Any = None
        #: In a worker: the process roots below the spans that submitted its tasks (cirron._workers).
        self._task_roots: Any = None
        #: Pids of this session's workers that died before writing all they recorded (at shutdown).
        self.workers_lost: list[int] = []
        #: What those workers last reported holding unwritten, summed.
        self.workers_lost_unwritten: dict[str, int] = {"spans": 0, "marks": 0}
        # The hot-path entry points are the recorder's own bound methods: no extra call layer.
        self.mark: Final = self._rec.mark
        if not enabled_in_env():
            self._set_recording(False)
        _INSTANCES.add(self)

    # -- configuration -----------------------------------------------------------------------

    def _resolve_config(self, overrides: dict[str, Any], inline: dict[str, Any] | None = None,
                        path: str | os.PathLike[str] | None = None) -> Config:
        from cirron._project import project_from_cwd

        merged = dict(self._explicit)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("output", "frameworks"):
            if isinstance(merged.get(name), str):
                merged[name] = [merged[name]]
        project, project_file = project_from_cwd(path)
        return Config.resolve(merged, project, project_file, inline)

    def _set_recording(self, on: bool) -> None:
        """Switch the hot path between recording and doing nothing (``enabled=False``)."""
        self._rec.disabled = not on
        self._divert_scopes()

    def _divert_scopes(self) -> None:
        """Send ``scope()`` through the Python method while it has more to do than the C one."""
        if self._scope_factory is not None:
            self._scope_factory.divert = self._rec.disabled or self._gpu_all

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = self._resolve_config({})
        return self._config

    # -- sessions ----------------------------------------------------------------------------

    def profile(
        self,
        output: str | list[str] | tuple[str, ...] | None = None,
        *,
        snapshots: str | None = None,
        sample_rate: float | None = None,
        flush_interval: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        enabled: bool | None = None,
        frameworks: str | list[str] | tuple[str, ...] | None = None,
        config: dict[str, Any] | None = None,
        path: str | os.PathLike[str] | None = None,
        gpu: bool | None = None,
    ) -> Cirron:
        """Start a session (idempotent: a running session is returned as is).

        ``enabled=False`` (or ``CIRRON_ENABLED=0``) starts nothing and turns recording off;
        ``frameworks`` names the integrations to hook in (default: those imported already);
        ``config`` is an inline ``profiling`` section; ``path`` the cirron.yaml to use."""
        with signals_deferred(), self._lifecycle:
            if self._state is State.RUNNING:
                return self
            if self._restart_pending:  # a worker of another process's session: join it now
                self._start_in_child()
                return self
            if not self._prepare_session(dict(
                output=output, snapshots=snapshots, sample_rate=sample_rate, flush_interval=flush_interval,
                spool_dir=spool_dir, enabled=enabled, frameworks=frameworks, gpu=gpu), config, path):
                return self
            from cirron._flush.runtime import ThreadRuntime

            self._runtime = ThreadRuntime(self._service)
            self._runtime.start(wait=5.0)
            self._state = State.RUNNING
            self._register_atexit()
            self._install_integrations()
            self._signals.install()
            if self._workers is not None:
                self._workers.install()
            return self

    def _prepare_session(self, overrides: dict[str, Any], inline: dict[str, Any] | None = None,
                         path: str | os.PathLike[str] | None = None) -> bool:
        """Resolve the configuration and open the session root; False when it says disabled."""
        self._config = self._resolve_config(overrides, inline, path)
        cfg = self._config
        self._is_worker = False
        self.workers_lost = []
        self.workers_lost_unwritten = {"spans": 0, "marks": 0}
        for problem in cfg.problems:
            self._warn_once(f"cirron: {problem}")
        self._set_recording(cfg.enabled)
        if not cfg.enabled:
            return False
        from cirron.integrations import resolve

        self._frameworks = resolve(cfg.frameworks)  # a bad name fails here, before anything starts
        self._configure_device(cfg.gpu)
        buffers = self._rec.buffers
        if buffers.mark_capacity != cfg.mark_buffer_capacity:
            buffers.mark_capacity = cfg.mark_buffer_capacity
            for tb in buffers.buffers():
                tb.mark_capacity = cfg.mark_buffer_capacity
        self._trace.max_spans = cfg.trace_buffer_max_spans
        ranks = detect_rank()
        self._resource = resource_attributes(ranks.rank, ranks.world_size, cfg.project_name, cfg.project_version)
        self._resource.update(local_rank=ranks.local_rank, run_id=ranks.run_id)
        attrs: dict[str, Any] = {"sdk_version": __version__, "pid": self._resource["pid"], "rank": ranks.rank,
                                 "world_size": ranks.world_size, "local_rank": ranks.local_rank,
                                 "host": self._resource["host"]}
        if cfg.project_name is not None:
            attrs["project"] = cfg.project_name
            attrs["project_version"] = cfg.project_version
        if ranks.run_id is not None:
            attrs["run_id"] = ranks.run_id
        for var, key in (("CIRRON_PIPELINE_ID", "pipeline_id"), ("CIRRON_DEPLOYMENT_ID", "deployment_id")):
            if os.environ.get(var):
                attrs[key] = os.environ[var]
        attrs.update(_device_info())
        root = self._rec.start_span(SESSION_SPAN_NAME, attrs)
        root._cpu0 = time.process_time_ns()  # the session's CPU time is the whole process's
        self._rec.root = root
        self.session_id = root.id_hex
        self._build_service()
        return True

    def _install_integrations(self) -> None:
        from cirron.integrations import install

        try:
            self._integrations = install(self, self._frameworks)
        except Exception as exc:  # noqa: BLE001 - an integration never stops the session
            self._rec.note_internal_error(exc)

    def _uninstall_integrations(self) -> None:
        integrations, self._integrations = self._integrations, None
        if integrations is not None:
            integrations.uninstall()

    def _configure_device(self, gpu: bool) -> None:
        from cirron._device import tracker_for

        self._device = tracker_for(self) if gpu else None
        self._gpu_all = self._device is not None
        self._divert_scopes()

    def _build_service(self) -> None:
        from cirron._flush.service import FlushService
        from cirron.sinks import make_sink

        names = list(self.config.output)
        if "platform" in names and "spool" not in names:
            names.insert(names.index("platform"), "spool")  # the spool is what the platform upload resumes from
        self._sinks = [make_sink(name, self) for name in names]
        self._service = FlushService(self._sinks, self._flush_sync, self._buffer_fill,
                                     self.config.flush_interval)

    def profiling(self, output: str | list[str] | tuple[str, ...] | None = None, **kwargs: Any) -> _Profiling:
        """``with ci.profiling():`` / ``async with ci.profiling():`` — a session for the block."""
        return _Profiling(self, output, kwargs)

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True

    def _atexit(self) -> None:
        try:
            # A loop left by the exception that is ending the process records it as its cause.
            self._loop_exits.resolve(uncaught_exception())
            self.shutdown()
        except Exception:  # noqa: BLE001 - never turn the host's exit into a traceback
            pass

    @property
    def running(self) -> bool:
        return self._state is State.RUNNING

    # -- recording ---------------------------------------------------------------------------

    def scope(self, name: str, /, *, index: int | None = None, gpu: bool | None = None, **attrs: Any) -> Scope:
        """A timed span: ``with``, ``async with`` or a decorator. ``index`` is the span's index (as
        epochs/batches set it); ``gpu=True`` adds GPU time and peak memory on CUDA."""
        rec = self._rec
        if rec.disabled:
            return NOOP_SCOPE  # type: ignore[return-value]
        scope = rec.scope_type(rec, name, attrs or None, index)
        measured: Scope = self._on_device(scope, gpu)  # a DeviceScope stands in for a Scope
        return measured

    def _on_device(self, scope: Scope, gpu: bool | None) -> Any:
        """``scope`` measured on the GPU too when asked (``gpu=True``, or ``profile(gpu=True)``)."""
        if gpu or (gpu is None and self._gpu_all):
            from cirron._device import tracker_for

            tracker = self._device or tracker_for(self)
            if tracker is not None:
                return tracker.scope(scope)
        return scope

    def watch(self, model: T, name: str | None = None) -> T:
        """Register ``model`` for epoch-end snapshots without instrumenting it; held weakly."""
        from cirron.snapshots import manager

        manager(self).register(model, name)
        return model

    def epochs(self, iterable: Iterable[T], *, gpu: bool | None = None) -> Iterator[T]:
        """Yield each item inside a span ``epoch[i]``; registered models are snapshotted at its end."""
        rec = self._rec
        if rec.disabled:
            yield from iterable
            return
        if self._loop_exits:
            self._loop_exits.resolve()  # a new loop: the last one that ended early was not an error
        for i, item in enumerate(iterable):
            scope = self._on_device(rec.scope_type(rec, "epoch", None, index=i), gpu)
            scope.__enter__()
            yield from _yield_inside(scope, item, self._loop_exits)
            if self._snapshots is not None:
                from cirron.integrations import epoch_end_snapshots

                epoch_end_snapshots(self, scope)
            scope.__exit__(None, None, None)

    def batches(self, iterable: Iterable[T], *, gpu: bool | None = None) -> Iterator[T]:
        """Yield each item inside a span ``batch[i]``; waiting on the source is a ``data_load`` child."""
        rec = self._rec
        if rec.disabled:
            yield from iterable
            return
        if self._loop_exits:
            self._loop_exits.resolve()  # a new loop: the last one that ended early was not an error
        it = iter(iterable)
        if hasattr(it, "cirron_quiet"):
            it.cirron_quiet = True  # a DataLoader the torch integration times: batches() does it here
        i = 0
        while True:
            t0 = time.time_ns()
            c0 = time.thread_time_ns()
            try:
                item = next(it)
            except StopIteration:
                return
            t1 = time.time_ns()
            c1 = time.thread_time_ns()
            load_ns = t1 - t0
            scope = self._on_device(rec.scope_type(rec, "batch", {"data_load_ns": load_ns}, index=i), gpu)
            span = scope.__enter__()  # the span itself (``scope`` may be its device measurement)
            if span.id is not None:
                span.start_ns = t0
                span._cpu0 -= c1 - c0
                rec.record_closed("data_load", span, t0, t1, c1 - c0, {"data_load_ns": load_ns})
            yield from _yield_inside(scope, item, self._loop_exits)
            scope.__exit__(None, None, None)
            i += 1

    def current_span(self) -> Scope | None:
        return self._rec.current.get()

    # -- reading back ------------------------------------------------------------------------

    def trace(self, format: str = "tree", name: str | None = None, last: int | None = None) -> Any:
        """The recorded scope tree: printed (``tree``), ``dict``, ``json`` or a pandas ``df``."""
        from cirron._trace import render

        if self._state is State.RUNNING:
            self.flush()
        else:
            self._collector.drain_to_trace()
        spans, marks = self._trace.snapshot(list(self._rec.open.values()))
        return render(spans, marks, format, name, last)

    # -- flushing and lifecycle --------------------------------------------------------------

    def _buffer_fill(self) -> float:
        """How full (0-1) the fullest thread buffer is: the flush service flushes early from half."""
        fill = 0.0
        for tb in self._rec.buffers.buffers():
            fill = max(fill, len(tb.spans) / tb.span_capacity, len(tb.marks) / tb.mark_capacity)
        return fill

    def _flush_sync(self, final: bool = False) -> list[Any]:
        """Drain and write every sync sink. Runs in the service's worker thread (or the caller's)."""
        if self._loop_exits:
            self._loop_exits.resolve(older_than=None if final else GRACE_S)
        with self._collector.lock:
            batches = self._collector.collect(self.session_id, self._resource)
            for sink in self._sinks:
                if sink.is_async:
                    continue
                for batch in batches:
                    try:
                        sink.write_sync(batch)
                    except Exception as exc:  # noqa: BLE001 - counted per sink
                        sink.note_error(exc)
                if final and hasattr(sink, "drop_retained"):
                    sink.drop_retained()
            if not any(sink.is_async for sink in self._sinks):
                # Nothing else will read them: free the records here, in slices, rather than
                # in one GIL-holding piece wherever the last reference happens to go.
                budget = GilBudget()
                for batch in batches:
                    if not batch.kept:
                        batch.release(budget)
            return batches

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything recorded so far through every sink; False if ``timeout`` passed first."""
        if self._state is not State.RUNNING:
            self._collector.drain_to_trace()
            return True
        self._check_fork()
        runtime = self._runtime
        try:
            if runtime is None:
                return False
            if runtime.is_service_thread():
                self._flush_sync()  # called from the service's own loop: write in place
                return True
            with signals_deferred():
                return bool(runtime.call(self._service.flush, timeout=timeout))
        except Exception as exc:  # noqa: BLE001
            self._rec.note_internal_error(exc)
            return False

    async def aflush(self, timeout: float = 5.0) -> bool:
        """``flush()`` for async code: awaits instead of blocking the event loop."""
        import anyio

        if self._state is not State.RUNNING:
            self._collector.drain_to_trace()
            return True
        runtime = self._runtime
        if runtime is not None and runtime.is_service_thread():
            with anyio.move_on_after(timeout):
                done: bool = await self._service.flush()
                return done
            return False
        return await anyio.to_thread.run_sync(self.flush, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Close the session root, write everything, stop the service. Safe to call twice."""
        with signals_deferred(), self._lifecycle:
            if self._state is not State.RUNNING:
                return True
            timeout = self.config.shutdown_timeout if timeout is None else timeout
            self._uninstall_integrations()
            self._close_root()
            runtime = self._runtime
            ok = True
            from cirron._flush.runtime import LoopRuntime

            if isinstance(runtime, LoopRuntime):
                # The service runs in an event loop's task group: stop the service now; leaving
                # the task group is for the task that entered it (ashutdown / async with).
                self._open_loop_runtime = runtime
                if runtime.is_service_thread():
                    self._flush_sync(final=True)
                    self._service._close_sync_sinks()
                    runtime.stop_in_place()
                else:
                    try:
                        ok = bool(runtime.call(self._service.stop, timeout, timeout=timeout + 0.5))
                    except Exception:  # noqa: BLE001 - e.g. the loop is gone already
                        ok = False
            elif runtime is not None:
                ok = runtime.stop(timeout)
            self._finish_shutdown()
            return ok

    async def ashutdown(self, timeout: float | None = None) -> bool:
        """``shutdown()`` for async code."""
        import anyio

        runtime = self._runtime
        leftover, self._open_loop_runtime = self._open_loop_runtime, None
        if self._state is not State.RUNNING:
            if leftover is not None:  # stopped by a sync shutdown(): leave its task group here
                try:
                    await leftover.close_task_group()
                except Exception as exc:  # noqa: BLE001 - not the task that entered it
                    self._rec.note_internal_error(exc)
            return True
        from cirron._flush.runtime import LoopRuntime

        if isinstance(runtime, LoopRuntime):
            timeout = self.config.shutdown_timeout if timeout is None else timeout
            self._uninstall_integrations()
            self._close_root()
            ok = await runtime.stop(timeout)
            self._finish_shutdown()
            return ok
        return await anyio.to_thread.run_sync(self.shutdown, timeout)

    def _close_root(self) -> None:
        root = self._rec.root
        if self._task_roots is not None:
            self._task_roots.close()
        if root is not None and root.end_ns is None:
            root._close(None, time.process_time_ns(), time.time_ns())

    def _finish_shutdown(self) -> None:
        self._state = State.CLOSED
        self._runtime = None
        self._rec.root = None
        if self._atexit_registered:
            atexit.unregister(self._atexit)
            self._atexit_registered = False
        self._signals.uninstall()
        if self._workers is not None:
            self._workers.uninstall()
        self._account_for_workers()

    def _account_for_workers(self) -> None:
        """At the end of a session: a worker lets go of its mark; a parent looks for workers that
        died before writing everything. Then the one warning line, if anything was lost."""
        from cirron._workers import lost_workers

        try:
            losses = self._losses()
            mark, self._worker_mark = self._worker_mark, None
            if mark is not None:
                mark.release(everything_written=not any(losses))
            lost = []
            if mark is None and not self._is_worker and self.session_id is not None \
                    and "spool" in self.config.output:
                lost = lost_workers(self.config.spool_dir, self.session_id)
                self.workers_lost = [w.pid for w in lost]
                self.workers_lost_unwritten = {"spans": sum(w.spans or 0 for w in lost),
                                               "marks": sum(w.marks or 0 for w in lost)}
            line = loss_line(self.session_id, losses, lost)
        except Exception as exc:  # noqa: BLE001 - the exit must go on
            self._rec.note_internal_error(exc)
            return
        if line is not None:
            self._warn_once(line)

    def _losses(self) -> list[Any]:
        """What this session did not keep: per sink, and in the buffers (full, or not drained in time)."""
        buffers = Loss("buffers")
        totals = self._rec.buffers.totals()
        buffers.add("spans_buffer_full", totals["spans_dropped"])
        buffers.add("marks_buffer_full", totals["marks_dropped"])
        for key, count in self._collector.drops.items():
            buffers.add(key, count)
        c_spans, c_marks = self._collector.pending()
        if self._state is not State.RUNNING:
            buffers.add("spans_not_drained_in_time", totals["spans_pending"] + c_spans)
            buffers.add("marks_not_drained_in_time", totals["marks_pending"] + c_marks)
        return [buffers] + [sink_loss(sink.state()) for sink in self._sinks]

    def _warn_once(self, line: str) -> None:
        """One line on stderr, never twice the same one from this instance."""
        if line not in self._warned:
            self._warned.add(line)
            warn(line)

    def _on_signal(self, signum: int, fatal: bool) -> None:
        """SIGTERM/SIGINT (see :mod:`cirron._signals`): write what we hold before the signal goes on."""
        from cirron._flush.runtime import ThreadRuntime

        if self._pid != os.getpid():
            return  # a forked child before its session state was reset: nothing of its own yet
        if self._state is not State.RUNNING or not isinstance(self._runtime, ThreadRuntime):
            return
        timeout = self.config.shutdown_timeout
        if not fatal:
            self.flush(timeout)  # the host's own handler decides what happens next
            return
        import signal

        self._close_open_spans(interrupted=signal.Signals(signum).name)
        self.shutdown(timeout)

    def _close_open_spans(self, interrupted: str) -> None:
        """Close every open span of this process (the root aside) with ``interrupted`` set: the
        process is about to end and their ``with`` blocks will never be left."""
        main = threading.get_ident()
        root = self._rec.root
        now = time.time_ns()
        roots = self._task_roots
        for span in list(self._rec.open.values()):
            if span is root or span.end_ns is not None or (roots is not None and roots.is_one(span)):
                continue  # roots are closed by the shutdown that follows
            try:
                span.set_attr("interrupted", interrupted)
                span._token = None  # leave the context variables alone: other threads own theirs
                cpu1 = time.thread_time_ns() if span.thread_id == main else span._cpu0
                span._close(None, cpu1, now)
            except Exception as exc:  # noqa: BLE001
                self._rec.note_internal_error(exc)

    # -- fork safety ---------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        was_running = self._state is State.RUNNING
        was_worker = self._restart_pending  # a worker that had not recorded yet (a forkserver, say)
        old_root = self._rec.root
        anchor = self._rec.current.get()
        self._rec.reset_after_fork()
        self._trace.reset_after_fork(self._rec.open)
        self._collector.reset_after_fork()
        self._lifecycle = threading.RLock()
        for sink in self._sinks:
            writer = getattr(sink, "writer", None)
            if writer is not None and writer._lock_fd is not None:
                try:
                    os.close(writer._lock_fd)  # close our copy; never unlock the parent's lock
                except OSError:
                    pass
                writer.forget_lock_after_fork()
        self._runtime = None
        self._service = None
        self._sinks = []
        self._atexit_registered = False
        self._signals.forget_after_fork()
        if self._workers is not None:
            self._workers.active = False  # the parent's to undo; a forked child never patches back
        if self._worker_mark is not None:
            self._worker_mark.forget_after_fork()
            self._worker_mark = None
        if (was_running or was_worker) and old_root is not None:
            # Records of this child go below a process root of its own, under the span that was
            # open when it was forked (the parent's root if none; a never-written root's parent).
            if anchor is None:
                anchor = old_root if was_running else old_root.parent
            self._state = State.IDLE
            self._open_process_root(anchor)
            self._wait_for_first_record()
        else:
            self._restart_pending = False
            self._task_roots = None
            self._rec.buffers.on_new_buffer = None
            self._state = State.IDLE if self._state is State.IDLE else State.CLOSED
        self._pid = os.getpid()  # last: until here the state is the parent's (see _on_signal)

    def _open_process_root(self, parent: Any) -> None:
        """Open this worker's ``cirron.process`` span below ``parent`` (a span of another process)."""
        from cirron._record.span import PyRecorderBase
        from cirron._workers import PROCESS_SPAN_NAME

        attrs = {"pid": os.getpid(), "parent_pid": os.getppid()}
        # The reference start_span: the compiled one makes this thread's buffer, and the first
        # buffer is what tells a worker that it has recorded something.
        root = PyRecorderBase.start_span(self._rec, PROCESS_SPAN_NAME, attrs, parent=parent)
        root._cpu0 = time.process_time_ns()  # the process root's CPU time is the whole process's
        self._rec.root = root
        self._rec.current.set(None)
        from cirron._workers import TaskRoots

        self._task_roots = TaskRoots(self._rec)
        self._is_worker = True
        self._resource = dict(self._resource, pid=os.getpid())

    def _wait_for_first_record(self) -> None:
        self._restart_pending = True
        self._rec.buffers.on_new_buffer = self._start_in_child

    def _take_worker_mark(self) -> None:
        """Held until this worker has written what it recorded (see :class:`cirron._workers.WorkerMark`)."""
        from cirron._workers import WorkerMark

        if "spool" not in self.config.output or self.session_id is None:
            return
        try:
            mark = WorkerMark(self.config.spool_dir, self.session_id)
            mark.take()
        except (OSError, ValueError):
            return  # an unwritable spool: the spool sink counts and reports that itself
        self._worker_mark = mark
        if self._service is not None:
            self._service.on_look = self._report_unwritten

    def _report_unwritten(self) -> None:
        """In a worker, at each look of its flush service: what it holds unwritten, into its mark,
        for the parent to count should the worker be killed before writing it."""
        mark = self._worker_mark
        lock = self._collector.lock
        if mark is None or not lock.acquire(blocking=False):
            return  # a flush is under way: the next look reports
        try:
            primary = _primary({sink.name: sink.state() for sink in self._sinks})
            spans, marks = self._unwritten(self._rec.buffers.totals(), primary)
        finally:
            lock.release()
        mark.publish(spans, marks)

    def _unwritten(self, totals: dict[str, int], primary: dict[str, Any] | None) -> tuple[int, int]:
        """Closed spans and marks recorded and not written yet: in the thread buffers, drained
        and not handed to the primary sink, held by it (the collector's lock held)."""
        c_spans, c_marks = self._collector.pending()
        return (totals["spans_pending"] + c_spans + (primary["spans_pending"] if primary else 0),
                totals["marks_pending"] + c_marks + (primary["marks_pending"] if primary else 0))

    def _join_parent_session(self, info: dict[str, Any]) -> None:
        """This process is a worker of a session started in another process (see
        :mod:`cirron._workers`): record into it, starting the flush service on the first record."""
        from cirron._config import Config
        from cirron._workers import INHERITED_SETTINGS, RemoteSpan

        explicit = {name: info.get(name) for name in INHERITED_SETTINGS}
        explicit["spool_dir"] = info["spool_dir"]
        self._config = Config.resolve(explicit)
        self.session_id = info["session_id"]
        ranks = detect_rank()
        self._resource = resource_attributes(info.get("rank", ranks.rank), info.get("world_size", ranks.world_size),
                                             None, None)
        self._resource.update(local_rank=info.get("local_rank", ranks.local_rank), run_id=info.get("run_id"))
        self._open_process_root(RemoteSpan(info["span"]))
        self._wait_for_first_record()

    def _share_with_workers(self) -> None:
        """Make this (the default) instance the one worker processes record through."""
        from cirron._workers import WorkerPropagation, inherited_session, run_tasks_through

        self._workers = WorkerPropagation(self)
        run_tasks_through(self)
        info = inherited_session()
        if info is not None:
            try:
                self._join_parent_session(info)
            except Exception as exc:  # noqa: BLE001 - a worker must come up whatever its parent set
                self._rec.note_internal_error(exc)

    _restart_pending = False
    #: A LoopRuntime stopped by a sync shutdown(), whose task group is still to be left.
    _open_loop_runtime: Any = None

    def _check_fork(self) -> None:
        if self._restart_pending:
            self._start_in_child()

    def _start_in_child(self) -> None:
        """First record in a forked child: a flush service of its own, writing to the same spool."""
        with signals_deferred(), self._lifecycle:
            if not self._restart_pending:
                return
            self._restart_pending = False
            self._rec.buffers.on_new_buffer = None
            try:
                self._build_service()
                for sink in self._sinks:
                    writer = getattr(sink, "writer", None)
                    if writer is not None:
                        writer.take_lock = False
                from cirron._flush.runtime import ThreadRuntime

                self._runtime = ThreadRuntime(self._service)
                self._runtime.start(wait=None)
                self._state = State.RUNNING
                self._register_atexit()
                self._signals.install()
                self._take_worker_mark()
                import multiprocessing.util

                # multiprocessing children leave through os._exit and skip atexit.
                multiprocessing.util.Finalize(self, _finalize_child, args=(weakref.ref(self),), exitpriority=100)
            except Exception as exc:  # noqa: BLE001
                self._rec.note_internal_error(exc)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """A plain dict: running state, buffered/written/dropped counts, errors, sink states."""
        with signals_deferred(), self._collector.lock:
            totals = self._rec.buffers.totals()
            sinks = {s.name: s.state() for s in self._sinks}
            primary = _primary(sinks)
            spans_pending, marks_pending = self._unwritten(totals, primary)
        drops: dict[str, int] = {}
        if totals["spans_dropped"]:
            drops["spans_buffer_full"] = totals["spans_dropped"]
        if totals["marks_dropped"]:
            drops["marks_buffer_full"] = totals["marks_dropped"]
        for src in (self._collector.drops, primary["dropped"] if primary else {}):
            for k, v in src.items():
                drops[k] = drops.get(k, 0) + v
        spans_dropped = sum(v for k, v in drops.items() if k.startswith("spans_"))
        marks_dropped = sum(v for k, v in drops.items() if k.startswith("marks_"))
        errors = [s["last_error"] for s in sinks.values() if s["last_error"]]
        service = self._service
        last_error = (errors[-1] if errors else None) or (service.last_error if service else None) \
            or self._collector.last_job_error or self._rec.last_internal_error
        runtime_error = getattr(self._runtime, "error", None)
        config_problems = list(self._config.problems) if self._config is not None else []
        return redact_tree({
            "running": self._state is State.RUNNING,
            "state": self._state.value,
            "session_id": self.session_id,
            "pid": os.getpid(),
            "spans_recorded": totals["spans_recorded"],
            "spans_written": primary["spans_written"] if primary else 0,
            "spans_dropped": spans_dropped,
            "spans_pending": spans_pending,
            "marks_recorded": totals["marks_recorded"],
            "marks_written": primary["marks_written"] if primary else 0,
            "marks_dropped": marks_dropped,
            "marks_pending": marks_pending,
            "spans_open": len(self._rec.open),
            "spans_buffered": totals["spans_pending"],
            "marks_buffered": totals["marks_pending"],
            "span_drop_count": spans_dropped,
            "mark_drop_count": marks_dropped,
            "drops": drops,
            "batches_written": primary["batches_written"] if primary else 0,
            "last_flush_ns": service.last_flush_ns if service else None,
            "last_error": runtime_error or last_error or (config_problems[-1] if config_problems else None),
            "last_flush_ok": service.last_flush_ok if service else None,
            "last_flush_problem": service.last_flush_problem if service else None,
            "config_problems": config_problems,
            "workers_lost": list(self.workers_lost),
            "workers_lost_unwritten": dict(self.workers_lost_unwritten),
            "internal_errors": self._rec.internal_errors,
            "compiled": compiled_speedups(),
            "sinks": sinks,
            "snapshots": self._snapshots.health() if self._snapshots is not None else None,
        })

    # -- configuration helpers -------------------------------------------------------------------

    def env(self, name: str, default: Any = None) -> Any:
        """An environment variable; values starting with ``{``/``[`` are parsed as JSON."""
        return _env(name, default)

    def deps(self, *names: str) -> dict[str, str | None]:
        """Which optional integrations are importable, with versions; with ``names``, raise
        :class:`CirronDependencyError` listing the missing ones."""
        from cirron._deps import deps

        return deps(*names)

    def secret(self, name: str) -> str:
        """``CIRRON_SECRET_<NAME>`` or the file ``/etc/cirron/secrets/<name>``."""
        return _secret(name)

    # -- extension points used by snapshots and integrations -------------------------------------

    def _emit_snapshot(self, record: dict[str, Any]) -> None:
        self._collector.add_snapshot(record)

    def _offload(self, fn: Any) -> None:
        """Run ``fn()`` off the caller's thread before the next batch is written (inline if idle)."""
        if self._state is State.RUNNING:
            self._collector.add_job(fn)
            if self._service is not None:
                self._wake_service()
        else:
            fn()

    def _wake_service(self) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        try:
            if runtime.is_service_thread():
                self._service.wake()
        except Exception:  # noqa: BLE001
            pass

    def _write_blob(self, relative_path: str | os.PathLike[str], data: bytes) -> Path:
        """Write a blob under the ``.cirron/`` directory atomically, counted against the disk cap."""
        from cirron.spool.paths import cirron_root
        from cirron.spool.writer import atomic_write

        path = cirron_root(self.config.spool_dir) / relative_path
        for sink in self._sinks:
            writer = getattr(sink, "writer", None)
            if writer is not None:
                writer.write_blob(path, data)
                return path
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return path

    # -- integrations (implemented in their own modules) ----------------------------------------

    def wrap(self, obj: T, **opts: Any) -> T:
        """Instrument a torch module, a scikit-learn estimator, an onnxruntime session or a callable;
        the result is ``obj`` itself or a stand-in of the same type."""
        from cirron._wrap import wrap

        wrapped: T = wrap(self, obj, **opts)
        return wrapped

    def snapshot(self, tensors: Any, *, blobs: bool | None = None) -> None:
        """Snapshot a dict of arrays/tensors now, attached to the innermost open span."""
        from cirron.snapshots import snapshot

        snapshot(self, tensors, blobs=blobs)

    def load(self, name: str, *, source: str = "local") -> Any:
        """Load a dataset by alias (cirron.yaml ``data``) or path, inside a ``load`` span."""
        from cirron._load import load

        return load(self, name, source=source)

    @property
    def inference(self) -> InferenceDecorator:
        """``@ci.inference`` / ``@ci.inference(config=...)``: a ``request`` span per call."""
        from cirron._record.instrument import inference_decorator

        return inference_decorator(self)

    def __repr__(self) -> str:
        return f"<Cirron state={self._state.value} session={self.session_id}>"


def _device_info() -> dict[str, Any]:
    """The session root's ``device`` attrs on a CUDA machine; nothing (and no import) elsewhere."""
    from cirron._device import session_device_attrs

    return session_device_attrs()


def _yield_inside(scope: Scope, item: T, loop_exits: LoopExits) -> Iterator[T]:
    """Yield ``item`` with ``scope`` open. Leaving the loop early closes the generator: the span
    ends there and waits for the cause (:mod:`cirron._record.loop_exit`); an exception thrown
    in closes it with the error."""
    try:
        yield item
    except GeneratorExit:
        loop_exits.defer(scope, _loop_frame())
        raise
    except BaseException as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)
        raise


def _loop_frame() -> Any:
    """The frame that runs the ``for`` over a ``ci.epochs``/``ci.batches`` generator being closed:
    the first one above the generators of this module."""
    f: types.FrameType | None = sys._getframe(2)
    while f is not None and f.f_code.co_filename == __file__:
        f = f.f_back
    return f


def _primary(sinks: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The state of the sink whose counts ``health()`` gives: the spool, else the first one."""
    return sinks.get("spool") or (next(iter(sinks.values())) if sinks else None)


def _finalize_child(ref: weakref.ref[Cirron]) -> None:
    c = ref()
    if c is not None:
        c._atexit()


class _Profiling:
    def __init__(self, owner: Cirron, output: Any, kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._output = output
        self._kwargs = kwargs
        self._started = False

    def __enter__(self) -> Cirron:
        self._started = not self._owner.running
        return self._owner.profile(self._output, **self._kwargs)

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self._owner.shutdown()

    async def __aenter__(self) -> Cirron:
        owner = self._owner
        with owner._lifecycle:
            if owner.running:
                return owner
            kwargs = dict(self._kwargs)
            inline, path = kwargs.pop("config", None), kwargs.pop("path", None)
            if not owner._prepare_session(dict(kwargs, output=self._output), inline, path):
                return owner
        from cirron._flush.runtime import LoopRuntime

        runtime = LoopRuntime(owner._service)
        await runtime.start()
        owner._runtime = runtime
        owner._state = State.RUNNING
        owner._register_atexit()
        owner._install_integrations()
        self._started = True
        return owner

    async def __aexit__(self, *exc: Any) -> None:
        if self._started:
            await self._owner.ashutdown()


#: Every instance, so a forked child can reset them all (weak: instances are not kept alive).
_INSTANCES: weakref.WeakSet[Cirron] = weakref.WeakSet()


def _after_fork_all() -> None:
    from cirron._signals import forget_deferral_after_fork, release_after_fork

    forget_deferral_after_fork()
    try:
        for inst in list(_INSTANCES):
            try:
                inst._after_fork_in_child()
            except Exception:  # noqa: BLE001 - a child must come up whatever happens
                pass
    finally:
        release_after_fork()  # a SIGTERM held since the fork is handled now, by a child that is ready


if hasattr(os, "register_at_fork"):
    from cirron._signals import hold_for_fork, release_after_fork

    os.register_at_fork(before=hold_for_fork, after_in_parent=release_after_fork, after_in_child=_after_fork_all)
