"""Spans, scopes and marks: the code that runs in the user's thread on every call.

Rules of this module: no I/O, no locks, no id strings, no system calls that can wait for the
flush service. Everything is appended to the calling thread's buffer and turned into text later.
A failure of cirron's own never reaches the caller; it is counted in ``Recorder.internal_errors``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from time import thread_time_ns, time_ns
from typing import Any

from cirron._errors import CirronMarkTypeError
from cirron._ids import IDS, hex_id
from cirron._record.buffer import BufferRegistry

MAX_MARK_STR_BYTES = 256
_MARK_KINDS = ("point", "summary")


class Span:
    """One timed scope. ``end_ns`` is set last when it closes, so a reader that sees it set
    sees every other field final too."""

    __slots__ = (
        "id", "parent", "name", "index", "start_ns", "end_ns", "cpu_ns", "gpu_ns",
        "memory_peak_bytes", "thread_id", "attrs", "written_open", "_hex", "__weakref__",
    )

    def __init__(self, id: int, parent: Span | None, name: str, index: int | None, attrs: dict | None,
                 thread_id: int) -> None:
        self.id = id
        self.parent = parent
        self.name = name
        self.index = index
        self.attrs = attrs
        self.thread_id = thread_id
        self.end_ns = None
        self.cpu_ns = None
        self.gpu_ns = None
        self.memory_peak_bytes = None
        self.written_open = False
        self._hex = None
        self.start_ns = time_ns()

    @property
    def id_hex(self) -> str:
        h = self._hex
        if h is None:
            h = self._hex = hex_id(self.id)
        return h

    def set_attr(self, key: str, value: Any) -> None:
        if self.attrs is None:
            self.attrs = {}
        self.attrs[key] = value

    def __repr__(self) -> str:
        return f"Span({self.name!r}, id={self.id_hex}, open={self.end_ns is None})"


def _error_text(exc: BaseException) -> str:
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class Recorder:
    """Hot-path state of one :class:`cirron.Cirron`: its context variable and thread buffers."""

    def __init__(self, mark_capacity: int) -> None:
        self.current: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
            f"cirron_span_{id(self):x}", default=None
        )
        self.buffers = BufferRegistry(mark_capacity)
        #: The open ``cirron.session`` span while a session runs.
        self.root: Span | None = None
        self.internal_errors = 0
        self.last_internal_error: str | None = None

    # -- spans ---------------------------------------------------------------------------

    def open_span(self, name: str, attrs: dict | None = None, index: int | None = None,
                  parent: Span | None = None) -> Span:
        """Create and buffer a span without making it current (for roots and hooks)."""
        try:
            tb = self.buffers.local.tb
        except AttributeError:
            tb = self.buffers.new_thread_buffer()
        span = Span(IDS.prefix | next(IDS._counter), parent, name, index, attrs, tb.thread_id)
        tb.spans_recorded += 1
        if len(tb.spans) < tb.span_capacity:
            tb.spans.append(span)
        else:
            tb.spans_dropped += 1
        return span

    def note_internal_error(self, exc: BaseException) -> None:
        self.internal_errors += 1
        self.last_internal_error = _error_text(exc)

    # -- marks ---------------------------------------------------------------------------

    def mark(self, name: str, value: Any, *, kind: str = "point", **attrs: Any) -> None:
        t = type(value)
        if t is not float and t is not int and t is not bool:
            value = coerce_mark_value(value)
        if kind != "point" and kind != "summary":
            raise CirronMarkTypeError(f"ci.mark kind must be 'point' or 'summary', not {kind!r}")
        try:
            try:
                tb = self.buffers.local.tb
            except AttributeError:
                tb = self.buffers.new_thread_buffer()
            ring = tb.marks
            if len(ring) >= tb.mark_capacity:
                try:
                    ring.popleft()
                    tb.marks_dropped += 1
                except IndexError:
                    pass
            ring.append((IDS.prefix | next(IDS._counter), self.current.get() or self.root, name, value,
                         kind, time_ns(), attrs or None))
            tb.marks_recorded += 1
        except Exception as exc:  # pragma: no cover - cirron's own failure must not reach the caller
            self.note_internal_error(exc)


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
    # numpy scalars, 0-d arrays and 0-d tensors: anything with a scalar .item() or __float__.
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if item is not None and (shape is None or tuple(shape) == ()):
        try:
            v = item()
        except Exception:  # noqa: BLE001 - fall through to the type error below
            v = None
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
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


class Scope:
    """``with ci.scope("name"):``, ``async with``, and ``@ci.scope("name")``."""

    __slots__ = ("_rec", "name", "attrs", "index", "span", "_token", "_cpu0", "_stack")

    def __init__(self, rec: Recorder, name: str, attrs: dict | None, index: int | None = None) -> None:
        self._rec = rec
        self.name = name
        self.attrs = attrs
        self.index = index
        self.span: Span | None = None
        self._token = None
        self._stack: list | None = None

    def __enter__(self) -> Scope:
        rec = self._rec
        try:
            try:
                tb = rec.buffers.local.tb
            except AttributeError:
                tb = rec.buffers.new_thread_buffer()
            cur = rec.current
            span = Span(IDS.prefix | next(IDS._counter), cur.get() or rec.root, self.name, self.index,
                        self.attrs, tb.thread_id)
            tb.spans_recorded += 1
            if len(tb.spans) < tb.span_capacity:
                tb.spans.append(span)
            else:
                tb.spans_dropped += 1
            if self.span is not None:  # the same Scope object entered again while open
                if self._stack is None:
                    self._stack = []
                self._stack.append((self.span, self._token, self._cpu0))
            self.span = span
            self._token = cur.set(span)
            self._cpu0 = thread_time_ns()
        except Exception as exc:  # pragma: no cover
            rec.note_internal_error(exc)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        cpu1 = thread_time_ns()
        span = self.span
        if span is None:
            return None
        try:
            if exc is not None:
                if isinstance(exc, Exception):
                    span.set_attr("error", _error_text(exc))
                else:
                    span.set_attr("interrupted", type(exc).__name__)
            span.cpu_ns = cpu1 - self._cpu0
            span.end_ns = time_ns()
            token = self._token
            try:
                self._rec.current.reset(token)
            except ValueError:
                # Closed in another context than it was opened in (e.g. a generator finalised
                # elsewhere): restore the parent instead of failing.
                self._rec.current.set(span.parent if span.parent is not self._rec.root else None)
            if self._stack:
                self.span, self._token, self._cpu0 = self._stack.pop()
            else:
                self.span = None
                self._token = None
        except Exception as exc2:  # pragma: no cover
            self._rec.note_internal_error(exc2)
        return None

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        return self.__exit__(exc_type, exc, tb)

    def set(self, **attrs: Any) -> None:
        """Add attributes to the open span."""
        if self.span is not None:
            for k, v in attrs.items():
                self.span.set_attr(k, v)

    def __call__(self, fn: Callable) -> Callable:
        rec, name, attrs = self._rec, self.name, self.attrs

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with Scope(rec, name, dict(attrs) if attrs else None):
                    return await fn(*args, **kwargs)
            return async_wrapper

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with Scope(rec, name, dict(attrs) if attrs else None):
                    return (yield from fn(*args, **kwargs))
            return gen_wrapper

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with Scope(rec, name, dict(attrs) if attrs else None):
                    async for item in fn(*args, **kwargs):
                        yield item
            return agen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Scope(rec, name, dict(attrs) if attrs else None):
                return fn(*args, **kwargs)
        return wrapper
