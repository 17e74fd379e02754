"""``@ci.inference``: one ``request`` span per call of a serving function.

How a request is isolated
-------------------------
Each call builds a :class:`_Request` holding its own :class:`contextvars.Context` (a copy of the
caller's), with the recorder's current span set to the new ``request`` span and the module's
``_CURRENT`` variable set to the request itself. Every piece of user code that belongs to the
request runs *inside that context* through ``Context.run``:

* a plain function: once;
* a coroutine: each ``send``/``throw`` step; the request object itself is the awaitable that
  forwards them (Python 3.10 has no ``create_task(context=...)``), and :class:`_InContext` does
  the same for the awaitables of async streams;
* a stream (generator, async generator, the body iterator of a Starlette ``StreamingResponse``,
  the iterator of an ``openai`` ``Stream``): each ``next``/``send``/``throw``/``close`` step.

So the caller's context is never modified, no ``ContextVar`` token is ever held across a
``yield`` or an ``await``, and a stream closed early, from another task or by the garbage
collector, cannot fail to "detach" anything. Concurrent requests (threads, asyncio tasks, or
both) each have their own context and never see each other's scopes or marks.

Streams
-------
A request whose result is a stream stays open until the stream ends; the attribute
``stream_end`` says how: ``exhausted``, ``closed`` (the consumer closed it early),
``cancelled``, ``disconnected`` (the HTTP client went away), ``error`` or ``abandoned``
(never consumed, then garbage collected). ``ttft_ns`` is the time from the start of the request
to the first chunk that carries content (an OpenAI chunk with only a ``role``, a usage-only chunk,
``data: [DONE]`` or an SSE comment do not count). No span is opened per chunk.

LLM detection (best effort; a failure is counted in ``health()["internal_errors"]``, never raised)
-------------------------------------------------------------------------------------------------
* OpenAI-shaped ``usage`` (objects or dicts) on the return value or on stream chunks
  (``stream_options={"include_usage": True}``); unknown usage is never recorded as 0.
* Anthropic messages (``usage.input_tokens``/``output_tokens``) and streams: the input count
  from ``message_start``, the cumulative output count from ``message_delta``; only
  ``content_block_delta`` events are content (for ``ttft_ns`` and ``chunks``).
* vLLM-style ``RequestOutput`` (``prompt_token_ids`` and ``outputs[i].token_ids``), alone, as
  the list ``LLM.generate`` returns (summed), or streamed cumulatively.
* ``transformers`` ``GenerationMixin.generate``: hooked the first time a request starts after
  ``transformers.generation.utils`` was imported by the user; outside a request the hook only
  reads one context variable. Each call inside a request gets a ``generate`` child span.

At the end of a request these ``summary`` marks go on its span when known: ``prompt_tokens``,
``completion_tokens``, ``tokens``, ``tokens_per_s``, and for streams ``ttft_ns`` and ``chunks``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import random
import sys
import weakref
from collections.abc import Callable, Mapping
from time import thread_time_ns, time_ns
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from cirron import _native as native
from cirron._record.span import Recorder, Scope

if TYPE_CHECKING:
    from cirron._cirron import Cirron

F = TypeVar("F", bound=Callable[..., Any])


class InferenceDecorator(Protocol):
    """The type of ``ci.inference``: ``@ci.inference`` or ``@ci.inference(name=..., config=...)``;
    the decorated function keeps its exact signature."""

    @overload
    def __call__(self, fn: F, /, *, name: str | None = None, config: Mapping[str, Any] | None = None) -> F: ...
    @overload
    def __call__(self, fn: None = None, /, *, name: str | None = None,
                 config: Mapping[str, Any] | None = None) -> Callable[[F], F]: ...

__all__ = ["current_request_id", "inference_decorator"]

#: The request whose context we are in (None outside ``@ci.inference``).
_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("cirron_request", default=None)

_NO_ARG = object()


def current_request_id() -> str | None:
    """The ``request_id`` (UUID4 string) of the ``@ci.inference`` call we are in, else None."""
    req = _CURRENT.get()
    return req.rid if req is not None else None


# --------------------------------------------------------------------------- one request


_getrandbits = random.getrandbits
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def _uuid4_py() -> str:
    """A random (version 4, RFC 4122 variant) UUID string, about ten times cheaper than
    ``str(uuid.uuid4())``. ``random`` reseeds itself in forked children, so workers never repeat."""
    h = "%032x" % ((_getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_cscope = native.load("cirron._record._cscope")
if _cscope is not None:
    # The compiled module's own generator: seeded from the OS here and in every forked child.
    _cscope.seed_request_ids(os.urandom(32))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _cscope.seed_request_ids(os.urandom(32)))
_uuid4 = _cscope.request_id if _cscope is not None else _uuid4_py


def _bind(rec: Recorder, span: Any, req: _Request) -> None:
    rec.current.set(span)
    _CURRENT.set(req)


def _emit(rec: Recorder, span: Any, marks: list[tuple[str, Any]]) -> None:
    # Runs in a fresh empty Context: the marks land on the request span whatever context
    # (or thread) ends the request, and nothing outside is touched.
    rec.current.set(span)
    for name, value in marks:
        rec.mark(name, value, kind="summary")


class _PyRequestBase:
    """The per-call state of ``@ci.inference`` in pure Python; ``_cscope.RequestBase`` is its
    compiled twin. It opens the request span, binds it in a copy of the caller's context, drives
    the endpoint's coroutine step by step inside that context and closes the span in the common
    case; :class:`_Request` adds the rest."""

    __slots__ = (
        "rec", "span", "rid", "ctx", "t0", "cpu", "c0", "depth", "ended", "streaming",
        "chunks", "first_ns", "last_ns", "stream_usage", "prompt", "completion", "in_generate", "coro",
    )

    def __init__(self, rec: Recorder, endpoint: str | None = None) -> None:
        self.rec = rec
        self.rid = _uuid4()
        attrs = {"request_id": self.rid} if endpoint is None else {"request_id": self.rid, "endpoint": endpoint}
        # Opened without becoming current in the caller's context; it is bound in self.ctx.
        span = rec.start_span("request", attrs, parent=rec.current.get() or rec.root)
        self.span = span
        self.t0 = span.start_ns
        self.cpu = 0
        # The span's own CPU reading, taken a moment ago on this thread: the first step (which
        # always runs right after, on the same thread) starts from it instead of reading again.
        self.c0: int | None = getattr(span, "_cpu0", None)
        self.depth = 0  # >0 while one of our steps runs inside self.ctx
        self.ended = False
        self.streaming = False
        self.chunks = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.stream_usage: tuple[int | None, int | None] | None = None
        self.prompt: int | None = None
        self.completion: int | None = None
        self.in_generate = False
        ctx = contextvars.copy_context()
        ctx.run(_bind, rec, span, self)
        self.ctx = ctx
        self.coro: Any = None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` inside the request's context, its thread CPU time counted."""
        ctx = self.ctx
        if self.depth or ctx is None:  # already inside (a stream read by the request's own code) or ended
            return fn(*args, **kwargs)
        c0 = self.c0
        if c0 is None:
            c0 = thread_time_ns()
        else:
            self.c0 = None
        self.depth = 1
        try:
            return ctx.run(fn, *args, **kwargs)
        finally:
            self.depth = 0
            self.cpu += thread_time_ns() - c0

    # ``await req`` drives ``req.coro`` with every step inside the request's context. The
    # request object is its own iterator (no proxy object, no generator per request); a
    # StopIteration out of ``send`` ends the await with the coroutine's return value.

    def __await__(self) -> _PyRequestBase:
        return self

    def __next__(self) -> Any:
        return self.run(self.coro.send, None)  # type: ignore[attr-defined]  # defined by _Request

    def finish(self, exc: BaseException | None = None, stream_end: str | None = None) -> None:
        """Close the span once (later calls do nothing), with its summary marks."""
        self._finish_slow(exc, stream_end)  # type: ignore[attr-defined]  # defined by _Request


_RequestBase: Any = _cscope.RequestBase if _cscope is not None else _PyRequestBase
if _cscope is not None:
    _cscope.configure_requests(_CURRENT)


class _Request(_RequestBase):  # type: ignore[misc,valid-type]
    __slots__ = ()

    # -- running user code in the request's context ---------------------------------------

    def send(self, value: Any) -> Any:
        return self.run(self.coro.send, value)

    def throw(self, *exc: Any) -> Any:
        return self.run(self.coro.throw, *exc)

    def close(self) -> None:
        coro = self.coro
        if coro is not None:
            self.run(coro.close)

    # -- results --------------------------------------------------------------------------

    def on_chunk(self, item: Any) -> None:
        try:
            now = time_ns()
            content, usage = _classify_chunk(item)
            if usage is not None:
                # Cumulative in every API that sends it: the last value of each count wins
                # (Anthropic sends the input count first, the output count in later events).
                old = self.stream_usage
                if old is not None:
                    usage = (old[0] if usage[0] is None else usage[0], old[1] if usage[1] is None else usage[1])
                self.stream_usage = usage
            if content:
                self.chunks += 1
                if self.first_ns is None:
                    self.first_ns = now
                self.last_ns = now
        except Exception as exc:  # noqa: BLE001 - detection never reaches the caller
            self.rec.note_internal_error(exc)

    def add_usage(self, prompt: int | None, completion: int | None) -> None:
        if prompt is not None:
            self.prompt = (self.prompt or 0) + prompt
        if completion is not None:
            self.completion = (self.completion or 0) + completion

    def _finish_slow(self, exc: BaseException | None = None, stream_end: str | None = None) -> None:
        """:meth:`finish` in full: also a stream's end, its summary marks and token usage."""
        if self.ended:
            return
        self.ended = True
        try:
            end = time_ns()
            span = self.span
            if stream_end is not None:
                span.set_attr("stream_end", stream_end)
            if self.streaming or self.prompt is not None or self.completion is not None:
                marks = self._summary(end)
                if marks:
                    contextvars.Context().run(_emit, self.rec, span, marks)
            # CPU time is that of the request's own steps, which may have run on several threads.
            # A closed stream (GeneratorExit) is no error; the span records it as stream_end.
            span.finish(None if isinstance(exc, GeneratorExit) else exc, cpu_ns=self.cpu, end_ns=end)
            # The context refers back to this object (through _CURRENT): break the cycle so a
            # finished request is freed by reference counting, not left to the cyclic GC.
            self.ctx = None
            self.coro = None
        except Exception as exc2:  # noqa: BLE001
            self.rec.note_internal_error(exc2)

    def _summary(self, end: int) -> list[tuple[str, Any]]:
        prompt, completion = self.prompt, self.completion
        if self.stream_usage is not None:
            sp, sc = self.stream_usage
            if sp is not None:
                prompt = (prompt or 0) + sp
            if sc is not None:
                completion = (completion or 0) + sc
        marks: list[tuple[str, Any]] = []
        if prompt is not None:
            marks.append(("prompt_tokens", prompt))
        if completion is not None:
            marks.append(("completion_tokens", completion))
        if self.streaming:
            if self.first_ns is not None:
                marks.append(("ttft_ns", self.first_ns - self.t0))
            marks.append(("chunks", self.chunks))
            tokens: int | None = completion if completion is not None else self.chunks
            last = self.last_ns if self.last_ns is not None else end
        else:
            tokens = completion
            last = end
        if tokens is not None:
            marks.append(("tokens", tokens))
            if tokens > 0 and last > self.t0:
                marks.append(("tokens_per_s", tokens * 1e9 / (last - self.t0)))
        return marks


def _end_reason(exc: BaseException) -> str:
    if isinstance(exc, GeneratorExit):
        return "closed"
    name = type(exc).__name__
    if "Cancel" in name:  # asyncio.CancelledError, trio.Cancelled, anyio's backend class
        return "cancelled"
    if name == "ClientDisconnect" or isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return "disconnected"
    if isinstance(exc, Exception):
        return "error"
    return "interrupted"


# --------------------------------------------------------------------------- coroutines


class _InContext:
    """Await ``coro`` with every step (send/throw/close) run inside the request's context."""

    __slots__ = ("coro", "req")

    def __init__(self, coro: Any, req: _Request) -> None:
        self.coro = coro
        self.req = req

    def __await__(self) -> Any:
        coro, run = self.coro, self.req.run
        if not hasattr(coro, "send"):  # a generic awaitable: drive its iterator
            coro = coro.__await__()
        send, throw = coro.send, coro.throw
        op, arg = send, None
        while True:
            try:
                y = run(op, arg)
            except StopIteration as stop:
                return stop.value
            try:
                arg = yield y
                op = send
            except GeneratorExit:
                close = getattr(coro, "close", None)
                if close is not None:
                    run(close)
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded into the awaited coroutine
                op, arg = throw, exc


async def _await_in(req: _Request, awaitable: Any) -> Any:
    try:
        result = await _InContext(awaitable, req)
    except BaseException as exc:
        req.finish(exc)
        raise
    return _finish_result(req, result)


# --------------------------------------------------------------------------- streams


def _gen_steps(req: _Request, it: Any) -> Any:
    """Yield ``it``'s items, each step run in the request's context; end the request with it."""
    req.streaming = True
    run = req.run
    is_gen = inspect.isgenerator(it)
    nxt = it.__next__
    op, arg = nxt, _NO_ARG
    while True:
        try:
            item = run(op) if arg is _NO_ARG else run(op, arg)
        except StopIteration as stop:
            req.finish(stream_end="exhausted")
            return stop.value
        except BaseException as exc:
            req.finish(None if isinstance(exc, GeneratorExit) else exc, _end_reason(exc))
            raise
        req.on_chunk(item)
        try:
            sent = yield item
        except GeneratorExit:
            close = getattr(it, "close", None)
            try:
                if close is not None:
                    run(close)
            except BaseException as exc:
                req.finish(exc, "error")
                raise
            req.finish(stream_end="closed")
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: forward it
            if is_gen:
                op, arg = it.throw, exc
                continue
            req.finish(exc, _end_reason(exc))
            raise
        if sent is None:
            op, arg = nxt, _NO_ARG
        elif is_gen:
            op, arg = it.send, sent
        else:
            op, arg = nxt, _NO_ARG


async def _agen_steps(req: _Request, ait: Any, on_close: str = "closed") -> Any:
    """Async twin of :func:`_gen_steps` for async iterators."""
    req.streaming = True
    is_agen = inspect.isasyncgen(ait)
    anext = ait.__anext__
    op, arg = anext, _NO_ARG
    while True:
        try:
            aw = req.run(op) if arg is _NO_ARG else req.run(op, arg)
            item = await _InContext(aw, req)
        except StopAsyncIteration:
            req.finish(stream_end="exhausted")
            return
        except BaseException as exc:
            req.finish(None if isinstance(exc, GeneratorExit) else exc, _end_reason(exc))
            raise
        req.on_chunk(item)
        try:
            sent = yield item
        except GeneratorExit:
            aclose = getattr(ait, "aclose", None)
            try:
                if aclose is not None:
                    await _InContext(req.run(aclose), req)
            except BaseException as exc:
                req.finish(exc, _end_reason(exc) if not isinstance(exc, Exception) else "error")
                raise
            req.finish(stream_end=on_close)
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: forward it
            if is_agen:
                op, arg = ait.athrow, exc
                continue
            req.finish(exc, _end_reason(exc))
            raise
        if sent is None or not is_agen:
            op, arg = anext, _NO_ARG
        else:
            op, arg = ait.asend, sent


def _abandoned(req: _Request) -> None:
    if not req.ended:
        req.finish(stream_end="abandoned")


def _track(req: _Request, wrapper: Any) -> Any:
    # A returned stream that is never consumed would keep the span open forever.
    try:
        weakref.finalize(wrapper, _abandoned, req)
    except TypeError:  # pragma: no cover - every generator type supports weak references
        pass
    return wrapper


def _wrap_streaming_response(req: _Request, response: Any) -> bool:
    """A Starlette ``StreamingResponse``: keep the request open until its body is sent."""
    body = response.body_iterator
    if not hasattr(body, "__aiter__"):
        return False
    wrapped = _track(req, _agen_steps(req, body.__aiter__()))
    response.body_iterator = wrapped
    stream_response = getattr(response, "stream_response", None)
    if stream_response is not None and callable(stream_response):
        # Starlette does not close the body iterator when the client goes away; do it here so
        # the span closes now, with the reason, instead of whenever the iterator is collected.
        @functools.wraps(stream_response)
        async def _stream_response(send: Any) -> None:
            try:
                await stream_response(send)
            except BaseException as exc:
                if not req.ended:
                    req.finish(None, _end_reason(exc) if not isinstance(exc, OSError) else "disconnected")
                raise
            finally:
                try:  # lets the body's own cleanup run now; a no-op once it has finished
                    await wrapped.aclose()
                except Exception as exc:  # noqa: BLE001
                    req.rec.note_internal_error(exc)

        response.stream_response = _stream_response
    return True


def _finish_result(req: _Request, result: Any) -> Any:
    """The request's result: a stream keeps the span open, anything else closes it now."""
    t = type(result)
    if t in _PLAIN_RESULTS:  # the common JSON-ish results: nothing to wrap
        if (t is dict and "usage" in result) or (t is list and result and type(result[0]) not in _PLAIN_RESULTS):
            try:
                usage = _usage_pair(result["usage"]) if t is dict else _batch_token_counts(result)
                if usage is not None:
                    req.add_usage(*usage)
            except Exception as exc:  # noqa: BLE001
                req.rec.note_internal_error(exc)
        req.finish()
        return result
    try:
        if inspect.isgenerator(result):
            return _track(req, _gen_steps(req, result))
        if inspect.isasyncgen(result):
            return _track(req, _agen_steps(req, result))
        if hasattr(result, "body_iterator"):
            if _wrap_streaming_response(req, result):
                return result
        elif _is_werkzeug_stream(result):
            result.response = _track(req, _gen_steps(req, iter(result.response)))
            return result
        elif _wrap_openai_stream(req, result):
            return result
        usage = _usage_of(result)
        if usage is not None:
            req.add_usage(*usage)
    except Exception as exc:  # noqa: BLE001 - detection never reaches the caller
        req.rec.note_internal_error(exc)
    req.finish()
    return result


_PLAIN_RESULTS = frozenset({dict, list, tuple, str, bytes, int, float, bool, type(None)})


def _is_werkzeug_stream(result: Any) -> bool:
    mod = type(result).__module__
    if not mod.startswith(("werkzeug", "flask")):
        return False
    body = getattr(result, "response", None)
    return bool(getattr(result, "is_streamed", False)) and body is not None and \
        not isinstance(body, (list, tuple, bytes, str))


def _wrap_openai_stream(req: _Request, result: Any) -> bool:
    # openai's Stream / AsyncStream iterate their ``_iterator``; swapping it keeps the object.
    mod = type(result).__module__
    if not mod.startswith("openai"):
        return False
    inner = getattr(result, "_iterator", None)
    if inspect.isgenerator(inner):
        result._iterator = _track(req, _gen_steps(req, inner))
        return True
    if inspect.isasyncgen(inner):
        result._iterator = _track(req, _agen_steps(req, inner))
        return True
    return False


# --------------------------------------------------------------------------- LLM shapes


def _int_or_none(v: Any) -> int | None:
    return v if type(v) is int and v >= 0 else None


def _usage_pair(u: Any) -> tuple[int | None, int | None] | None:
    if u is None:
        return None
    if isinstance(u, Mapping):
        get = u.get
    else:
        d = getattr(u, "__dict__", None)
        if not d:
            return None
        get = d.get
    p = _int_or_none(get("prompt_tokens"))
    if p is None:
        p = _int_or_none(get("input_tokens"))
    c = _int_or_none(get("completion_tokens"))
    if c is None:
        c = _int_or_none(get("output_tokens"))
    if p is None and c is None:
        return None
    return p, c


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    d = getattr(obj, "__dict__", None)  # pydantic models keep fields here; no property side effects
    return d.get(name) if d else None


def _usage_of(result: Any) -> tuple[int | None, int | None] | None:
    if result is None or isinstance(result, (str, bytes, int, float, bool, list, tuple)):
        return None
    usage = _usage_pair(_field(result, "usage"))
    return usage if usage is not None else _token_id_counts(result)


def _token_id_counts(out: Any) -> tuple[int | None, int | None] | None:
    """A vLLM-style ``RequestOutput``: ``prompt_token_ids`` and ``outputs[i].token_ids``."""
    prompt_ids = _field(out, "prompt_token_ids")
    outputs = _field(out, "outputs")
    if prompt_ids is None or not isinstance(outputs, (list, tuple)):
        return None
    completion = 0
    for o in outputs:
        ids = _field(o, "token_ids")
        if ids is None:
            return None
        completion += len(ids)
    return len(prompt_ids), completion


def _batch_token_counts(results: list[Any]) -> tuple[int | None, int | None] | None:
    """``LLM.generate(prompts)``: a list of ``RequestOutput``, one per prompt, summed."""
    prompt = completion = 0
    for out in results:
        counts = _token_id_counts(out)
        if counts is None:
            return None
        prompt += counts[0] or 0
        completion += counts[1] or 0
    return prompt, completion


#: Anthropic stream events: which carry content, and where their usage sits.
_ANTHROPIC_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "content_block_start",
                               "content_block_delta", "content_block_stop", "ping", "error"})


def _classify_anthropic(item: Any, kind: str) -> tuple[bool, tuple[int | None, int | None] | None]:
    """``message_start`` carries the input count (``message.usage``), ``message_delta`` the
    cumulative output count; only ``content_block_delta`` events are content."""
    if kind == "content_block_delta":
        delta = _field(item, "delta")
        return bool(_field(delta, "text") or _field(delta, "partial_json") or _field(delta, "thinking")), None
    if kind == "message_start":
        return False, _usage_pair(_field(_field(item, "message"), "usage"))
    if kind == "message_delta":
        return False, _usage_pair(_field(item, "usage"))
    return False, None


def _choice_has_content(choice: Any) -> bool:
    delta = _field(choice, "delta")
    if delta is None:
        text = _field(choice, "text")  # completions API
        if text:
            return True
        msg = _field(choice, "message")
        return bool(msg is not None and (_field(msg, "content") or _field(msg, "tool_calls")))
    return bool(_field(delta, "content") or _field(delta, "tool_calls") or _field(delta, "function_call")
                or _field(delta, "refusal") or _field(delta, "reasoning_content"))


def _classify_chunk(item: Any) -> tuple[bool, tuple[int | None, int | None] | None]:
    """``(carries content, usage or None)`` for one streamed item."""
    t = type(item)
    if t is str or t is bytes or t is bytearray or t is memoryview:
        if not item:
            return False, None
        head = item[:6]
        if t is str:
            if head.startswith(("data:", "event:", ":", "id:", "retry:")):
                return _classify_sse(item.encode())
            return True, None
        head = bytes(head)
        if head.startswith((b"data:", b"event:", b":", b"id:", b"retry:")):
            return _classify_sse(bytes(item))
        return True, None
    if item is None:
        return False, None
    choices = _field(item, "choices")
    if choices is None:
        kind = _field(item, "type")
        if type(kind) is str and kind in _ANTHROPIC_EVENTS:
            return _classify_anthropic(item, kind)
        counts = _token_id_counts(item)  # vLLM streams cumulative RequestOutputs
        return True, counts  # otherwise an item of unknown shape: it is the content
    usage = _usage_pair(_field(item, "usage"))
    content = any(_choice_has_content(ch) for ch in choices) if isinstance(choices, (list, tuple)) else False
    return content, usage


def _classify_sse(raw: bytes) -> tuple[bool, tuple[int | None, int | None] | None]:
    content = False
    usage = None
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            continue
        if payload[:1] != b"{":
            content = True
            continue
        try:
            import orjson

            obj = orjson.loads(payload)
        except Exception:  # noqa: BLE001 - not JSON: plain text data is content
            content = True
            continue
        c, u = _classify_chunk(obj) if isinstance(obj, dict) else (True, None)
        content = content or c
        if u is not None:
            usage = u
    return content, usage


# --------------------------------------------------------------------------- transformers


_GENERATE_HOOKED = False
_GENERATION_MODULE = "transformers.generation.utils"


def _maybe_hook_generate() -> None:
    global _GENERATE_HOOKED
    mod = sys.modules.get(_GENERATION_MODULE)
    if mod is None:
        return
    _GENERATE_HOOKED = True
    try:
        mixin = mod.GenerationMixin
        original = mixin.generate
        if getattr(original, "__cirron_hook__", False):
            return

        @functools.wraps(original)
        def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
            req = _CURRENT.get()
            if req is None or req.in_generate or req.ended:
                return original(self, *args, **kwargs)
            return _traced_generate(req, original, self, args, kwargs)

        generate.__cirron_hook__ = True  # type: ignore[attr-defined]
        mixin.generate = generate
    except Exception as exc:  # noqa: BLE001 - no hook: generate calls are just not counted
        _note_global(exc)


def _note_global(exc: BaseException) -> None:
    try:
        import cirron

        cirron.default()._rec.note_internal_error(exc)
    except Exception:  # noqa: BLE001
        pass


def _traced_generate(req: _Request, original: Callable[..., Any], model: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    req.in_generate = True
    scope = Scope(req.rec, "generate", None)
    scope.__enter__()
    try:
        out = original(model, *args, **kwargs)
    except BaseException as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)
        req.in_generate = False
        raise
    try:
        counts = _generate_counts(model, args, kwargs, out)
        if counts is not None:
            prompt, completion = counts
            scope.set(input_tokens=prompt, output_tokens=completion)
            req.add_usage(prompt, completion)
    except Exception as exc:  # noqa: BLE001
        req.rec.note_internal_error(exc)
    scope.__exit__(None, None, None)
    req.in_generate = False
    return out


def _generate_counts(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int] | None:
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs")
    if ids is None and args and hasattr(args[0], "shape"):
        ids = args[0]
    seqs = getattr(out, "sequences", out)
    shape = getattr(seqs, "shape", None)
    if shape is None or len(shape) != 2:
        return None
    n_seq, out_len = int(shape[0]), int(shape[1])
    in_shape = getattr(ids, "shape", None)
    in_len = int(in_shape[-1]) if in_shape is not None and len(in_shape) >= 1 else 0
    mask = kwargs.get("attention_mask")
    if mask is not None and hasattr(mask, "sum"):
        prompt = int(mask.sum())
    elif in_shape is not None:
        prompt = int(ids.numel()) if hasattr(ids, "numel") else in_len
    else:
        prompt = 0
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        new = out_len - 1  # the decoder start token is not generated
    else:
        new = out_len - in_len
    completion = max(new, 0) * n_seq
    gen_cfg = getattr(model, "generation_config", None)
    pad = getattr(gen_cfg, "pad_token_id", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    if completion and isinstance(pad, int) and pad not in eos_ids and new > 0:
        completion -= int((seqs[:, -new:] == pad).sum())  # padding after early-finished rows
    return prompt, completion


# --------------------------------------------------------------------------- the decorator


def _instrument(c: Cirron, fn: Callable[..., Any], config: Mapping[str, Any] | None,
                endpoint: str | None = None) -> Callable[..., Any]:
    rec = c._rec
    endpoint = endpoint or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    routes = _RouteFinder(getattr(fn, "__module__", None))

    modules = sys.modules

    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Request | None:
        if rec.disabled:  # ci.profile(enabled=False) / CIRRON_ENABLED=0: the call just runs
            return None
        try:
            if not _GENERATE_HOOKED and _GENERATION_MODULE in modules:
                _maybe_hook_generate()
            route = routes.find(wrapper, args, kwargs)  # before the span opens: a lookup is not the request's time
            req = _Request(rec, endpoint)
            if route is not None:
                req.span.set_attr("route", route)
            return req
        except Exception as exc:  # noqa: BLE001 - no span, the call still runs
            rec.note_internal_error(exc)
            return None

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            req = start(args, kwargs)
            if req is None:
                async for item in fn(*args, **kwargs):
                    yield item
                return
            try:
                ait = fn(*args, **kwargs)  # runs none of its code
            except BaseException as exc:
                req.finish(exc)
                raise
            steps = _agen_steps(req, ait)
            try:
                sent: Any = None
                pending: BaseException | None = None
                while True:
                    try:
                        if pending is not None:
                            exc, pending = pending, None
                            item = await steps.athrow(exc)
                        elif sent is None:
                            item = await steps.__anext__()
                        else:
                            item = await steps.asend(sent)
                    except StopAsyncIteration:
                        return
                    try:
                        sent = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # noqa: BLE001 - forward what the consumer throws
                        pending, sent = exc, None
            finally:
                await steps.aclose()

        wrapper: Callable[..., Any] = agen_wrapper

    elif inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            req = start(args, kwargs)
            if req is None:
                return (yield from fn(*args, **kwargs))
            try:
                it = fn(*args, **kwargs)  # runs none of its code
            except BaseException as exc:
                req.finish(exc)
                raise
            return (yield from _gen_steps(req, it))

        wrapper = gen_wrapper

    elif inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            req = start(args, kwargs)
            if req is None:
                return await fn(*args, **kwargs)
            try:
                # Calling an ``async def`` runs none of its code; every step runs in req.ctx.
                req.coro = fn(*args, **kwargs)
                result = await req
            except BaseException as exc:
                req.finish(exc)
                raise
            return _finish_result(req, result)

        wrapper = async_wrapper

    else:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            req = start(args, kwargs)
            if req is None:
                return fn(*args, **kwargs)
            try:
                result = req.run(fn, *args, **kwargs)
            except BaseException as exc:
                req.finish(exc)
                raise
            if inspect.iscoroutine(result):  # a callable object with an async __call__, a partial, ...
                return _await_in(req, result)
            return _finish_result(req, result)

    wrapper.__cirron_inference_config__ = config  # type: ignore[attr-defined]
    return wrapper


class _RouteFinder:
    """The route template of an endpoint, where the web framework says it.

    Flask: the request's ``url_rule`` (asked on every request: one function may serve several
    rules). Starlette/FastAPI: the route the router matched, which it puts in the request's ASGI
    scope (``scope["route"]``); the scope is reached from a ``Request`` argument of the endpoint,
    else from the frames that called it (an ``async`` endpoint runs under the router's frames).
    A sync FastAPI endpoint without a ``Request`` parameter runs in a worker thread that reaches
    neither: its route is looked up in the route table of the application its own module or
    ``__main__`` holds (where ``uvicorn module:app`` finds it), and, for an application built
    elsewhere (a factory, a router included from another module), among the objects that refer
    to the endpoint (a route holds it). Found once and then kept; a function called directly,
    outside any route, is looked up a few times at most.
    """

    __slots__ = ("module", "route", "tries")
    MAX_TRIES = 3
    #: Frames above the endpoint searched for the router's ``request`` / ``scope``.
    MAX_FRAMES = 6

    def __init__(self, module: str | None) -> None:
        self.module = module
        self.route: str | None = None
        self.tries = 0

    def find(self, wrapper: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
        if self.route is not None:
            return self.route
        modules = sys.modules
        flask = modules.get("flask")
        if flask is not None and flask.has_request_context():
            rule = flask.request.url_rule
            return rule.rule if rule is not None else None
        if "starlette" not in modules or self.tries >= self.MAX_TRIES:
            return None
        self.tries += 1
        self.route = _route_in_scope(_asgi_scope(args, kwargs), wrapper) or self._from_frames(wrapper)
        if self.route is None:
            self.route = _route_in_apps(wrapper, self.module) or _route_among_referrers(wrapper)
        return self.route

    def _from_frames(self, wrapper: Any) -> str | None:
        frame = sys._getframe(3)  # _from_frames, find, start: then the endpoint's wrapper
        for _ in range(self.MAX_FRAMES):
            frame = frame.f_back  # type: ignore[assignment]
            if frame is None:
                return None
            names = frame.f_code.co_varnames
            if "request" in names or "scope" in names:
                local = frame.f_locals
                scope = _asgi_scope((local.get("request"),), {}) or local.get("scope")
                route = _route_in_scope(scope, wrapper)
                if route is not None:
                    return route
        return None


def _asgi_scope(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The ASGI scope of a Starlette ``Request`` among the arguments, if one is there."""
    for a in (*args, *kwargs.values()):
        scope = getattr(a, "scope", None) if a is not None and not isinstance(a, (str, bytes, int, float)) else None
        if type(scope) is dict and "type" in scope:
            return scope
    return None


def _route_in_scope(scope: Any, wrapper: Any) -> str | None:
    """The path template of the route the router put in ``scope``, when it is ``wrapper``'s and
    its template matches the request's path (within its Mount): a router that records the
    route without the prefix it was included under gives no template rather than a wrong one."""
    if type(scope) is not dict:
        return None
    route = scope.get("route")
    path, regex = getattr(route, "path", None), getattr(route, "path_regex", None)
    if getattr(route, "endpoint", None) is not wrapper or not isinstance(path, str) or regex is None:
        return None
    request_path, root = scope.get("path"), scope.get("root_path") or ""
    if not isinstance(request_path, str):
        return None
    if root and request_path.startswith(root + "/"):
        request_path = request_path[len(root):]
    return path if regex.match(request_path) else None


def _route_in_apps(wrapper: Any, module: str | None) -> str | None:
    """``wrapper``'s path template in the Starlette/FastAPI application held by its module or
    ``__main__``, when it has exactly one."""
    apps_mod = sys.modules.get("starlette.applications")
    if apps_mod is None:
        return None
    app_type = apps_mod.Starlette
    paths: set[str] = set()
    for mod in {sys.modules.get(module or ""), sys.modules.get("__main__")}:
        namespace = getattr(mod, "__dict__", None)
        if type(namespace) is dict:
            for v in list(namespace.values()):
                if issubclass(type(v), app_type):  # type(): no attribute of an arbitrary global is read
                    _collect_paths(v.router.routes, wrapper, "", paths, 0)
    return paths.pop() if len(paths) == 1 else None


def _route_among_referrers(wrapper: Any) -> str | None:
    """``wrapper``'s path template from the route objects that hold it (a walk of the heap: the
    last resort), when it has exactly one."""
    import gc

    # A route's __dict__ (it has the compiled path_regex; a request's ASGI scope does not).
    paths = {d["path"] for d in gc.get_referrers(wrapper)
             if type(d) is dict and d.get("endpoint") is wrapper and isinstance(d.get("path"), str)
             and "path_regex" in d}
    return paths.pop() if len(paths) == 1 else None


def _collect_paths(routes: Any, wrapper: Any, prefix: str, out: set[str], depth: int) -> None:
    if depth > 8 or not isinstance(routes, (list, tuple)):
        return
    for r in routes:
        path = getattr(r, "path", None)
        if getattr(r, "endpoint", None) is wrapper and isinstance(path, str):
            out.add(prefix + path)
        sub = getattr(r, "routes", None)  # a Mount (its path is a prefix) or a Host
        if sub:
            _collect_paths(sub, wrapper, prefix + (path if isinstance(path, str) else ""), out, depth + 1)


def inference_decorator(c: Cirron) -> InferenceDecorator:
    """The ``inference`` decorator bound to one :class:`~cirron.Cirron` instance."""

    @overload
    def inference(fn: F, *, name: str | None = None, config: Mapping[str, Any] | None = None) -> F: ...
    @overload
    def inference(fn: None = None, *, name: str | None = None,
                  config: Mapping[str, Any] | None = None) -> Callable[[F], F]: ...

    def inference(fn: Any = None, *, name: str | None = None, config: Mapping[str, Any] | None = None) -> Any:
        """``@ci.inference`` / ``@ci.inference(name=..., config=...)``: one ``request`` span per
        call, its ``endpoint`` attr ``name`` or else the function's qualified name."""
        if config is not None and not isinstance(config, Mapping):
            from cirron._errors import CirronConfigError

            raise CirronConfigError(f"ci.inference(config=...) takes a dict, not {type(config).__qualname__}")
        if name is not None and (not isinstance(name, str) or not name):
            from cirron._errors import CirronConfigError

            raise CirronConfigError(f"ci.inference(name=...) takes a non-empty str, not {name!r}")
        if fn is None:
            return lambda f: inference(f, name=name, config=config)
        if not callable(fn):
            raise TypeError(f"ci.inference decorates a function, not {type(fn).__qualname__}")
        return _instrument(c, fn, config, name)

    return inference
