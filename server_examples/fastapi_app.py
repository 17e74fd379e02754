"""FastAPI + cirron: a JSON predict endpoint and a streaming (Server-Sent Events) endpoint.

Run it::

    python -m uvicorn server_examples.fastapi_app:app --port 8000

then::

    curl -s -X POST localhost:8000/predict -H 'content-type: application/json' -d '{"text": "great movie"}'
    curl -sN 'localhost:8000/stream?prompt=hello&max_tokens=8'

Traces go to ``./.cirron/spool`` (or ``$CIRRON_SPOOL_DIR``); read them with ``cirron traces view``.
The flush service runs inside the app's own event loop, started and stopped by the lifespan.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

import cirron as ci
from server_examples.toy_model import ToyLM, count_tokens

model = ToyLM()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Starts the session and the flush service in this loop; on shutdown (Ctrl-C, SIGTERM)
    # the session is closed and everything recorded is written to the spool.
    async with ci.profiling():
        yield


app = FastAPI(title="cirron FastAPI example", lifespan=lifespan)


class PredictIn(BaseModel):
    text: str


class PredictOut(BaseModel):
    label: str
    score: float


@app.get("/health")
async def health() -> dict:
    h = ci.health()
    return {"ok": True, "profiling": h["running"], "internal_errors": h["internal_errors"],
            "spans_dropped": h["spans_dropped"]}


@app.post("/predict")
@ci.inference
async def predict(payload: PredictIn) -> PredictOut:
    """One ``request`` span per call, with the nested scopes and marks below."""
    with ci.scope("preprocess"):
        text = " ".join(payload.text.lower().split())
    ci.mark("text_chars", len(payload.text))
    with ci.scope("model"):
        score = model.score(text)
    ci.mark("score", score)
    return PredictOut(label="positive" if score >= 0.5 else "negative", score=score)


@app.get("/stream")
@ci.inference
async def stream(prompt: str = "hello", max_tokens: int = 16) -> StreamingResponse:
    """Tokens as SSE events. The request span stays open until the last event is sent (or the
    client goes away); ``ttft_ns``, ``tokens`` and ``tokens_per_s`` are recorded on it."""
    ci.mark("prompt_chars", len(prompt))
    ci.mark("prompt_tokens_est", count_tokens(prompt))

    async def events() -> AsyncIterator[str]:
        async for i, token in _enumerate(model.agenerate(prompt, max_tokens)):
            yield f"data: {json.dumps({'index': i, 'token': token})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _enumerate(it: AsyncIterator[str]) -> AsyncIterator[tuple[int, str]]:
    i = 0
    async for x in it:
        yield i, x
        i += 1
