"""A timeline window's spans found and merged without a pass over the whole session.

The timeline keeps its spans in start order (:class:`cirron.ui.data.SessionData`). A window
``[lo, hi]`` shows the spans that end at or after ``lo`` and start at or before ``hi``; a mask
over every span finds them, and merging the small ones into blocks per depth by sorting them
costs a sort of the window's spans: on 2.5M spans over a second for the whole session.

:class:`DepthIndex` lists the spans of each depth in start order (one int32 per span) with, per
block of :data:`BLOCK` of them, the latest end so far: the spans of a depth that start after
``hi`` are cut off by a binary search on their starts, those that end before ``lo`` by a search
on the running latest end (within a block, by their own end), so a narrow window reads only the
spans near it. Within one depth the spans stay in start order, so the blocks of the timeline
(per depth, a bucket of a few pixels by start) are runs of consecutive spans: merged with
``reduceat``, no sort; each is named after its most common span name (:func:`block_names`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Spans per block of the running latest end (what a window's search on ``lo`` overshoots by at most).
BLOCK = 1024


class DepthIndex:
    """The spans of each depth in start order (see the module docstring)."""

    def __init__(self, end: np.ndarray, depth: np.ndarray) -> None:
        n = depth.size
        self.by_depth: np.ndarray = np.argsort(depth, kind="stable").astype(np.int32 if n < 2**31 - 1 else np.int64)
        counts = np.bincount(depth, minlength=1) if n else np.zeros(1, dtype=np.int64)
        #: Where each depth's spans start in ``by_depth`` (and one past the last).
        self.at: list[int] = np.concatenate([[0], np.cumsum(counts)]).tolist()
        #: Per depth: per block of its spans, the latest end of it and of the blocks before it.
        self.latest_end: list[np.ndarray] = []
        for d in range(len(counts)):
            a, b = self.at[d], self.at[d + 1]
            if a == b:
                self.latest_end.append(np.zeros(0, dtype=end.dtype))
                continue
            block_end = np.maximum.reduceat(end[self.by_depth[a:b]], np.arange(0, b - a, BLOCK))
            self.latest_end.append(np.maximum.accumulate(block_end))

    def visible(self, start: np.ndarray, end: np.ndarray, lo: int, hi: int) -> list[tuple[int, np.ndarray]]:
        """Per depth that has any, the rows of the spans with ``end >= lo`` and ``start <= hi``,
        in start order."""
        out = []
        by_depth = self.by_depth
        for d, latest in enumerate(self.latest_end):
            if not latest.size:
                continue
            a, b = self.at[d], self.at[d + 1]
            first = a + int(np.searchsorted(latest, lo)) * BLOCK  # blocks before it all end before lo
            if first >= b:
                continue
            left, right = first, b  # the first position starting after hi (starts ascend within a depth)
            while left < right:
                mid = (left + right) // 2
                if start[by_depth[mid]] > hi:
                    right = mid
                else:
                    left = mid + 1
            rows = by_depth[first:left]
            rows = rows[end[rows] >= lo]
            if rows.size:
                out.append((d, rows))
        return out


#: Spans merged at a time (bounds the temporaries of a window of millions of spans).
CHUNK = 1 << 18


def merge_blocks(parts: list[tuple[int, np.ndarray]], late: np.ndarray, start: np.ndarray, end: np.ndarray,
                 name: np.ndarray, names: list[str], lo: int, hi: int, px: int) -> list[dict[str, Any]]:
    """The small spans of a window merged per depth into blocks of about 4 pixels by start
    (``parts``: per depth, its rows in start order). Each block carries its count, extent, summed
    wall time and its most common span name (:func:`block_names`), the spans in ``late`` (long
    spans left out of a crowded window) weighing less than any other. About :data:`CHUNK` spans
    are merged at a time, each slice ending where a block ends."""
    n_buckets = max(1, px // 4)
    width = (hi - lo) / n_buckets
    out: list[dict[str, Any]] = []
    for d, depth_rows in parts:
        c, size, n = 0, CHUNK, depth_rows.size
        while c < n:
            rows = depth_rows[c:c + size]
            s, e = start[rows], end[rows]
            bucket = np.clip(((s - lo) / width).astype(np.int64), 0, n_buckets - 1)
            first = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1])
            del bucket
            if c + rows.size < n:  # the slice's last block may go on after it: leave it to the next slice
                if first.size == 1:
                    size *= 2
                    continue
                cut = int(first[-1])
                rows, s, e, first = rows[:cut], s[:cut], e[:cut], first[:-1]
            count = np.diff(np.concatenate([first, [rows.size]]))
            x0 = np.minimum.reduceat(s, first)
            x1 = np.maximum.reduceat(e, first)
            total = np.add.reduceat(e - s, first)
            del s, e
            is_late = np.isin(rows, late) if late.size else None
            top_name = block_names(name[rows], count, is_late, len(names))
            out.extend({"depth": d, "start": int(a), "end": int(b), "count": int(ct), "total_ns": int(t),
                        "name": names[int(nm)]}
                       for a, b, ct, t, nm in zip(x0.tolist(), x1.tolist(), count.tolist(), total.tolist(),
                                                  top_name.tolist()))
            c += rows.size
            size = CHUNK
    return out


#: Blocks times names up to which :func:`block_names` counts in one table (16 MB), not by a sort.
DENSE_COUNTS = 1 << 21


def block_names(codes: np.ndarray, count: np.ndarray, is_late: np.ndarray | None, n_names: int) -> np.ndarray:
    """The name code of each block: the most common among its spans, the lowest code on a tie
    (the name first on the timeline). ``codes``: the name code of each span, block after block,
    ``count`` spans each; a span of ``is_late`` weighs less than any other: it decides only
    between names the others tie on, or in a block of nothing but late spans."""
    n_blocks = count.size
    block = np.repeat(np.arange(n_blocks, dtype=np.int64), count)
    # a span not late outweighs all the late ones of its block together
    weight = None if is_late is None else np.where(is_late, 1.0, codes.size + 1.0)
    if n_blocks * n_names <= DENSE_COUNTS:
        table = np.bincount(block * n_names + codes, weights=weight, minlength=n_blocks * n_names)
        return table.reshape(n_blocks, n_names).argmax(axis=1)
    # many names: the runs of one (block, name) after a sort, the heaviest run of each block
    key = block * n_names + codes
    order = np.argsort(key, kind="stable")
    key = key[order]
    run = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    score = np.add.reduceat(np.ones(key.size) if weight is None else weight[order], run)
    run_block = key[run] // n_names
    block_first_run = np.searchsorted(run_block, np.arange(n_blocks))
    best = np.maximum.reduceat(score, block_first_run)
    top = np.flatnonzero(score == best[run_block])
    top = top[np.concatenate([[True], np.diff(run_block[top]) != 0])]  # the lowest code of each block's best
    return key[run[top]] % n_names
