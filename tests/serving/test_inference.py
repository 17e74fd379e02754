"""``@ci.inference`` in process: shapes, streams, ends of streams, isolation, LLM detection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import inspect
import threading
import time
import uuid

import pytest

import cirron

pytestmark = pytest.mark.anyio
from cirron._record import instrument
from cirron._record.instrument import current_request_id


def _uuid4(s: str) -> bool:
    return uuid.UUID(s).version == 4 and str(uuid.UUID(s)) == s


# --------------------------------------------------------------------------- shape


def test_shape_is_preserved_for_every_kind(prof) -> None:
    inf = prof.c.inference

    def f(a: int, b: str = "x", *, c: float = 1.0) -> dict:
        """Doc f."""
        return {}

    async def af(a: int, b: str = "x") -> dict:
        """Doc af."""
        return {}

    def g(n: int):
        """Doc g."""
        yield n

    async def ag(n: int):
        """Doc ag."""
        yield n

    for fn, check in ((f, inspect.isfunction), (af, inspect.iscoroutinefunction),
                      (g, inspect.isgeneratorfunction), (ag, inspect.isasyncgenfunction)):
        for wrapped in (inf(fn), inf()(fn), inf(config={"threshold": 0.5})(fn)):
            assert wrapped.__name__ == fn.__name__
            assert wrapped.__doc__ == fn.__doc__
            assert inspect.signature(wrapped) == inspect.signature(fn)
            assert wrapped.__wrapped__ is fn
            assert check(wrapped)


def test_bad_config_is_a_clear_error(prof) -> None:
    with pytest.raises(cirron.CirronConfigError, match="takes a dict"):
        prof.c.inference(config=["x"])
    with pytest.raises(TypeError, match="decorates a function"):
        prof.c.inference(42)


def test_module_level_decorator_works_without_setup() -> None:
    @cirron.inference
    def f(x):
        return current_request_id()

    assert _uuid4(f(1))


# --------------------------------------------------------------------------- plain calls


def test_sync_call_one_span_with_its_marks(prof) -> None:
    c = prof.c
    sentinel = object()
    seen = []

    @c.inference
    def predict(x):
        seen.append(current_request_id())
        with c.scope("model"):
            c.mark("score", x)
        return sentinel

    before = c._rec.current.get()
    assert predict(0.25) is sentinel
    assert predict(0.5) is sentinel
    assert c._rec.current.get() is before  # the caller's context is untouched
    assert current_request_id() is None
    spans = prof.spans()
    reqs = [s for s in spans if s["name"] == "request"]
    assert [r["attrs"]["request_id"] for r in reqs] == seen
    assert all(_uuid4(r) for r in seen) and seen[0] != seen[1]
    models = [s for s in spans if s["name"] == "model"]
    assert [m["parent_id"] for m in models] == [r["id"] for r in reqs]
    assert all(r["end_ns"] is not None and "stream_end" not in r["attrs"] for r in reqs)


def test_marks_attach_to_the_request_span(prof) -> None:
    c = prof.c

    @c.inference
    def predict(x):
        c.mark("x", x)
        c.mark("tokens", 7, kind="summary")

    predict(1)
    predict(2)
    reqs = prof.requests()
    assert [r.points("x") for r in reqs] == [[1], [2]]
    assert [r.summary for r in reqs] == [{"tokens": 7}, {"tokens": 7}]


def test_sync_exception_propagates_unchanged_and_closes_the_span(prof) -> None:
    err = ValueError("bad input")

    @prof.c.inference
    def predict():
        raise err

    with pytest.raises(ValueError) as info:
        predict()
    assert info.value is err
    (r,) = prof.requests()
    assert r.span["end_ns"] is not None
    assert r.attrs["error"] == "ValueError: bad input"


async def test_async_call_and_exception(prof) -> None:
    c = prof.c

    @c.inference
    async def predict(x):
        await asyncio.sleep(0)
        c.mark("x", x)
        rid = current_request_id()
        await asyncio.sleep(0)
        assert current_request_id() == rid
        if x < 0:
            raise KeyError("neg")
        return {"rid": rid}

    out = await predict(3)
    with pytest.raises(KeyError):
        await predict(-1)
    r1, r2 = prof.requests()
    assert r1.id == out["rid"] and r1.points("x") == [3] and "error" not in r1.attrs
    assert r2.attrs["error"] == "KeyError: 'neg'" and r2.span["end_ns"] is not None


async def test_async_return_values_pass_through_unchanged(prof) -> None:
    """Whatever the coroutine returns comes back as is: tuples, None, even an exception object or
    a StopIteration (an awaitable's return value travels inside one)."""
    c = prof.c
    err = ValueError("returned, not raised")
    stop = StopIteration("x")
    values = [(1, 2), (), None, err, stop, [3], {"k": (4,)}]

    @c.inference
    async def echo(v):
        await asyncio.sleep(0)
        return v

    for v in values:
        assert await echo(v) is v
    # Driven by hand, the way an event loop does it: a step that suspends, then the return.
    coro = echo((5, 6))
    assert coro.send(None) is None  # asyncio.sleep(0) yields None to the loop
    with pytest.raises(StopIteration) as info:
        coro.send(None)
    assert info.value.value == (5, 6)
    reqs = prof.requests()
    assert len(reqs) == len(values) + 1
    assert all(r.span["end_ns"] is not None and "error" not in r.attrs for r in reqs)


async def test_async_request_cpu_time_counts_every_step_and_parent_is_the_open_scope(prof) -> None:
    c = prof.c

    def burn() -> None:
        t = time.thread_time_ns()
        while time.thread_time_ns() - t < 3_000_000:
            pass

    @c.inference
    async def work():
        burn()
        await asyncio.sleep(0.02)  # waiting costs no CPU
        burn()
        return "ok"

    with c.scope("batch"):
        assert await work() == "ok"
    spans = prof.spans()
    (req,) = [s for s in spans if s["name"] == "request"]
    (outer,) = [s for s in spans if s["name"] == "batch"]
    assert req["parent_id"] == outer["id"]
    assert 6_000_000 <= req["cpu_ns"] < 20_000_000
    assert req["end_ns"] - req["start_ns"] >= 20_000_000


async def test_async_cancellation_closes_the_span(prof) -> None:
    started = asyncio.Event()

    @prof.c.inference
    async def slow():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (r,) = prof.requests()
    assert r.span["end_ns"] is not None and r.attrs["interrupted"] == "CancelledError"


def test_usage_of_an_openai_shaped_result(prof) -> None:
    @prof.c.inference
    def chat():
        return {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}

    @prof.c.inference
    def plain():
        return {"answer": 1}

    chat()
    plain()
    r1, r2 = prof.requests()
    s = r1.summary
    assert (s["prompt_tokens"], s["completion_tokens"], s["tokens"]) == (11, 4, 4)
    assert s["tokens_per_s"] > 0
    assert r2.summary == {}  # unknown usage is never recorded as 0


def test_usage_of_a_real_openai_response_object(prof) -> None:
    pytest.importorskip("openai")
    from openai.types.chat import ChatCompletion

    resp = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 0, "model": "toy",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    })

    @prof.c.inference
    def chat():
        return resp

    assert chat() is resp
    (r,) = prof.requests()
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"]) == (5, 2)


# --------------------------------------------------------------------------- streams


def _role(content=None, usage=None):
    delta = {"role": "assistant"} if content is None else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}] if usage is None else [],
            **({"usage": usage} if usage else {})}


def test_generator_exhausted_ttft_skips_role_only_chunk(prof) -> None:
    c = prof.c
    gate = threading.Event()

    @c.inference
    def stream(n):
        yield _role()
        gate.wait(5)
        for i in range(n):
            c.mark("i", i)
            yield _role(f"t{i}")
        yield _role(usage={"prompt_tokens": 9, "completion_tokens": 30})

    it = stream(3)
    next(it)  # the role-only chunk
    import time

    t_before = time.time_ns()
    gate.set()
    rest = list(it)
    assert len(rest) == 4
    (r,) = prof.requests()
    s = r.summary
    assert r.attrs["stream_end"] == "exhausted"
    assert r.span["start_ns"] + s["ttft_ns"] >= t_before
    assert s["chunks"] == 3 and s["tokens"] == 30  # usage wins over the chunk count
    assert (s["prompt_tokens"], s["completion_tokens"]) == (9, 30)
    assert r.points("i") == [0, 1, 2]


def test_generator_without_usage_counts_content_chunks(prof) -> None:
    @prof.c.inference
    def stream():
        yield _role()
        yield "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n"
        yield b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        yield ": keep-alive\n\n"
        yield "b"
        yield ""
        yield "data: [DONE]\n\n"

    assert len(list(stream())) == 7
    (r,) = prof.requests()
    s = r.summary
    assert s["tokens"] == 2 and s["chunks"] == 2
    assert "prompt_tokens" not in s and "completion_tokens" not in s


def test_sse_usage_chunk_is_read(prof) -> None:
    @prof.c.inference
    def stream():
        yield 'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        yield 'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
        yield "data: [DONE]\n\n"

    list(stream())
    (r,) = prof.requests()
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"], r.summary["tokens"]) == (3, 1, 1)


def test_generator_closed_early(prof) -> None:
    closed = []

    @prof.c.inference
    def stream():
        try:
            for i in range(100):
                yield str(i)
        finally:
            closed.append(True)

    it = stream()
    assert [next(it), next(it)] == ["0", "1"]
    it.close()
    assert closed == [True]
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "closed" and r.summary["chunks"] == 2


def test_generator_error_propagates(prof) -> None:
    err = RuntimeError("model died")

    @prof.c.inference
    def stream():
        yield "a"
        raise err

    it = stream()
    next(it)
    with pytest.raises(RuntimeError) as info:
        next(it)
    assert info.value is err
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "error" and r.attrs["error"] == "RuntimeError: model died"


def test_generator_send_and_throw_are_forwarded(prof) -> None:
    @prof.c.inference
    def echo():
        got = yield "ready"
        while True:
            try:
                got = yield f"echo {got}"
            except KeyError:
                got = yield "caught"

    it = echo()
    assert next(it) == "ready"
    assert it.send(1) == "echo 1"
    assert it.throw(KeyError("k")) == "caught"
    assert it.send(2) == "echo 2"
    it.close()
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "closed"


def test_sync_function_returning_a_generator_keeps_the_span_open(prof) -> None:
    c = prof.c

    def body():
        c.mark("in_body", current_request_id() is not None)
        yield "x"
        yield "y"

    @c.inference
    def handler():
        return body()

    it = handler()
    assert inspect.isgenerator(it)
    assert c._rec.current.get() is None  # the request is not bound in the caller's context
    assert list(it) == ["x", "y"]
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "exhausted" and r.points("in_body") == [True]
    assert r.summary["chunks"] == 2


def test_returned_stream_never_consumed_is_closed_when_collected(prof) -> None:
    @prof.c.inference
    def handler():
        return (x for x in "abc")

    it = handler()
    del it
    gc.collect()
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "abandoned" and r.span["end_ns"] is not None


async def test_async_generator_exhausted_and_aclosed(prof) -> None:
    c = prof.c

    @c.inference
    async def stream(n):
        for i in range(n):
            await asyncio.sleep(0)
            c.mark("rid_ok", current_request_id() is not None)
            yield f"t{i}"

    assert [x async for x in stream(3)] == ["t0", "t1", "t2"]
    it = stream(10)
    assert await it.__anext__() == "t0"
    await it.aclose()
    r1, r2 = prof.requests()
    assert r1.attrs["stream_end"] == "exhausted" and r1.summary["tokens"] == 3
    assert r1.points("rid_ok") == [True] * 3
    assert r2.attrs["stream_end"] == "closed" and r2.summary["chunks"] == 1


async def test_async_generator_cancelled_mid_stream(prof) -> None:
    first = asyncio.Event()

    @prof.c.inference
    async def stream():
        yield "a"
        first.set()
        await asyncio.Event().wait()
        yield "never"

    async def consume():
        async for _ in stream():
            pass

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "cancelled" and r.span["end_ns"] is not None
    assert "error" not in r.attrs


async def test_async_generator_error_and_athrow(prof) -> None:
    @prof.c.inference
    async def stream():
        try:
            yield "a"
        except KeyError:
            yield "caught"
        raise ValueError("boom")

    it = stream()
    assert await it.__anext__() == "a"
    assert await it.athrow(KeyError("k")) == "caught"
    with pytest.raises(ValueError, match="boom"):
        await it.__anext__()
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "error" and r.attrs["error"] == "ValueError: boom"


async def test_coroutine_returning_an_async_generator(prof) -> None:
    async def body():
        yield "a"
        yield "b"

    @prof.c.inference
    async def handler():
        return body()

    it = await handler()
    assert inspect.isasyncgen(it)
    assert [x async for x in it] == ["a", "b"]
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "exhausted" and r.summary["chunks"] == 2


def test_openai_chunk_objects(prof) -> None:
    pytest.importorskip("openai")
    from openai.types.chat import ChatCompletionChunk

    def chunk(delta, usage=None, choices=True):
        return ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "toy",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}] if choices else [],
            "usage": usage,
        })

    @prof.c.inference
    def stream():
        yield chunk({"role": "assistant", "content": ""})
        yield chunk({"content": "hel"})
        yield chunk({"content": "lo"})
        yield chunk({}, usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}, choices=False)

    assert len(list(stream())) == 4
    (r,) = prof.requests()
    s = r.summary
    assert (s["chunks"], s["tokens"], s["prompt_tokens"], s["completion_tokens"]) == (2, 2, 4, 2)
    assert s["ttft_ns"] > 0 and s["tokens_per_s"] > 0


def test_detection_failure_is_an_internal_error_that_never_reaches_the_caller(prof, monkeypatch) -> None:
    def broken(item):
        raise RuntimeError("detector bug")

    monkeypatch.setattr(instrument, "_classify_chunk", broken)

    @prof.c.inference
    def stream():
        yield "a"
        yield "b"

    assert list(stream()) == ["a", "b"]
    assert prof.c.health()["internal_errors"] >= 2
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "exhausted"


# --------------------------------------------------------------------------- isolation


def test_thread_isolation(prof) -> None:
    c = prof.c
    barrier = threading.Barrier(8)

    @c.inference
    def predict(n):
        rid = current_request_id()
        if n < 8:
            barrier.wait(5)  # the first eight requests are surely in flight together
        with c.scope("model"):
            c.mark("n", n)
            c.mark("rid", rid)
        assert current_request_id() == rid
        return rid

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rids = list(pool.map(predict, range(200)))
    reqs = prof.requests()
    assert len(reqs) == 200 and len({r.id for r in reqs}) == 200
    spans = {s["id"]: s for s in prof.spans()}
    by_rid = {r.id: r for r in reqs}
    for rid in rids:
        r = by_rid[rid]
        assert r.marks == []  # marks went to the nested scope, nothing leaked onto the request
    model_marks = {}
    from cirron.spool import load_sessions

    for s in load_sessions(prof.spool):
        for m in s.marks:
            model_marks.setdefault(m["span_id"], {})[m["name"]] = m["value"]
    for sid, mk in model_marks.items():
        span = spans[sid]
        parent = spans[span["parent_id"]]
        assert parent["name"] == "request" and parent["attrs"]["request_id"] == mk["rid"]
        assert rids[mk["n"]] == mk["rid"]


async def test_asyncio_and_thread_isolation(prof) -> None:
    c = prof.c
    n_tasks = 100
    all_in = asyncio.Event()
    inside = 0

    @c.inference
    def sync_part(n):
        c.mark("sync_n", n)
        return current_request_id()

    @c.inference
    async def predict(n):
        nonlocal inside
        rid = current_request_id()
        c.mark("n", n)
        inside += 1
        if inside == n_tasks:
            all_in.set()
        await all_in.wait()  # every request is open at once
        await asyncio.sleep(0)
        c.mark("n_again", n)
        inner = await asyncio.to_thread(sync_part, n)
        assert current_request_id() == rid
        return rid, inner

    results = await asyncio.gather(*(predict(i) for i in range(n_tasks)))
    reqs = {r.id: r for r in prof.requests()}
    assert len(reqs) == 2 * n_tasks
    spans = {s["id"]: s for s in prof.spans()}
    for n, (rid, inner) in enumerate(results):
        outer = reqs[rid]
        assert outer.points("n") == [n] and outer.points("n_again") == [n]
        sub = reqs[inner]
        assert sub.points("sync_n") == [n]
        assert spans[sub.span["parent_id"]]["attrs"]["request_id"] == rid  # nested under its request


async def test_contextvars_copy_in_tasks_sees_the_request(prof) -> None:
    c = prof.c
    var = contextvars.ContextVar("user_var", default="unset")

    @c.inference
    async def predict():
        var.set("inside")
        child = asyncio.create_task(asyncio.sleep(0, result=current_request_id()))
        return await child, var.get()

    var.set("outside")
    (rid, val) = await predict()
    assert val == "inside" and var.get() == "outside"
    (r,) = prof.requests()
    assert r.id == rid


# --------------------------------------------------------------------------- the openai client


def _sse_handler(request):
    import json

    import httpx

    def chunk(delta, usage=None, choices=True):
        d = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}] if choices else []}
        if usage:
            d["usage"] = usage
        return f"data: {json.dumps(d)}\n\n"

    body = json.loads(request.content)
    parts = [chunk({"role": "assistant", "content": ""}), chunk({"content": "a"}), chunk({"content": "b"})]
    if body.get("stream_options", {}).get("include_usage"):
        parts.append(chunk({}, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, choices=False))
    parts.append("data: [DONE]\n\n")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content="".join(parts).encode())


def test_returned_openai_stream_is_measured_and_kept(prof) -> None:
    openai = pytest.importorskip("openai")
    import httpx

    client = openai.OpenAI(base_url="http://llm.invalid/v1", api_key="x",
                           http_client=httpx.Client(transport=httpx.MockTransport(_sse_handler)))

    @prof.c.inference
    def ask(q, usage):
        extra = {"stream_options": {"include_usage": True}} if usage else {}
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": q}], stream=True,
                                              **extra)

    for usage in (True, False):
        s = ask("hi", usage)
        assert isinstance(s, openai.Stream)  # the object itself is returned
        assert [ch.choices[0].delta.content for ch in s if ch.choices] == ["", "a", "b"]
    r1, r2 = prof.requests()
    assert r1.attrs["stream_end"] == r2.attrs["stream_end"] == "exhausted"
    assert (r1.summary["prompt_tokens"], r1.summary["completion_tokens"], r1.summary["chunks"]) == (3, 2, 2)
    assert "prompt_tokens" not in r2.summary and r2.summary["tokens"] == 2


async def test_returned_openai_async_stream(prof) -> None:
    openai = pytest.importorskip("openai")
    import httpx

    client = openai.AsyncOpenAI(base_url="http://llm.invalid/v1", api_key="x",
                                http_client=httpx.AsyncClient(transport=httpx.MockTransport(_sse_handler)))

    @prof.c.inference
    async def ask(q):
        return await client.chat.completions.create(model="m", messages=[{"role": "user", "content": q}],
                                                    stream=True, stream_options={"include_usage": True})

    s = await ask("hi")
    assert isinstance(s, openai.AsyncStream)
    got = [ch.choices[0].delta.content async for ch in s if ch.choices]
    assert got == ["", "a", "b"]
    await client.close()
    (r,) = prof.requests()
    assert r.attrs["stream_end"] == "exhausted"
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"], r.summary["ttft_ns"] > 0) == (3, 2, True)
