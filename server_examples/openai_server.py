"""An OpenAI-compatible chat server (toy model) instrumented with cirron.

Run it::

    python -m uvicorn server_examples.openai_server:app --port 8002

and point any OpenAI client at it::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8002/v1", api_key="x")
    stream = client.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        ...

``POST /v1/chat/completions`` answers ``stream: false`` with one ``chat.completion`` object and
``stream: true`` with Server-Sent Events: a role-only opening chunk, one chunk per token, a final
chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage`` is true, then
``data: [DONE]``. Every call is one ``request`` span carrying ``ttft_ns``, ``tokens``,
``tokens_per_s`` and, when the usage is known, ``prompt_tokens`` / ``completion_tokens``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

import cirron as ci
from server_examples.toy_model import ToyLM, count_tokens

model = ToyLM()
MODEL_NAME = "toy-1"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ci.profiling():
        yield


app = FastAPI(title="cirron OpenAI-compatible example", lifespan=lifespan)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, ... are accepted and ignored
    model: str = MODEL_NAME
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    user: str | None = None


@app.get("/health")
async def health() -> dict:
    h = ci.health()
    return {"ok": True, "profiling": h["running"], "internal_errors": h["internal_errors"]}


@app.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "cirron"}]}


def _prompt(req: ChatRequest) -> str:
    return "\n".join(m.content or "" for m in req.messages)


@app.post("/v1/chat/completions")
@ci.inference
async def chat_completions(req: ChatRequest) -> Any:
    prompt = _prompt(req)
    max_tokens = req.max_completion_tokens or req.max_tokens or 16
    ci.mark("max_tokens", max_tokens)
    if req.user:
        ci.mark("user", req.user)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    prompt_tokens = count_tokens(prompt)

    if not req.stream:
        with ci.scope("generate"):
            text = "".join([t async for t in model.agenerate(prompt, max_tokens)])
        completion_tokens = max_tokens
        # cirron reads the usage below from the returned dict: prompt/completion tokens marks.
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def events() -> AsyncIterator[str]:
        # cirron reads these SSE events as they are sent: the role-only opening chunk does not
        # count as the first token; the usage chunk (when asked for) gives the token counts.
        yield chunk({"role": "assistant", "content": ""})
        n = 0
        async for token in model.agenerate(prompt, max_tokens):
            n += 1
            yield chunk({"content": token})
        yield chunk({}, "length")
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [], "usage": usage}
            yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.exception_handler(ValueError)
async def _bad_request(_: Any, exc: ValueError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": {"message": str(exc), "type": "invalid_request_error"}})
