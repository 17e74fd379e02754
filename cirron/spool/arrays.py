"""Ids as numpy keys, and two session rules on whole numpy columns, shared by every reader that works on arrays (the
streamed exports, the outline of big sessions, the columnar reader, the index's light summary):
which copy of a record wins the dedupe, and the epoch and batch each span belongs to. The
record-by-record rules in :mod:`cirron.spool.reconstruct` decide the same."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

#: Nibble value of each byte of a hex digit, 255 for any other byte.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
#: The same for lowercase hex digits only (uppercase ones are 255 too).
_LOWER_NIBBLE = _NIBBLE.copy()
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i
_HEX_LEN = 32
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_LOWER_HEX_DIGITS = b"0123456789abcdef"


def hex_halves(digits: np.ndarray, *, lower_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For the ASCII bytes of ids of 32 characters (one id per row): which rows are 32 hex
    digits (``lower_only``: 32 lowercase hex digits), and for those rows the id's 128 bits as two
    big-endian 64-bit halves ``(hi, lo)``."""
    nib = (_LOWER_NIBBLE if lower_only else _NIBBLE)[digits]
    good = (nib != 255).all(axis=1)
    nib = nib[good]
    return good, np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view(">u8")


def packed_hex_halves(text: bytes, *, lower_only: bool = False) -> np.ndarray | None:
    """The 128 bits of ids of 32 hex digits written back to back in ``text`` (``lower_only``:
    lowercase ones), one id per row as two big-endian 64-bit halves; ``None`` when a byte is
    not such a digit. One call for all the ids, where :func:`hex_halves` works byte by byte."""
    if text.translate(None, _LOWER_HEX_DIGITS if lower_only else _HEX_DIGITS):
        return None
    return np.frombuffer(bytes.fromhex(text.decode("ascii")), dtype=">u8").reshape(-1, 2)


def id_keys(ids: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """128-bit keys ``(hi, lo)`` of ids, as :func:`cirron.spool.stream._key` makes them: the id
    itself when it is 32 hex digits (decoded here on whole arrays), else a BLAKE2 digest."""
    from cirron.spool.stream import _key

    n = len(ids)
    hi = np.empty(n, dtype=np.uint64)
    lo = np.empty(n, dtype=np.uint64)
    slow: Any = range(n)
    try:
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=n)
        hexlike = np.flatnonzero(lens == _HEX_LEN)
        picked = ids if len(hexlike) == n else [ids[i] for i in hexlike.tolist()]
        text = "".join(picked).encode("ascii")
    except (TypeError, UnicodeEncodeError):  # not all strings, or non-ASCII (int() takes other digits)
        hexlike = None
    if hexlike is not None:
        packed = packed_hex_halves(text)
        if packed is not None:
            rows, halves = hexlike, packed
        else:
            good, halves = hex_halves(np.frombuffer(text, dtype=np.uint8).reshape(len(hexlike), _HEX_LEN))
            rows = hexlike[good]
        hi[rows] = halves[:, 0]
        lo[rows] = halves[:, 1]
        if len(rows) < n:
            todo = np.ones(n, dtype=bool)
            todo[rows] = False
            slow = np.flatnonzero(todo).tolist()
        else:
            slow = ()
    for i in slow:
        hi[i], lo[i] = _key(ids[i])
    return hi, lo


class Column:
    """A numpy column filled part by part (one batch file at a time) in one buffer that doubles as
    it fills. Unlike parts joined at the end, it never holds the data twice, and it leaves no
    freed parts behind in the heap (where they would stay counted in the process's memory); the
    buffer's unwritten tail takes no memory (big arrays are mapped lazily)."""

    def __init__(self, dtype: Any, capacity: int = 1 << 16) -> None:
        self._buf: np.ndarray = np.empty(capacity, dtype=dtype)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, part: Any) -> None:
        end = self._n + len(part)
        if end > len(self._buf):
            grown = np.empty(max(end, 2 * len(self._buf)), dtype=self._buf.dtype)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:end] = part
        self._n = end

    def take(self) -> np.ndarray:
        """The values appended so far (the column is empty afterwards)."""
        out = self._buf[:self._n]
        self._buf = np.empty(0, dtype=out.dtype)  # the column keeps no hold on the returned values
        self._n = 0
        return out


#: Keys looked up per slice by :class:`KeyIndex` (bounds the temporaries of a lookup).
LOOKUP_ROWS = 1 << 16


def search_sorted(sorted_keys: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_keys, needles)`` clipped to the last position (``sorted_keys`` not
    empty), searched in the needles' order: each search then starts where the one before ended,
    in memory still cached; in their own order each is a random walk over all the keys (2.5M keys
    looked up in 2.5M: 3-5x the time)."""
    order = np.argsort(needles)
    pos = np.empty(len(needles), dtype=np.intp)
    pos[order] = np.searchsorted(sorted_keys, needles[order])
    np.minimum(pos, len(sorted_keys) - 1, out=pos)
    return pos


#: A bucket of :func:`searcher` holding more keys than this sends lookups to :func:`search_sorted`.
_WIDEST_BUCKET = 32


def searcher(sorted_keys: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`search_sorted` over ``sorted_keys`` (not empty) as a function of the needles. For
    uint64 keys spread evenly (ids, their joined keys) it finds each needle's place from a table of
    where each run of keys sharing their top bits starts, then steps through the few keys of that
    run a step at a time for the needles still short of their place: no sort of the needles (the
    most of :func:`search_sorted`'s time), 3x faster on 2.5M keys; keys bunched on a few top bits
    (or of another dtype) go the sorted way."""
    n = len(sorted_keys)
    if sorted_keys.dtype != np.uint64 or n < 2:
        return lambda needles: search_sorted(sorted_keys, needles)
    bits = min(n.bit_length() - 1, 24)  # a key or two per bucket: a table of 4 bytes per 1-2 keys
    shift = np.uint64(64 - bits)
    counts = np.bincount((sorted_keys >> shift).astype(np.intp), minlength=1 << bits)
    if int(counts.max()) > _WIDEST_BUCKET:
        return lambda needles: search_sorted(sorted_keys, needles)
    starts = np.zeros(len(counts) + 1, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    np.cumsum(counts, out=starts[1:])
    del counts

    def search(needles: np.ndarray) -> np.ndarray:
        needles = needles.astype(np.uint64, copy=False)
        bucket = (needles >> shift).astype(np.intp)
        pos: np.ndarray = starts[bucket].astype(np.intp)
        end: np.ndarray = starts[bucket + 1].astype(np.intp)
        del bucket
        live = np.flatnonzero(pos < end)  # the needles whose bucket has keys left to step past
        while live.size:
            at = pos[live]
            short = sorted_keys[at] < needles[live]
            live = live[short]
            pos[live] = at[short] + 1
            live = live[pos[live] < end[live]]
        np.minimum(pos, n - 1, out=pos)
        return pos

    return search


class KeyIndex:
    """Rows of 64-bit keys, for looking keys up: the rows of ``keys`` where ``rows`` is true
    (all rows when it is None), sorted once; a lookup goes a slice at a time, so its temporaries
    stay small whatever the number of keys."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray | None = None) -> None:
        self._search: Callable[[np.ndarray], np.ndarray] | None = None
        self._rows = None if rows is None or rows.all() else np.flatnonzero(rows)
        picked = keys if self._rows is None else keys[self._rows]
        self._order = np.argsort(picked, kind="stable")
        self._sorted = picked[self._order]
        if self._rows is not None:  # row numbers of the whole column, in key order
            self._order = self._rows[self._order]
            self._rows = None

    def __len__(self) -> int:
        return len(self._sorted)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The row holding each key (the first in row order among equal ones), -1 where none does."""
        out = np.full(len(keys), -1, dtype=np.int64)
        n = len(self._sorted)
        if n == 0:
            return out
        if self._search is None:
            self._search = searcher(self._sorted)
        for i in range(0, len(keys), LOOKUP_ROWS):
            k = keys[i:i + LOOKUP_ROWS]
            pos = self._search(k)
            out[i:i + LOOKUP_ROWS] = np.where(self._sorted[pos] == k, self._order[pos], -1)
        return out


class PairIndex:
    """Rows of distinct 128-bit keys ``(hi, lo)``, for looking keys up exactly. The keys are
    sorted on one half, one that does not repeat among them when there is one (then a lookup
    compares the other half of the one candidate); when both halves repeat, a lookup merges the
    queries into the keys sorted on the whole key."""

    def __init__(self, hi: np.ndarray, lo: np.ndarray) -> None:
        self._hi, self._lo = hi, lo
        self._search: Callable[[np.ndarray], np.ndarray] | None = None
        self._by_hi = True
        self._order: np.ndarray | None = None
        for half, by_hi in ((hi, True), (lo, False)):
            order = np.argsort(half, kind="stable")
            s = half[order]
            if not (s[1:] == s[:-1]).any():
                self._order, self._sorted, self._by_hi = order, s, by_hi
                return
            del order, s

    def __len__(self) -> int:
        return len(self._hi)

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The row holding each key ``(hi, lo)``, -1 where none does."""
        if self._order is None:
            return _merge_lookup(self._hi, self._lo, hi, lo)
        out = np.full(len(hi), -1, dtype=np.int64)
        n = len(self._sorted)
        if n == 0:
            return out
        probe, check, other = (hi, lo, self._lo) if self._by_hi else (lo, hi, self._hi)
        if self._search is None:
            self._search = searcher(self._sorted)
        for i in range(0, len(probe), LOOKUP_ROWS):
            k = probe[i:i + LOOKUP_ROWS]
            pos = self._search(k)
            row = self._order[pos]
            out[i:i + LOOKUP_ROWS] = np.where((self._sorted[pos] == k) & (other[row] == check[i:i + LOOKUP_ROWS]),
                                              row, -1)
        return out


class JoinedIndex:
    """Rows of distinct 128-bit keys ``(hi, lo)``, looked up exactly while holding only their
    joined keys ``hi ^ lo``, sorted (``order``: the row of each). A key is ``(hi ^ lo, hi)`` as
    well, so a lookup finds each query's candidate row by its joined key, then compares the
    ``hi`` half of the candidates alone (``hi_of(rows)`` fetches those, from memory or from a
    file); joined keys that repeat among the keys (two ids, rarely) are resolved on the whole
    key among those rows alone, as :func:`_merge_lookup` does."""

    def __init__(self, sorted_join: np.ndarray, order: np.ndarray, hi_of: Callable[[np.ndarray], np.ndarray]) -> None:
        self._sorted, self._order, self._hi_of = sorted_join, order, hi_of
        self._search: Callable[[np.ndarray], np.ndarray] | None = None
        self._rep_join: np.ndarray | None = None
        if len(sorted_join) > 1:
            repeat = sorted_join[1:] == sorted_join[:-1]
            if repeat.any():
                group = np.zeros(len(sorted_join), dtype=bool)
                group[1:] |= repeat
                group[:-1] |= repeat
                self._rep_join = sorted_join[group]
                self._rep_rows = order[group]
                self._rep_hi = hi_of(self._rep_rows)

    @classmethod
    def of(cls, join: np.ndarray, hi_of: Callable[[np.ndarray], np.ndarray], dtype: Any = np.int64,
           rows: np.ndarray | None = None) -> JoinedIndex:
        """The index of the keys whose joined keys are ``join`` (only its ``rows`` when given; row
        numbers of the whole column either way, as ``dtype``)."""
        if rows is None:
            order = np.argsort(join, kind="stable").astype(dtype)
            return cls(join[order], order, hi_of)
        picked = join[rows]
        order = np.argsort(picked, kind="stable")
        return cls(picked[order], rows[order].astype(dtype), hi_of)

    def __len__(self) -> int:
        return len(self._sorted)

    def repeats_a_key(self) -> bool:
        """Whether two rows hold the same whole key (not only the same joined key)."""
        if self._rep_join is None:
            return False
        order = np.lexsort((self._rep_hi, self._rep_join))
        join, hi = self._rep_join[order], self._rep_hi[order]
        return bool(((join[1:] == join[:-1]) & (hi[1:] == hi[:-1])).any())

    @property
    def dtype(self) -> Any:
        """The dtype of the rows :meth:`lookup` returns."""
        return self._order.dtype

    def lookup(self, join: np.ndarray, hi_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The row holding each query key (-1: none), in the dtype of ``order``: the queries'
        joined keys ``join``, and ``hi_of(queries)`` the ``hi`` half of some of them."""
        out = np.full(len(join), -1, dtype=self._order.dtype)
        if not len(self._sorted):
            return out
        search = self._search
        if search is None and len(join) <= len(self._sorted) >> 6:  # a few: not worth the searcher's table
            search = functools.partial(search_sorted, self._sorted)
        elif search is None:
            search = self._search = searcher(self._sorted)
        for i in range(0, len(join), LOOKUP_ROWS):
            k = join[i:i + LOOKUP_ROWS]
            pos = search(k)
            hit = np.flatnonzero(self._sorted[pos] == k)
            if not hit.size:
                continue
            query, rows = hit + i, self._order[pos[hit]]
            q_hi = hi_of(query)
            exact = self._hi_of(rows) == q_hi
            out[query[exact]] = rows[exact]
            if self._rep_join is not None:
                k = k[hit]
                at = search_sorted(self._rep_join, k)
                rep = np.flatnonzero(self._rep_join[at] == k)
                if rep.size:
                    found = _merge_lookup(self._rep_join, self._rep_hi, k[rep], q_hi[rep])
                    out[query[rep]] = np.where(found >= 0, self._rep_rows[np.maximum(found, 0)], -1)
        return out


def _merge_lookup(hi: np.ndarray, lo: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray) -> np.ndarray:
    """:meth:`PairIndex.lookup` when both halves repeat among the keys: keys and queries sorted
    together on the whole key (each key before the queries equal to it), so a query's key, if
    there is one, is the last key before it."""
    n, m = len(hi), len(q_hi)
    out = np.full(m, -1, dtype=np.int64)
    if not n or not m:
        return out
    all_hi, all_lo = np.concatenate([hi, q_hi]), np.concatenate([lo, q_lo])
    order = np.lexsort((np.arange(n + m) >= n, all_lo, all_hi))
    is_key = order < n
    last_key = np.where(is_key, np.arange(n + m), -1)
    np.maximum.accumulate(last_key, out=last_key)
    at = np.flatnonzero(~is_key)
    cand = last_key[at]
    q, k = order[at], order[np.maximum(cand, 0)]
    hit = (cand >= 0) & (all_hi[k] == all_hi[q]) & (all_lo[k] == all_lo[q])
    out[q - n] = np.where(hit, k, -1)
    return out


#: How many parent links are followed at most (a parent_id cycle stops there).
MAX_DEPTH = 256
#: Rows walked up together by :func:`enclosing_steps`.
WALK_ROWS = 1 << 19


def last_of_each(hi: np.ndarray, lo: np.ndarray, closed: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the rows that win the dedupe of their key ``(hi, lo)`` (rows in write
    order): the last closed one, else the last one (``closed=None``: the last one).

    When keys repeat, one stable sort on ``hi`` finds the rows whose ``hi`` is unique (each its
    own winner); only the rows that share a ``hi`` with another (copies of one record, rarely two
    ids) are sorted on the whole key, so the temporaries are one index and one key column."""
    n = len(hi)
    if not _repeats(hi):  # every key is distinct (the common case): no row-order sort needed
        return np.ones(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    order = np.argsort(hi, kind="stable")
    h = hi[order]
    tie = np.zeros(n, dtype=bool)  # shares its hi with a neighbour in sorted order
    np.equal(h[1:], h[:-1], out=tie[1:])
    del h
    tie[:-1] |= tie[1:]
    keep[order[~tie]] = True
    if not tie.any():
        return keep
    sub = np.sort(order[tie])  # in write order, so the stable sort below keeps copies in it
    del order, tie
    s_hi, s_lo = hi[sub], lo[sub]
    sub_order = np.lexsort((closed[sub], s_lo, s_hi) if closed is not None else (s_lo, s_hi))
    h, lo_sorted = s_hi[sub_order], s_lo[sub_order]
    last = np.empty(len(sub), dtype=bool)
    last[-1] = True
    np.not_equal(h[1:], h[:-1], out=last[:-1])
    last[:-1] |= lo_sorted[1:] != lo_sorted[:-1]
    keep[sub[sub_order[last]]] = True
    return keep


def _repeats(a: np.ndarray) -> bool:
    """Whether a value occurs twice in ``a``."""
    s = np.sort(a)
    return bool((s[1:] == s[:-1]).any())


def enclosing_steps(parent_row: np.ndarray, is_epoch: np.ndarray, is_batch: np.ndarray,
                    index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every span row, the ``index`` of the nearest epoch and batch span at or above it (-1:
    none), following ``parent_row`` links (-1: no parent). Rows are walked up a block at a time
    (each row's walk reads only its own state), which bounds the temporaries."""
    epoch = np.where(is_epoch, index, -1)
    batch = np.where(is_batch, index, -1)
    for a in range(0, len(parent_row), WALK_ROWS):
        e, b = epoch[a: a + WALK_ROWS], batch[a: a + WALK_ROWS]  # views: written through
        ptr = parent_row[a: a + WALK_ROWS].copy()
        for _ in range(MAX_DEPTH):
            rows = np.flatnonzero((ptr >= 0) & ((e < 0) | (b < 0)))
            if not rows.size:
                break
            p = ptr[rows]
            e_miss = e[rows] < 0
            e[rows[e_miss]] = np.where(is_epoch[p[e_miss]], index[p[e_miss]], -1)
            b_miss = b[rows] < 0
            b[rows[b_miss]] = np.where(is_batch[p[b_miss]], index[p[b_miss]], -1)
            ptr[rows] = parent_row[p]
    return epoch, batch
