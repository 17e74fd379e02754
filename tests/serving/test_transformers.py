"""A tiny GPT-2 built from a config (no download) calling ``generate`` inside ``@ci.inference``."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.anyio

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=64,
                                  bos_token_id=98, eos_token_id=99, pad_token_id=PAD)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _new_tokens(out, prompt_len: int) -> int:
    return int((out[:, prompt_len:] != PAD).sum())


def test_generate_inside_a_request_is_counted(prof, model) -> None:
    c = prof.c
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])

    @c.inference
    def complete(ids, mask):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)

    out = complete(ids, mask)
    assert isinstance(out, torch.Tensor)  # the result is returned as is
    model.generate(ids, max_new_tokens=2, do_sample=False)  # outside any request: not recorded

    spans = prof.spans()
    (req,) = prof.requests()
    gens = [s for s in spans if s["name"] == "generate"]
    assert len(gens) == 1 and gens[0]["parent_id"] == req.span["id"]
    expected = _new_tokens(out, 4)
    assert gens[0]["attrs"] == {"input_tokens": 7, "output_tokens": expected}
    s = req.summary
    assert (s["prompt_tokens"], s["completion_tokens"], s["tokens"]) == (7, expected, expected)
    assert s["tokens_per_s"] > 0


async def test_generate_in_a_worker_thread_of_an_async_request(prof, model) -> None:
    c = prof.c

    @c.inference
    async def complete(prompt):
        ids = torch.tensor([prompt])
        a = await asyncio.to_thread(model.generate, ids, max_new_tokens=3, do_sample=False)
        b = await asyncio.to_thread(model.generate, ids, max_new_tokens=2, do_sample=False)
        return _new_tokens(a, len(prompt)) + _new_tokens(b, len(prompt))

    total = await complete([1, 2, 3])
    (req,) = prof.requests()
    assert (req.summary["prompt_tokens"], req.summary["completion_tokens"]) == (6, total)


def test_streaming_generate_token_by_token(prof, model) -> None:
    c = prof.c

    @c.inference
    def stream(prompt, n):
        ids = torch.tensor([prompt])
        for _ in range(n):
            ids = model.generate(ids, max_new_tokens=1, do_sample=False)
            yield int(ids[0, -1])

    assert len(list(stream([1, 2], 4))) == 4
    (req,) = prof.requests()
    s = req.summary
    assert s["chunks"] == 4 and s["completion_tokens"] == 4 and s["tokens"] == 4
    assert s["prompt_tokens"] == 2 + 3 + 4 + 5
    assert s["ttft_ns"] > 0
