"""Two session rules on whole numpy columns, shared by every reader that works on arrays (the
streamed exports, the outline of big sessions, the columnar reader, the index's light summary):
which copy of a record wins the dedupe, and the epoch and batch each span belongs to. The
record-by-record rules in :mod:`cirron.spool.reconstruct` decide the same."""

from __future__ import annotations

import numpy as np

#: How many parent links are followed at most (a parent_id cycle stops there).
MAX_DEPTH = 256


def last_of_each(hi: np.ndarray, lo: np.ndarray, closed: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the rows that win the dedupe of their key ``(hi, lo)`` (rows in write
    order): the last closed one, else the last one (``closed=None``: the last one). A stable
    sort keeps equal keys in row order, so no row column is needed."""
    n = len(hi)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.lexsort((closed, lo, hi) if closed is not None else (lo, hi))
    h = hi[order]
    last = np.empty(n, dtype=bool)
    last[-1] = True
    np.not_equal(h[1:], h[:-1], out=last[:-1])
    del h
    lo_sorted = lo[order]
    last[:-1] |= lo_sorted[1:] != lo_sorted[:-1]
    del lo_sorted
    keep[order[last]] = True
    return keep


def enclosing_steps(parent_row: np.ndarray, is_epoch: np.ndarray, is_batch: np.ndarray,
                    index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every span row, the ``index`` of the nearest epoch and batch span at or above it (-1:
    none), following ``parent_row`` links (-1: no parent)."""
    epoch = np.where(is_epoch, index, -1)
    batch = np.where(is_batch, index, -1)
    ptr = parent_row.copy()
    for _ in range(MAX_DEPTH):
        todo = (ptr >= 0) & ((epoch < 0) | (batch < 0))
        if not todo.any():
            break
        rows = np.flatnonzero(todo)
        p = ptr[rows]
        e_miss = epoch[rows] < 0
        epoch[rows[e_miss]] = np.where(is_epoch[p[e_miss]], index[p[e_miss]], -1)
        b_miss = batch[rows] < 0
        batch[rows[b_miss]] = np.where(is_batch[p[b_miss]], index[p[b_miss]], -1)
        ptr[rows] = parent_row[p]
    return epoch, batch
