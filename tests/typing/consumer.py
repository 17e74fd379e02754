# pyright: strict
"""A user's code, type-checked with ``mypy --strict`` and ``pyright --strict`` (see tests/typing/README.md).

It touches every public name of ``cirron`` the way the docs use it. It is checked, not run: a
type error here means a user with a strict checker gets one too. ``assert_type`` pins what the
checker must infer, so a decorator that loses its function's signature fails the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from typing_extensions import assert_type

import cirron as ci
from cirron import (
    Cirron,
    CirronConfigError,
    CirronDependencyError,
    CirronError,
    CirronMarkTypeError,
    CirronSecretNotFound,
    CirronSpoolError,
    CirronStateError,
    CirronWrapError,
)
from cirron.spool import Session, Spool, iter_batches, load_sessions, load_spool
from cirron.testing import Capture, CapturedMark, CapturedSpan, ManualClock, capture


def train(data: list[float]) -> float:
    ci.profile("spool", snapshots="stats", sample_rate=1.0, flush_interval=1.0)
    total = 0.0
    for epoch in ci.epochs(range(2)):
        assert_type(epoch, int)
        for x in ci.batches(data):
            assert_type(x, float)
            with ci.scope("forward", layer=3) as span:
                span.set(batch_size=32)
                span.set_attr("ok", True)
                assert_type(span.id_hex, str)
                total += x
            ci.mark("loss", total, kind="point", phase="train")
    ci.mark("run", "done")
    assert_type(ci.flush(timeout=1.0), bool)
    assert_type(ci.shutdown(), bool)
    return total


@ci.scope("preprocess")
def preprocess(text: str, *, lower: bool = False) -> list[str]:
    return text.lower().split() if lower else text.split()


@ci.scope("stream")
def stream(n: int) -> Iterator[int]:
    yield from range(n)


@ci.inference
def predict(prompt: str, temperature: float = 0.0) -> dict[str, str]:
    rid = ci.current_request_id()
    assert_type(rid, str | None)
    return {"text": prompt, "request_id": rid or ""}


@ci.inference(config={"model": "m"})
async def apredict(prompt: str) -> str:
    return prompt


@ci.inference
async def astream(prompt: str) -> AsyncIterator[str]:
    yield prompt


async def serve() -> None:
    async with ci.profiling("spool") as prof:
        assert_type(prof, Cirron)
        async with ci.scope("handler"):
            out = await apredict("hi")
            assert_type(out, str)
            async for chunk in astream("x"):
                assert_type(chunk, str)
    assert_type(await ci.aflush(), bool)
    assert_type(await ci.ashutdown(timeout=2.0), bool)


def signatures_are_kept() -> None:
    assert_type(preprocess("A b", lower=True), list[str])
    assert_type(stream(3), Iterator[int])
    assert_type(predict("p", temperature=0.5), dict[str, str])
    wrapped_fn = ci.wrap(preprocess)
    assert_type(wrapped_fn("a"), list[str])


def instance_api(tmp: str) -> None:
    c = Cirron(spool_dir=tmp, output="spool", flush_interval=0.5, sample_rate=1.0)
    with c.profiling():
        with c.scope("step", index_hint=1):
            c.mark("acc", 0.9)
        c.snapshot({"w": [1.0, 2.0]})
    health: dict[str, Any] = c.health()
    assert isinstance(health["internal_errors"], int)
    assert ci.default() is not c
    assert_type(c.running, bool)
    current = c.current_span()
    print(c.config, current.name if current is not None else None)
    ci.health()


def config_and_data() -> None:
    value: Any = ci.env("THRESHOLD", "0.5")
    try:
        key: str = ci.secret("API_KEY")
    except CirronSecretNotFound:
        key = ""
    data: Any = ci.load("train")
    found: dict[str, str | None] = ci.deps()
    model = ci.watch({"w": [0.0]}, name="weights")
    assert_type(model, dict[str, list[float]])
    print(found)
    ci.wrap({"w": [0.0]})
    ci.snapshot({"w": [0.0]}, blobs=False)
    ci.trace()
    ci.trace(format="dict", name="forward", last=1)
    print(value, key, data, ci.__version__)


def errors() -> None:
    for err in (CirronConfigError, CirronDependencyError, CirronMarkTypeError, CirronSpoolError,
                CirronStateError, CirronWrapError):
        assert issubclass(err, CirronError)


def read_back(path: str) -> None:
    spool: Spool = load_spool(path)
    sessions: list[Session] = load_sessions(path)
    for s in spool.sessions + sessions:
        print(s.id, len(s.spans))
    for batch in iter_batches(path):
        print(batch)


def testing_helpers() -> None:
    clock = ManualClock(start_ns=1_000)
    with capture(clock=clock, first_id=1) as rec:
        with ci.scope("step"):
            clock.advance(5_000, cpu_ns=1_000)
    assert_type(rec, Capture)
    spans: list[CapturedSpan] = rec.spans
    assert spans[0].duration_ns == 5_000 and rec.span("step").label == "step"
    marks: dict[str, list[Any]] = rec.marks_of("step")
    first: list[CapturedMark] = spans[0].marks
    print(first)
    print(marks, rec.tree(), rec.profiler.health())


def test_with_fixture(cirron_capture: Capture) -> None:
    """How a user's pytest test receives ``cirron.testing.cirron_capture``."""
    with ci.scope("step"):
        ci.mark("loss", 0.5)
    assert cirron_capture.span("step").marks[0].value == 0.5


asyncio.run(serve())
