"""Record ids: cheap integers on the hot path, 32 lowercase hex characters on disk.

An id is ``prefix + n``: a random 64-bit per-process prefix in the high half and a process-wide
count in the low half, handed out by one ``itertools.count`` (making one costs a ``next()``).
Turning it into text, with a bijective scramble so it looks random, is left to the flush service
(:func:`hex_id`). A forked child draws a new prefix and carries on counting from where its parent
was, so it never repeats the parent's ids.
"""

from __future__ import annotations

import itertools
import os

_LOW = (1 << 64) - 1


def _new_prefix() -> int:
    return int.from_bytes(os.urandom(8), "big") << 64


class IdSource:
    __slots__ = ("prefix", "ids")

    def __init__(self) -> None:
        self.prefix = _new_prefix()
        #: Yields ``prefix + 1``, ``prefix + 2``, ...: ``next(IDS.ids)`` is the hot path's id.
        self.ids = itertools.count(self.prefix | 1)

    def next_id(self) -> int:
        return next(self.ids)

    def reseed(self) -> None:
        """Called in a forked child: new prefix, so ids stay unique across processes."""
        n = next(self.ids) & _LOW
        self.prefix = _new_prefix()
        self.ids = itertools.count(self.prefix | n)


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
