"""A real FastAPI model server for the ``cirron ui`` tests, recorded with ``@ci.inference``.

    python tests/ui/serve_app.py DIR    # serves on 127.0.0.1, a free port; writes DIR/.cirron/spool

It prints ``port N`` once it listens and runs until SIGTERM (uvicorn's graceful shutdown: the
lifespan leaves ``ci.profiling()``, which writes the last batch). Each response carries the
request id cirron gave it (header ``x-request-id``), so the client can match its own timings
with the spans. How long each request takes is the client's choice:

* ``POST /predict {"delay_ms": D, "tokens": K}``: answers after D ms with an OpenAI-style
  ``usage`` of K completion tokens;
* ``GET /stream?tokens=K&first_ms=F&gap_ms=G``: Server-Sent Events, the first token after F ms,
  then one every G ms, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

import cirron as ci


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ci.profiling():
        yield


app = FastAPI(lifespan=lifespan)


class PredictIn(BaseModel):
    delay_ms: float
    tokens: int


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


@app.post("/predict")
@ci.inference
async def predict(body: PredictIn, response: Response) -> dict:
    response.headers["x-request-id"] = ci.current_request_id() or ""
    await asyncio.sleep(body.delay_ms / 1000)
    return {"text": "ok " * body.tokens,
            "usage": {"prompt_tokens": 3, "completion_tokens": body.tokens, "total_tokens": 3 + body.tokens}}


@app.get("/stream")
@ci.inference
async def stream(tokens: int, first_ms: float, gap_ms: float) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        await asyncio.sleep(first_ms / 1000)
        for i in range(tokens):
            if i:
                await asyncio.sleep(gap_ms / 1000)
            yield f"data: {json.dumps({'token': f'tok{i}'})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"x-request-id": ci.current_request_id() or ""})


def main(where: str) -> None:
    os.makedirs(where, exist_ok=True)
    os.chdir(where)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
