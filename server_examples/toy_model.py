"""A deterministic toy "language model" for the examples: no weights, no downloads.

``ToyLM.generate(prompt, max_tokens)`` yields words picked from a small vocabulary by hashing the
prompt and the position, sleeping ``token_delay_s`` per token to look like real decoding.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator

VOCAB = (
    "the model reads your prompt and writes a short answer one token at a time while cirron "
    "records how long the first token took and how many tokens followed"
).split()


def count_tokens(text: str) -> int:
    """Whitespace tokens: good enough for usage numbers in a toy server."""
    return len(text.split())


class ToyLM:
    def __init__(self, token_delay_s: float | None = None) -> None:
        if token_delay_s is None:
            token_delay_s = float(os.environ.get("TOY_TOKEN_DELAY_MS", "2")) / 1000.0
        self.token_delay_s = token_delay_s

    def _token(self, prompt: str, i: int) -> str:
        h = hashlib.blake2b(f"{prompt}\x00{i}".encode(), digest_size=4).digest()
        return VOCAB[int.from_bytes(h, "big") % len(VOCAB)]

    def score(self, text: str) -> float:
        """A sentiment-like score in [0, 1) for the JSON predict endpoints."""
        h = hashlib.blake2b(text.encode(), digest_size=4).digest()
        return int.from_bytes(h, "big") / 2**32

    def generate(self, prompt: str, max_tokens: int) -> Iterator[str]:
        for i in range(max_tokens):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            yield (" " if i else "") + self._token(prompt, i)

    async def agenerate(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        for i in range(max_tokens):
            await asyncio.sleep(self.token_delay_s)
            yield (" " if i else "") + self._token(prompt, i)
