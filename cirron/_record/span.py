"""Scopes and marks: the code that runs in the user's thread on every call.

Rules of this module: no I/O, no locks, no id strings, no system calls that can wait for the
flush service. A scope object is its own span record while it is open; when it closes, one
tuple of plain values is appended to the thread's buffer (tuples of atomics drop out of the
cyclic GC, so a backlog of closed spans never makes a garbage collection slow). Text is made
later by the flush service. A failure of cirron's own never reaches the caller; it is counted
in ``Recorder.internal_errors``.

The Python code here is the reference. Where ``_cscope.c`` was built, ``Scope`` enters and
exits in C, and ``Recorder`` takes ``start_span``, ``mark`` and its hot fields from
``_cscope.RecorderBase`` instead of :class:`PyRecorderBase` (see :mod:`cirron._native`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Generator

# The clocks the Python scope reads, looked up at each call: cirron.testing swaps in a manual one.
from time import thread_time_ns as thread_time_ns
from time import time_ns as time_ns
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from cirron import _native as native
from cirron._errors import CirronMarkTypeError
from cirron._guard import reraise_internal_errors
from cirron._ids import IDS, hex_id
from cirron._record.buffer import BufferRegistry
from cirron._redact import redact

MAX_MARK_STR_BYTES = 256

#: Layout of a closed-span record in a thread buffer (a tuple here, a ``_cscope.Row`` when compiled).
#: (id, parent_id or 0, name, index, start_ns, end_ns, cpu_ns, gpu_ns, memory_peak_bytes, thread_id, attrs)
CLOSED_FIELDS = ("id", "parent", "name", "index", "start_ns", "end_ns", "cpu_ns", "gpu_ns",
                 "memory_peak_bytes", "thread_id", "attrs")
#: Layout of a mark record: (span_id or 0, name, value, kind, ts_ns, attrs, thread_id)
MARK_TUPLE_FIELDS = ("span", "name", "value", "kind", "ts_ns", "attrs", "thread_id")

P = ParamSpec("P")
R = TypeVar("R")
#: Attributes of a span or mark: plain values keyed by name.
Attrs = dict[str, Any]
#: A closed-span record as appended to a thread buffer (layout: :data:`CLOSED_FIELDS`).
ClosedRow = tuple[Any, ...]

_get_ident = threading.get_ident
#: The compiled enter/exit (``_cscope.c``), when built and wanted; None runs :class:`PyScope`.
_cscope = native.load("cirron._record._cscope")


def _error_text(exc: BaseException) -> str:
    """``Type: message`` with any ``ci.secret()`` value redacted (it goes to the spool, OTLP, logs)."""
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ is the user's exception, not ours to raise
        msg = ""
    return redact(f"{type(exc).__name__}: {msg}") if msg else type(exc).__name__


class PyRecorderBase:
    """The pure-Python half of :class:`Recorder` that ``_cscope.RecorderBase`` replaces when
    compiled: the reference for its ``start_span`` and ``mark``."""

    #: Set by ``ci.profile(enabled=False)`` / ``CIRRON_ENABLED=0``: ``mark`` records nothing.
    disabled = False

    #: The scope class this recorder's spans are made of (the compiled one needs the compiled recorder).
    scope_type: type[PyScope]
    # Set by Recorder.__init__ (C slots when compiled).
    current: contextvars.ContextVar[Scope | None]
    buffers: BufferRegistry
    local: threading.local
    open: dict[int, Scope]
    root: Scope | None

    def note_internal_error(self, exc: BaseException) -> None:
        raise NotImplementedError

    def forget_thread(self) -> None:
        """Drop what the compiled scope caches about the calling thread (nothing to drop here)."""

    def start_span(self, name: str, attrs: Attrs | None = None, index: int | None = None,
                   parent: Scope | None = None) -> Scope:
        """Open a span without making it current (session roots, framework hooks)."""
        scope = self.scope_type(cast("Recorder", self), name, attrs, index)
        scope.parent = parent
        scope._token = None
        scope.id = next(IDS.ids)
        scope.thread_id = _get_ident()
        self.open[scope.id] = scope
        scope.start_ns = time_ns()
        scope._cpu0 = thread_time_ns()
        return scope

    def mark(self, name: str, value: Any, /, *, kind: str = "point", **attrs: Any) -> None:
        if self.disabled:
            return
        t = type(value)
        if t is not float and t is not int and t is not bool:
            value = coerce_mark_value(value)
        if kind != "point" and kind != "summary":
            raise CirronMarkTypeError(f"ci.mark kind must be 'point' or 'summary', not {kind!r}")
        try:
            try:
                tb = self.local.tb
            except AttributeError:
                tb = self.buffers.new_thread_buffer()
            ring = tb.marks
            if len(ring) >= tb.mark_capacity:
                try:
                    ring.popleft()
                    tb.marks_dropped += 1
                except IndexError:
                    pass
            span = self.current.get() or self.root
            # No id here: nothing refers to a mark, so the flush service numbers them.
            ring.append((span.id if span is not None else 0, name, value, kind, time_ns(), attrs or None, tb.thread_id))
        except Exception as exc:  # pragma: no cover - cirron's own failure must not reach the caller
            self.note_internal_error(exc)


if TYPE_CHECKING:
    _RecorderBase = PyRecorderBase
else:
    _RecorderBase = _cscope.RecorderBase if _cscope is not None else PyRecorderBase


class _RecorderState:
    """What both recorders have besides ``start_span`` and ``mark``: their state and the rare paths."""

    if TYPE_CHECKING:
        buffers: BufferRegistry
        open: dict[int, Scope]

        def forget_thread(self) -> None: ...

    def __init__(self, mark_capacity: int) -> None:
        self.current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
            f"cirron_span_{id(self):x}", default=None
        )
        self.buffers = BufferRegistry(mark_capacity)
        #: The buffers' thread-local (``local.tb`` is this thread's buffer once it has one).
        self.local: threading.local = self.buffers.local
        #: Spans entered and not yet closed, by id (the flush service writes them as open).
        self.open: dict[int, Scope] = {}
        #: The open ``cirron.session`` span while a session runs.
        self.root: Scope | None = None
        self.internal_errors: int = 0
        self.last_internal_error: str | None = None

    def reset_after_fork(self) -> None:
        """In a forked child: new buffers, and the parent's open spans are the parent's to close."""
        self.buffers.reset_after_fork()
        self.open = {}
        self.forget_thread()  # the compiled scope's cached buffer is the parent's

    def record_closed(self, name: str, parent: Scope | None, start_ns: int, end_ns: int, cpu_ns: int | None,
                      attrs: Attrs | None = None, index: int | None = None) -> int:
        """Record a span that already happened (e.g. the wait for a batch, measured before)."""
        sid = next(IDS.ids)
        self._append_closed((sid, parent.id if parent is not None else 0, name, index, start_ns, end_ns, cpu_ns,
                             None, None, _get_ident(), attrs))
        return sid

    def _append_closed(self, record: ClosedRow) -> None:
        try:
            tb = self.local.tb
        except AttributeError:
            tb = self.buffers.new_thread_buffer()
        if len(tb.spans) < tb.span_capacity:
            tb.spans.append(record)
        else:
            tb.spans_dropped += 1

    def note_internal_error(self, exc: BaseException) -> None:
        """Count a failure of cirron's own; under pytest raise it again (see :mod:`cirron._guard`)."""
        self.internal_errors += 1
        self.last_internal_error = _error_text(exc)
        if reraise_internal_errors():
            raise exc


class Recorder(_RecorderState, _RecorderBase):
    """Hot-path state of one :class:`cirron.Cirron`: its context variable, open spans, buffers.

    With the compiled scope, ``current``, ``open``, ``root``, ``local`` and ``buffers`` are C
    slots of ``RecorderBase`` that enter/exit read directly."""


class PyRecorder(_RecorderState, PyRecorderBase):
    """The pure-Python recorder, whatever was compiled: what runs without the C, and the twin the
    contract tests hold the compiled one to (``Cirron(_pure_python=True)``)."""


def coerce_mark_value(value: Any) -> Any:
    """bool/int stay, float-likes become float, str is capped at 256 UTF-8 bytes; else an error."""
    if isinstance(value, str):
        if len(value) > MAX_MARK_STR_BYTES // 4:
            raw = value.encode("utf-8", "surrogatepass")
            if len(raw) > MAX_MARK_STR_BYTES:
                value = raw[:MAX_MARK_STR_BYTES].decode("utf-8", "ignore")
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    # numpy scalars, 0-d arrays and 0-d tensors: anything with a scalar .item().
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if item is not None and (shape is None or tuple(shape) == ()):
        try:
            v = item()
        except Exception:  # noqa: BLE001 - fall through to the type error below
            v = None
        if isinstance(v, (bool, int, float)):
            return v
    if shape is None and hasattr(value, "__float__") and not isinstance(value, complex):
        try:
            return float(value)
        except Exception:  # noqa: BLE001
            pass
    raise CirronMarkTypeError(
        f"ci.mark() takes a float, int, str or bool value, not {type(value).__qualname__}; "
        "record tensors and arrays with snapshots (ci.wrap / ci.snapshot) instead"
    )


class _ScopeMethods:
    """What every scope has besides its fields and its enter/exit (shared by both versions)."""

    if not TYPE_CHECKING:  # the subclasses declare the slots of these fields
        __slots__ = ()

    # The fields, stored by the subclass (PyScope's slots or _cscope.ScopeBase's C members).
    _rec: Recorder
    name: str
    attrs: Attrs | None
    index: int | None
    id: int | None
    parent: Scope | None
    start_ns: int
    end_ns: int | None
    cpu_ns: int | None
    thread_id: int
    _token: contextvars.Token[Scope | None] | None
    _cpu0: int
    _outer: Scope | None
    _more: dict[str, Any] | None

    if TYPE_CHECKING:
        def __init__(self, rec: Recorder, name: str, attrs: Attrs | None, index: int | None = None) -> None: ...

        def __enter__(self) -> Scope: ...

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                     tb: TracebackType | None, cpu1: int | None = None, end: int | None = None) -> None: ...

    # -- the span record ---------------------------------------------------------------------

    def _get(self, key: str) -> Any:
        more = self._more
        return None if more is None else more.get(key)

    def _set(self, key: str, value: Any) -> None:
        if self._more is None:
            self._more = {}
        self._more[key] = value

    @property
    def gpu_ns(self) -> int | None:
        """GPU time of the span in ns, set by whoever measured it (e.g. CUDA events)."""
        v: int | None = self._get("gpu_ns")
        return v

    @gpu_ns.setter
    def gpu_ns(self, v: int | None) -> None:
        self._set("gpu_ns", v)

    @property
    def memory_peak_bytes(self) -> int | None:
        """Peak memory while the span was open, when measured."""
        v: int | None = self._get("memory_peak_bytes")
        return v

    @memory_peak_bytes.setter
    def memory_peak_bytes(self, v: int | None) -> None:
        self._set("memory_peak_bytes", v)

    @property
    def written_open(self) -> bool:
        """The flush service has written this span as open."""
        return bool(self._get("written_open"))

    @written_open.setter
    def written_open(self, v: bool) -> None:
        self._set("written_open", v)

    @property
    def span(self) -> Scope | None:
        """The open span (this object) between enter and exit, else None."""
        return cast("Scope", self) if self.id is not None and self.end_ns is None else None

    @property
    def id_hex(self) -> str:
        h: str | None = self._get("hex")
        if h is None:
            h = hex_id(self.id or 0)
            self._set("hex", h)
        return h

    def set_attr(self, key: str, value: Any) -> None:
        if self.attrs is None:
            self.attrs = {}
        self.attrs[key] = value

    def set(self, **attrs: Any) -> None:
        """Add attributes to the open span."""
        for k, v in attrs.items():
            self.set_attr(k, v)

    def __repr__(self) -> str:
        state = "new" if self.id is None else ("open" if self.end_ns is None else "closed")
        return f"<scope {self.name!r} {state}>"

    # -- the rare turns of enter and exit ----------------------------------------------------

    def _reenter(self) -> Scope:
        """This object was entered before: record the new entry as a scope of its own."""
        inner = cast("Scope", type(self)(self._rec, self.name, dict(self.attrs) if self.attrs else None, self.index))
        inner._outer = self._outer
        self._outer = inner
        return inner.__enter__()

    def _note_exception(self, exc: BaseException) -> None:
        if isinstance(exc, Exception):
            self.set_attr("error", _error_text(exc))
        else:
            self.set_attr("interrupted", type(exc).__name__)

    def _close(self, exc: BaseException | None, cpu1: int, end: int) -> None:
        """Write the record from readings taken earlier; the context must already be left."""
        self.__exit__(None, exc, None, cpu1, end)

    def finish(self, exc: BaseException | None = None, *, cpu_ns: int | None = None,
               end_ns: int | None = None) -> None:
        """Close a span opened with :meth:`Recorder.start_span` (it never became current).

        ``cpu_ns``/``end_ns`` override the measured values, for spans whose work ran in pieces
        (on several threads, or between the steps of a stream)."""
        if self.id is not None and self.end_ns is None:
            self.__exit__(None, exc, None, None if cpu_ns is None else self._cpu0 + cpu_ns, end_ns)

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return self.__exit__(exc_type, exc, tb)

    # -- decorator ---------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn``: each call (each run of a generator) is a span of this name."""
        cls, rec, name, attrs = type(self), self._rec, self.name, self.attrs
        f: Any = fn  # one wrapper per kind of function; each keeps fn's signature

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with cls(rec, name, dict(attrs) if attrs else None):
                    return await f(*args, **kwargs)
            return cast("Callable[P, R]", async_wrapper)

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                with cls(rec, name, dict(attrs) if attrs else None):
                    return (yield from f(*args, **kwargs))
            return cast("Callable[P, R]", gen_wrapper)

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                async with cls(rec, name, dict(attrs) if attrs else None):
                    async for item in f(*args, **kwargs):
                        yield item
            return cast("Callable[P, R]", agen_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with cls(rec, name, dict(attrs) if attrs else None):
                return fn(*args, **kwargs)
        return wrapper


class PyScope(_ScopeMethods):
    """The pure-Python scope: the reference for ``_cscope.c`` and the fallback without it.

    ``with ci.scope("name"):``, ``async with``, ``@ci.scope("name")`` — and the open span itself.
    Attributes readable while open: ``id``/``id_hex``, ``parent``, ``name``, ``index``,
    ``start_ns``, ``attrs``; settable before it closes: ``gpu_ns``, ``memory_peak_bytes``,
    ``attrs`` (via :meth:`set_attr`).
    """

    # The rarely set fields (gpu_ns, memory_peak_bytes, the flush service's flags) live in
    # ``_more``, a dict made on first use: every slot stored in __init__ is paid on every scope.
    __slots__ = (
        "_rec", "name", "attrs", "index", "id", "parent", "start_ns", "end_ns", "cpu_ns",
        "thread_id", "_token", "_cpu0", "_outer", "_more",
    )

    def __init__(self, rec: Recorder, name: str, attrs: Attrs | None, index: int | None = None) -> None:
        # (Annotated again here: pyright takes an unannotated assignment in a slotted subclass
        # for a new declaration of the field.)
        self._rec = rec
        self.name: str = name
        self.attrs: Attrs | None = attrs
        self.index: int | None = index
        self.id = None
        self.end_ns = None
        self.cpu_ns = None
        self._outer = None
        self._more = None

    def __enter__(self) -> Scope:
        if self.id is not None:
            return self._reenter()
        rec = self._rec
        cur = rec.current
        try:
            self.parent: Scope | None = cur.get() or rec.root
            self.id = sid = next(IDS.ids)
            self.thread_id: int = _get_ident()
            self._token = cur.set(self)
            rec.open[sid] = self
        except Exception as exc:  # pragma: no cover
            rec.note_internal_error(exc)
        self.start_ns: int = time_ns()
        self._cpu0 = thread_time_ns()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, cpu1: int | None = None, end: int | None = None) -> None:
        # ``cpu1``/``end`` are only passed by :meth:`finish`; a ``with`` block measures here.
        if cpu1 is None:
            cpu1 = thread_time_ns()
        if end is None:
            end = time_ns()
        if self._outer is not None:  # leaving the latest re-entry of a reused scope object
            inner = self._outer
            self._outer = inner._outer
            return inner.__exit__(exc_type, exc, tb)
        if self.id is None or self.end_ns is not None:
            return None
        rec = self._rec
        try:
            token = self._token
            if token is not None:
                self._token = None
                try:
                    rec.current.reset(token)
                except ValueError:
                    # Closed in another context than it was opened in (a generator finalised
                    # elsewhere): put the parent back instead of failing.
                    parent = self.parent
                    rec.current.set(parent if parent is not rec.root else None)
            if exc is not None:
                self._note_exception(exc)
            sid = self.id
            if rec.open.pop(sid, None) is None:
                # Not one of ours: a span inherited from the parent process across fork().
                self.end_ns = end
                return None
            cpu = cpu1 - self._cpu0
            parent = self.parent
            more = self._more
            record = (sid, parent.id if parent is not None else 0, self.name, self.index, self.start_ns, end, cpu,
                      None if more is None else more.get("gpu_ns"),
                      None if more is None else more.get("memory_peak_bytes"), self.thread_id, self.attrs)
            try:
                buf = rec.local.tb
            except AttributeError:
                buf = rec.buffers.new_thread_buffer()
            spans = buf.spans
            if len(spans) < buf.span_capacity:
                spans.append(record)
            else:
                buf.spans_dropped += 1
            self.cpu_ns = cpu
            self.end_ns = end
        except Exception as exc2:  # pragma: no cover
            rec.note_internal_error(exc2)
        return None


def _load_c_scope() -> type[PyScope] | None:
    """The scope with the compiled enter/exit of ``_cscope.c``, when it was built and is wanted."""
    if _cscope is None:
        return None

    class CScope(_cscope.ScopeBase, _ScopeMethods):  # type: ignore[name-defined,misc]
        __slots__ = ()
        __doc__ = PyScope.__doc__

    CScope.__name__ = CScope.__qualname__ = "Scope"
    _cscope.configure(IDS, coerce_mark_value, CirronMarkTypeError, CScope)
    return cast("type[PyScope]", CScope)


if TYPE_CHECKING:
    # For type checkers the scope is PyScope: the compiled one has the same fields and methods.
    Scope = PyScope
else:
    #: The scope class every recorder uses: compiled enter/exit when available, else PyScope.
    Scope = _load_c_scope() or PyScope
#: True when :data:`Scope` runs the compiled enter/exit.
COMPILED = Scope is not PyScope
Recorder.scope_type = Scope
PyRecorder.scope_type = PyScope


def scope_factory(rec: Recorder, slow: Callable[..., Any]) -> Any:
    """``factory(name, index=None, **attrs)`` making ``Scope(rec, name, attrs or None, index)`` in
    one C call, or None without the compiled scope. ``gpu=`` and a set ``factory.divert`` call
    ``slow`` (the Python ``scope()``) with the same arguments instead."""
    if _cscope is None or not COMPILED:
        return None
    return _cscope.ScopeFactory(Scope, rec, slow)


#: A span is the scope object that opened it.
Span = Scope


class NoopScope:
    """What ``scope()`` returns while recording is disabled: every use works, nothing is kept."""

    __slots__ = ()
    id = None
    span = None
    parent = None
    name = ""
    index = None
    attrs = None
    gpu_ns = None
    memory_peak_bytes = None

    def __enter__(self) -> NoopScope:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    async def __aenter__(self) -> NoopScope:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def set_attr(self, key: str, value: Any) -> None:
        return None

    def set(self, **attrs: Any) -> None:
        return None

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return fn


NOOP_SCOPE = NoopScope()
