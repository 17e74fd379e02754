"""Each server example under a real server process, driven over HTTP by concurrent clients.

After the server is stopped with a signal (so its shutdown path flushes the spool), the spool
must hold exactly one closed ``request`` span per request, each with its own marks.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving_helpers import free_port, read_requests, run_server  # noqa: E402

pytestmark = pytest.mark.anyio

N_PREDICT = 24
N_STREAM = 12


def _uvicorn(target: str, port: int) -> list[str]:
    return ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


async def _drive_basic(base: str) -> dict:
    """Concurrent predicts (text length i identifies request i), full streams, one disconnect."""
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:

        async def predict(i: int) -> dict:
            r = await client.post("/predict", json={"text": "x" * (i + 1)})
            r.raise_for_status()
            return r.json()

        async def stream(i: int) -> list[dict]:
            events = []
            async with client.stream("GET", "/stream", params={"prompt": "p" * (i + 1), "max_tokens": i + 2}) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))
            return events

        async def disconnect() -> None:
            async with client.stream("GET", "/stream", params={"prompt": "d" * 500, "max_tokens": 10_000}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # leave after the first event: the client goes away mid-stream

        predicts, streams, _ = await asyncio.gather(
            asyncio.gather(*(predict(i) for i in range(N_PREDICT))),
            asyncio.gather(*(stream(i) for i in range(N_STREAM))),
            disconnect(),
        )
        health = (await client.get("/health")).json()
    return {"predicts": predicts, "streams": streams, "health": health}


def _check_basic(spool: Path, out: dict, disconnect_ends: set[str]) -> None:
    assert all(len(ev) == i + 2 for i, ev in enumerate(out["streams"]))
    assert out["health"]["internal_errors"] == 0
    reqs, spans = read_requests(spool)
    assert len(reqs) == N_PREDICT + N_STREAM + 1
    assert len({r.id for r in reqs}) == len(reqs)
    assert all(r.span["end_ns"] is not None for r in reqs)
    by_name = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    predicts = sorted((r for r in reqs if r.points("text_chars")), key=lambda r: r.points("text_chars")[0])
    assert [r.points("text_chars") for r in predicts] == [[i + 1] for i in range(N_PREDICT)]
    for r in predicts:
        assert len(r.points("score")) == 1 and "stream_end" not in r.attrs and r.summary == {}
    request_ids = {r.span["id"] for r in predicts}
    models = [s for s in by_name["model"] if s["parent_id"] in request_ids]
    assert len(models) == N_PREDICT  # nested scopes hang from their own request
    streams = sorted((r for r in reqs if r.points("prompt_chars")), key=lambda r: r.points("prompt_chars")[0])
    assert len(streams) == N_STREAM + 1
    for i, r in enumerate(streams[:-1]):
        assert r.points("prompt_chars") == [i + 1]
        assert r.attrs["stream_end"] == "exhausted"
        s = r.summary
        assert s["tokens"] == i + 2 and s["chunks"] == i + 2
        assert s["ttft_ns"] > 0 and s["tokens_per_s"] > 0
        assert r.span["end_ns"] - r.span["start_ns"] >= s["ttft_ns"]
    gone = streams[-1]
    assert gone.points("prompt_chars") == [500]
    assert gone.attrs["stream_end"] in disconnect_ends
    assert 1 <= gone.summary["chunks"] < 10_000


def test_fastapi_app_under_uvicorn(tmp_path: Path) -> None:
    spool, port = tmp_path / "spool", free_port()
    with run_server(_uvicorn("server_examples.fastapi_app:app", port), spool, tmp_path / "server.log",
                    port=port, TOY_TOKEN_DELAY_MS="2") as srv:
        out = asyncio.run(_drive_basic(srv.base_url))
    assert srv.proc.returncode == 0, srv.output()
    assert "Traceback" not in srv.output()
    _check_basic(spool, out, {"cancelled", "disconnected", "closed"})


def test_flask_app_under_werkzeug(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    spool, port = tmp_path / "spool", free_port()
    with run_server(["-m", "server_examples.flask_app", "--port", str(port)], spool, tmp_path / "server.log",
                    port=port, stop_signal=signal.SIGTERM, TOY_TOKEN_DELAY_MS="2") as srv:
        out = asyncio.run(_drive_basic(srv.base_url))
    assert srv.proc.returncode == 0, srv.output()
    assert "Traceback" not in srv.output()
    _check_basic(spool, out, {"closed", "disconnected"})


def test_openai_server_with_the_openai_client(tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    spool, port = tmp_path / "spool", free_port()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]

    async def drive(base: str) -> list:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)

        async def plain(n: int):
            r = await client.chat.completions.create(model="toy", messages=messages, max_tokens=n, user=f"u{n}")
            return n, "plain", r.usage.prompt_tokens, r.usage.completion_tokens, r.choices[0].message.content

        async def streamed(n: int, usage: bool):
            kwargs = {"stream_options": {"include_usage": True}} if usage else {}
            stream = await client.chat.completions.create(model="toy", messages=messages, max_tokens=n,
                                                          stream=True, user=f"u{n}", **kwargs)
            text, last_usage, content_chunks = [], None, 0
            async for ch in stream:
                if ch.usage is not None:
                    last_usage = ch.usage
                for c in ch.choices:
                    if c.delta.content:
                        content_chunks += 1
                        text.append(c.delta.content)
            return (n, "usage" if usage else "stream", last_usage and last_usage.prompt_tokens,
                    last_usage and last_usage.completion_tokens, "".join(text), content_chunks)

        calls = [plain(n) for n in range(2, 8)] + [streamed(n, True) for n in range(8, 14)] + \
                [streamed(n, False) for n in range(14, 20)]
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    with run_server(_uvicorn("server_examples.openai_server:app", port), spool, tmp_path / "server.log",
                    port=port, TOY_TOKEN_DELAY_MS="1") as srv:
        results = asyncio.run(drive(srv.base_url))
    assert srv.proc.returncode == 0, srv.output()

    reqs, _ = read_requests(spool)
    assert len(reqs) == len(results) == 18
    by_user = {r.points("user")[0]: r for r in reqs}
    assert len(by_user) == 18
    prompt_tokens = 6  # "be brief" + "tell me a story" in whitespace tokens
    for res in results:
        n, kind = res[0], res[1]
        r = by_user[f"u{n}"]
        assert r.points("max_tokens") == [n]
        s = r.summary
        if kind == "plain":
            assert (res[2], res[3]) == (prompt_tokens, n)
            assert (s["prompt_tokens"], s["completion_tokens"], s["tokens"]) == (prompt_tokens, n, n)
            assert "stream_end" not in r.attrs and "ttft_ns" not in s
            continue
        assert r.attrs["stream_end"] == "exhausted"
        assert res[5] == n and s["chunks"] == n and s["tokens"] == n
        assert s["ttft_ns"] > 0 and s["tokens_per_s"] > 0
        if kind == "usage":
            assert (res[2], res[3]) == (prompt_tokens, n)
            assert (s["prompt_tokens"], s["completion_tokens"]) == (prompt_tokens, n)
        else:
            assert res[2] is None
            assert "prompt_tokens" not in s and "completion_tokens" not in s  # unknown, not 0
