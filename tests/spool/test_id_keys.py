"""The vectorised id keys equal the one-id rule (cirron.spool.stream._key) for every kind of id."""

from __future__ import annotations

import random
import uuid

import pytest

from cirron.spool.arrays import id_keys
from cirron.spool.stream import _key

ODD = ["", "x", "A" * 32, "0x" + "1" * 30, " " + "f" * 31, "g" * 32, "1_" + "2" * 30, "abc",
       uuid.uuid4().hex.upper(), "a b" + "c" * 29, "f" * 31, "f" * 33, "é" * 32]
NON_ASCII = ["\u0663" * 32, "\u00e9" + "a" * 31]  # int(..., 16) takes other scripts' digits


@pytest.mark.parametrize("extra", [[], ODD, NON_ASCII, ODD + NON_ASCII])
def test_id_keys_equal_the_one_id_rule(extra):
    ids = [uuid.uuid4().hex for _ in range(300)] + extra
    random.Random(len(extra)).shuffle(ids)
    hi, lo = id_keys(ids)
    assert [(int(h), int(lo_)) for h, lo_ in zip(hi, lo)] == [_key(i) for i in ids]


def test_id_keys_of_nothing():
    hi, lo = id_keys([])
    assert len(hi) == len(lo) == 0


@pytest.mark.parametrize("libc", ["found", None])
def test_returned_memory_leaves_the_arrays_alone(monkeypatch, libc):
    """The glibc tuning (its effect on peak memory is measured by bench/bench_cli.py) changes no
    value, and without glibc the context does nothing."""
    import numpy as np

    from cirron import _memory

    if libc is None:
        monkeypatch.setattr(_memory, "_LIBC", [None])
    elif _memory._glibc() is None:
        pytest.skip("not glibc")
    with _memory.returned_memory():
        a = np.arange(4 << 20)
    with _memory.returned_memory():
        assert int(a.sum()) == (4 << 20) * ((4 << 20) - 1) // 2


@pytest.mark.parametrize("libc", ["found", None])
def test_reuse_heap_leaves_the_arrays_alone(monkeypatch, libc):
    import numpy as np

    from cirron import _memory

    if libc is None:
        monkeypatch.setattr(_memory, "_LIBC", [None])
    elif _memory._glibc() is None:
        pytest.skip("not glibc")
    a = np.arange(4 << 20)
    _memory.reuse_heap()
    b = np.arange(4 << 20)
    _memory.map_big_blocks()  # back to the pin the CLI sets, for the tests that follow
    assert int(a.sum()) == int(b.sum()) == (4 << 20) * ((4 << 20) - 1) // 2


@pytest.fixture
def glibc_memory():
    """cirron._memory where glibc is tuned (else the test is skipped); the CLI's pin is put back
    afterwards, for the tests that follow."""
    from cirron import _memory

    if _memory._glibc() is None:
        pytest.skip("not glibc")
    yield _memory
    _memory.map_big_blocks()


def test_returned_memory_puts_back_the_heap_reuse_of_the_column_exports(glibc_memory):
    """A big session's first pass pins the mmap threshold; its pieces are then written with the
    heap reused again, as the csv/json exports asked (else each slice's buffers fault afresh)."""
    m = glibc_memory
    m.reuse_heap()
    with m.returned_memory():
        assert m._mode[0] is m.map_big_blocks
    assert m._mode[0] is m.reuse_heap
    m.map_big_blocks()
    with m.returned_memory():
        pass
    assert m._mode[0] is m.map_big_blocks


def test_reused_heap_reuses_it_for_a_pass_under_the_pin_only(glibc_memory):
    """Under the CLI's pin, a pass of slice buffers reuses the heap, then the pin applies again;
    where nothing pinned the threshold (a library caller), the pass changes nothing."""
    m = glibc_memory
    m.map_big_blocks()
    with m.reused_heap():
        assert m._mode[0] is m.reuse_heap
    assert m._mode[0] is m.map_big_blocks
    m._mode[0] = None
    with m.reused_heap():
        assert m._mode[0] is None
    assert m._mode[0] is None


def test_search_sorted_finds_what_searchsorted_finds():
    import numpy as np

    from cirron.spool.arrays import search_sorted

    rng = np.random.default_rng(7)
    keys = np.sort(rng.integers(0, 1000, 300).astype(np.uint64))
    needles = rng.integers(0, 1100, 2000).astype(np.uint64)  # some past the last key
    want = np.minimum(np.searchsorted(keys, needles), len(keys) - 1)
    assert (search_sorted(keys, needles) == want).all()
    assert search_sorted(keys, needles[:0]).size == 0


@pytest.mark.parametrize("spread", ["even", "bunched", "int64"])
def test_searcher_finds_what_searchsorted_finds(spread):
    """The bucket table (keys spread evenly over 64 bits) and its fallbacks (keys bunched on a few
    top bits, another dtype) place every needle as np.searchsorted does: on a key, between keys,
    before the first, past the last, on repeated keys."""
    import numpy as np

    from cirron.spool.arrays import searcher

    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 17, 5000):
        if spread == "even":
            keys = rng.integers(1, 2**63, n, dtype=np.uint64) * np.uint64(2)
        elif spread == "bunched":
            keys = rng.integers(0, 1000, n).astype(np.uint64)
        else:
            keys = rng.integers(0, 2**62, n, dtype=np.int64)
        keys = np.sort(np.concatenate([keys, keys[: n // 3]]))  # some repeat
        dtype = keys.dtype
        ends = np.array([0, np.iinfo(dtype).max, keys[0], keys[-1], keys[-1] + 1], dtype=dtype)
        needles = np.concatenate([keys[rng.integers(0, len(keys), 3 * n)], keys + 1, ends]).astype(dtype)
        rng.shuffle(needles)
        want = np.minimum(np.searchsorted(keys, needles), len(keys) - 1)
        search = searcher(keys)
        assert (search(needles) == want).all(), n
        assert search(needles[:0]).size == 0


def test_joined_index_finds_a_few_keys_as_it_finds_many():
    """A lookup of a few keys (searched without the bucket table, which costs a pass over all the
    keys) finds what a lookup of many finds, before and after the table is built, joined keys
    that repeat among the keys included."""
    import numpy as np

    from cirron.spool.arrays import JoinedIndex

    rng = np.random.default_rng(5)
    n = 20_000
    hi = rng.integers(1, 2**63, n, dtype=np.uint64)
    lo = rng.integers(1, 2**63, n, dtype=np.uint64)
    hi[1], lo[1] = lo[0], hi[0]  # (a, b) and (b, a): one joined key
    q_hi = np.concatenate([hi[[0, 1, 7, n - 1]], [np.uint64(3)], hi[:2]])
    q_lo = np.concatenate([lo[[0, 1, 7, n - 1]], [np.uint64(4)], lo[1::-1]])  # the last two: nobody's
    want = [0, 1, 7, n - 1, -1, -1, -1]

    index = JoinedIndex.of(hi ^ lo, hi.__getitem__)
    assert index.lookup(q_hi ^ q_lo, q_hi.__getitem__).tolist() == want
    assert index._search is None  # a few keys: no table
    many_hi, many_lo = np.concatenate([hi, q_hi]), np.concatenate([lo, q_lo])
    found = index.lookup(many_hi ^ many_lo, many_hi.__getitem__)
    assert found.tolist() == list(range(n)) + want and index._search is not None
    assert index.lookup(q_hi ^ q_lo, q_hi.__getitem__).tolist() == want
