"""Record ids: cheap integers on the hot path, 32 lowercase hex characters on disk.

An id is ``prefix | n``: a random 64-bit per-process prefix in the high half and a process-wide
counter in the low half. Making one costs an ``next()`` and an ``|``; turning it into text, with
a bijective scramble so it looks random, is left to the flush service (:func:`hex_id`). A forked child draws a new prefix, so it never
repeats its parent's ids even though it inherits the counter.
"""

from __future__ import annotations

import itertools
import os


def _new_prefix() -> int:
    return int.from_bytes(os.urandom(8), "big") << 64


class IdSource:
    __slots__ = ("prefix", "_counter")

    def __init__(self) -> None:
        self.prefix = _new_prefix()
        self._counter = itertools.count(1)

    def next_id(self) -> int:
        return self.prefix | next(self._counter)

    def reseed(self) -> None:
        """Called in a forked child: new prefix, so ids stay unique across processes."""
        self.prefix = _new_prefix()


IDS = IdSource()


_MASK = (1 << 128) - 1
_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd, so multiplying by it mod 2**128 is a bijection


def hex_id(value: int) -> str:
    """The 32-hex text of an id, scrambled by a bijection (multiplying by an odd constant modulo
    2**128) so that ids made one after another differ from the first character on: short
    prefixes stay useful to ``--session``/``--span``."""
    return ((value * _MIX) & _MASK).to_bytes(16, "big").hex()


def random_hex() -> str:
    """A 32-hex id for things made off the hot path (batches)."""
    return os.urandom(16).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=IDS.reseed)
