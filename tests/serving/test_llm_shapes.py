"""@ci.inference token detection for vLLM-style RequestOutput and Anthropic messages and streams."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:  # the fields vLLM's CompletionOutput has that detection reads
    index: int
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def _out(prompt_len: int, *completion_lens: int) -> RequestOutput:
    return RequestOutput("r", "p", list(range(prompt_len)),
                         [CompletionOutput(i, "t", list(range(n))) for i, n in enumerate(completion_lens)])


def test_vllm_request_output_and_generate_batches(prof) -> None:  # noqa: ANN001
    @prof.c.inference
    def one():
        return _out(7, 3)

    @prof.c.inference
    def batch():  # LLM.generate(prompts) returns one RequestOutput per prompt
        return [_out(5, 2), _out(4, 6, 1)]

    @prof.c.inference
    def strings():
        return ["no", "tokens"]

    one()
    batch()
    strings()
    r1, r2, r3 = prof.requests()
    assert (r1.summary["prompt_tokens"], r1.summary["completion_tokens"], r1.summary["tokens"]) == (7, 3, 3)
    assert (r2.summary["prompt_tokens"], r2.summary["completion_tokens"]) == (9, 9)
    assert r3.summary == {}


def test_vllm_stream_of_cumulative_outputs(prof) -> None:  # noqa: ANN001
    @prof.c.inference
    def stream():
        for n in (1, 2, 3, 4):
            yield _out(6, n)

    assert len(list(stream())) == 4
    (r,) = prof.requests()
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"], r.summary["tokens"]) == (6, 4, 4)
    assert r.summary["chunks"] == 4 and r.summary["ttft_ns"] > 0


def _anthropic_events() -> list[dict]:
    return [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                              "usage": {"input_tokens": 25, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
    ]


def test_anthropic_stream_events(prof) -> None:  # noqa: ANN001
    @prof.c.inference
    def stream():
        yield from _anthropic_events()

    assert len(list(stream())) == 8
    (r,) = prof.requests()
    s = r.summary
    assert (s["prompt_tokens"], s["completion_tokens"], s["tokens"], s["chunks"]) == (25, 15, 15, 2)


def test_anthropic_stream_as_sse_text(prof) -> None:  # noqa: ANN001
    import json

    @prof.c.inference
    def stream():
        for ev in _anthropic_events():
            yield f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n"

    list(stream())
    (r,) = prof.requests()
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"], r.summary["chunks"]) == (25, 15, 2)


def test_anthropic_message_object(prof) -> None:  # noqa: ANN001
    import pytest

    anthropic = pytest.importorskip("anthropic")
    msg = anthropic.types.Message.model_validate({
        "id": "m", "type": "message", "role": "assistant", "model": "toy", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 12, "output_tokens": 3}})

    @prof.c.inference
    def chat():
        return msg

    assert chat() is msg
    (r,) = prof.requests()
    assert (r.summary["prompt_tokens"], r.summary["completion_tokens"]) == (12, 3)
