"""500 concurrent requests against the FastAPI example under uvicorn, four rounds.

Mixed JSON and streaming requests, some clients leaving mid-stream. Every request must end up as
exactly one closed ``request`` span with only its own marks, the server must log no exception,
cirron must count no internal error, and the server's memory must not grow from round to round
once warmed up (cirron's in-memory trace buffer is bounded; it is set small here so that it is
full before the baseline is taken).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving_helpers import free_port, read_requests, run_server  # noqa: E402

pytestmark = pytest.mark.slow

CONCURRENCY = 500
ROUNDS = 4
DISCONNECT_EVERY = 10  # one streaming client in ten leaves after the first event


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _round(base: str, k: int) -> dict[int, str]:
    """Round ``k`` (from 1): request i is told apart by a text of length (k-1)*CONCURRENCY+i+1."""
    expected: dict[int, str] = {}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def predict(key: int) -> None:
            r = await client.post("/predict", json={"text": "x" * key})
            r.raise_for_status()

        async def stream(key: int, leave: bool) -> None:
            n = 0
            async with client.stream("GET", "/stream", params={"prompt": "p" * key, "max_tokens": 6}) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        json.loads(line[6:])
                        n += 1
                        if leave:
                            return
            assert n == 6

        tasks = []
        for i in range(CONCURRENCY):
            key = (k - 1) * CONCURRENCY + i + 1
            if i % 2 == 0:
                expected[key] = "predict"
                tasks.append(predict(key))
            else:
                leave = (i // 2) % DISCONNECT_EVERY == 0
                expected[key] = "left" if leave else "stream"
                tasks.append(stream(key, leave))
        await asyncio.gather(*tasks)
    return expected


def test_500_concurrent_mixed_requests(tmp_path: Path) -> None:
    spool, port = tmp_path / "spool", free_port()
    expected: dict[int, str] = {}
    rss: list[int] = []
    with run_server(["-m", "uvicorn", "server_examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
                     "--log-level", "warning", "--backlog", "2048"], spool, tmp_path / "server.log", port=port,
                    TOY_TOKEN_DELAY_MS="1", CIRRON_TRACE_BUFFER_MAX_SPANS="500") as srv:
        for k in range(1, ROUNDS + 1):
            expected.update(asyncio.run(_round(srv.base_url, k)))
            rss.append(_rss_kib(srv.proc.pid))
        health = httpx.get(srv.base_url + "/health").json()
    log = srv.output()
    assert srv.proc.returncode == 0, log
    assert "Traceback" not in log and "Exception" not in log, log
    assert health["internal_errors"] == 0 and health["spans_dropped"] == 0

    reqs, _ = read_requests(spool)
    assert len(reqs) == len(expected) == CONCURRENCY * ROUNDS
    assert len({r.id for r in reqs}) == len(reqs)
    seen: set[int] = set()
    for r in reqs:
        assert r.span["end_ns"] is not None
        texts, prompts = r.points("text_chars"), r.points("prompt_chars")
        assert len(texts) + len(prompts) == 1, r.marks  # its own mark, and only one
        key = (texts or prompts)[0]
        assert key not in seen
        seen.add(key)
        kind = expected[key]
        if kind == "predict":
            assert texts and len(r.points("score")) == 1 and "stream_end" not in r.attrs
        elif kind == "stream":
            assert prompts and r.attrs["stream_end"] == "exhausted" and r.summary["tokens"] == 6
        else:
            assert prompts and r.attrs["stream_end"] in {"cancelled", "disconnected", "closed", "exhausted"}
    assert seen == set(expected)

    # Round 1 warms up (allocator arenas, the bounded trace buffer fills); after that the memory
    # stays where it was: the last round ends within 4 MiB of the second.
    assert rss[-1] - rss[1] < 4 * 1024, rss
