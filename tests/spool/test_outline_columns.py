"""The array rules and the column store under :mod:`cirron.spool.outline`, against plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from cirron.spool import outline
from cirron.spool.arrays import last_of_each


def _last_of_each_by_hand(hi: np.ndarray, lo: np.ndarray, closed: np.ndarray | None) -> np.ndarray:
    """Per key, in write order: a closed copy beats every earlier copy; an open one beats earlier open ones."""
    best: dict[tuple[int, int], tuple[int, bool]] = {}
    for i, key in enumerate(zip(hi.tolist(), lo.tolist())):
        is_closed = True if closed is None else bool(closed[i])
        seen = best.get(key)
        if seen is None or is_closed or not seen[1]:
            best[key] = (i, is_closed)
    keep = np.zeros(len(hi), dtype=bool)
    keep[[i for i, _c in best.values()]] = True
    return keep


@pytest.mark.parametrize("seed", range(40))
def test_last_of_each_picks_the_last_closed_copy_else_the_last(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80))
    # few distinct upper halves: many rows share one with a different lower half (two ids)
    hi = rng.integers(0, 5 if seed % 2 else 2**63, n).astype(np.uint64)
    lo = rng.integers(0, 4, n).astype(np.uint64)
    closed = rng.integers(0, 2, n).astype(bool) if seed % 3 else None
    assert (last_of_each(hi, lo, closed) == _last_of_each_by_hand(hi, lo, closed)).all()


@pytest.mark.parametrize("in_memory", [0, 40, 1 << 20])
def test_spilled_columns_come_back_whole_or_by_rows(monkeypatch, in_memory: int):
    monkeypatch.setattr(outline, "COLUMNS_IN_MEMORY", in_memory)
    monkeypatch.setattr(outline, "_TAKE_CHUNK", 7)  # rows picked across several slices of the file
    store = outline._ColumnSpill()
    parts = [np.arange(k, k + 13, dtype=np.int64) * 3 for k in range(0, 130, 13)]
    flags = [np.arange(13) % 3 == 0 for _ in parts]
    try:
        for p, f in zip(parts, flags):
            store.add("v", p)
            store.add("f", f)
        store.settle()
        assert bool(store._files) == (in_memory < 1 << 20)  # went to temporary files
        whole = np.concatenate(parts)
        rows = np.array([0, 6, 7, 8, 20, 21, 64, 127, 129])
        assert store.take("v", rows).tolist() == whole[rows].tolist()
        assert store.take("f").tolist() == np.concatenate(flags).tolist()
        assert store.take("nothing").tolist() == []
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(30))
def test_pair_index_finds_each_key_by_both_halves(seed: int):
    """Keys whose halves repeat (one, the other, both or neither) are found exactly; a key that
    shares one half with a stored one, or none, is not found."""
    from cirron.spool.arrays import PairIndex

    rng = np.random.default_rng(seed)
    span = [(2**63, 2**63), (4, 2**63), (2**63, 4), (3, 3)][seed % 4]
    keys = {(int(rng.integers(0, span[0])), int(rng.integers(0, span[1]))) for _ in range(int(rng.integers(0, 12)))}
    keys_l = list(keys)
    hi = np.array([k[0] for k in keys_l], dtype=np.uint64)
    lo = np.array([k[1] for k in keys_l], dtype=np.uint64)
    queries = keys_l + [(int(rng.integers(0, span[0])), int(rng.integers(0, span[1]))) for _ in range(20)]
    queries += [(h, lo_ + 1) for h, lo_ in keys_l[:3]] + [(h + 1, lo_) for h, lo_ in keys_l[:3]]
    rng.shuffle(queries)
    got = PairIndex(hi, lo).lookup(np.array([q[0] for q in queries], dtype=np.uint64),
                                   np.array([q[1] for q in queries], dtype=np.uint64))
    row = {k: i for i, k in enumerate(keys_l)}
    assert got.tolist() == [row.get(q, -1) for q in queries]
