"""Flat spans-only CSV, streamed in two passes so memory stays bounded on huge spools.

Pass 1 reads every batch and keeps, per span id, only a few integers (parent index, which
record wins the dedupe, whether it is a session root) in compact arrays. Sessions are then
assigned on those arrays. Pass 2 reads the batches again and writes each winning record once.
"""

from __future__ import annotations

import csv
import gc
import os
from array import array
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Optional

from cirron.export._common import NoSessionFound, NoTracesFound, atomic_file, attrs_text
from cirron.spool.reader import BatchFile, WarningCallback, list_batch_files, read_batch
from cirron.spool.reconstruct import ORPHAN_SESSION_ID, assign_owners, is_session_root, span_wins, use_orphan_session

__all__ = ["CSV_COLUMNS", "SpanIndex", "build_span_index", "write_csv"]

CSV_COLUMNS = (
    "session_id", "span_id", "parent_id", "name", "index", "start_ns", "end_ns", "duration_ns", "cpu_ns", "gpu_ns",
    "memory_peak_bytes", "thread_id", "pid", "rank", "attrs_json",
)


class SpanIndex:
    """Compact per-span bookkeeping for a whole spool (ints in arrays, one dict of ids)."""

    def __init__(self) -> None:
        self.idx: dict[str, int] = {}
        self.parent = array("q")  # index of the parent id, -1 for none
        self.seen = bytearray()  # 1 once a record of this id was read
        self.closed = bytearray()  # winning record has end_ns
        self.is_root = bytearray()
        self.win_file = array("i")
        self.win_pos = array("i")
        self.owner = array("q")  # index of the root the span belongs to, -1 for none

    def _id(self, sid: str) -> int:
        i = self.idx.get(sid)
        if i is None:
            i = len(self.parent)
            self.idx[sid] = i
            self.parent.append(-1)
            self.seen.append(0)
            self.closed.append(0)
            self.is_root.append(0)
            self.win_file.append(-1)
            self.win_pos.append(-1)
        return i

    def add(self, span: dict, file_no: int, pos: int) -> None:
        i = self._id(span["id"])
        has_end = span.get("end_ns") is not None
        if self.seen[i] and not span_wins(True if self.closed[i] else None, span.get("end_ns")):
            return
        self.seen[i] = 1
        self.closed[i] = has_end
        self.win_file[i] = file_no
        self.win_pos[i] = pos
        p = span.get("parent_id")
        self.parent[i] = self._id(p) if type(p) is str and p else -1
        self.is_root[i] = 1 if is_session_root(span) else 0

    def assign(self) -> None:
        """Owners by :func:`cirron.spool.reconstruct.assign_owners` (-1: no session)."""
        n = len(self.parent)
        owners = assign_owners(_Parents(self), [i for i in range(n) if self.is_root[i] and self.seen[i]])
        owner = array("q", [-1]) * n
        for i, o in owners.items():
            if o is not None:
                owner[i] = o
        self.owner = owner

    def root_ids(self) -> dict[int, str]:
        rev = {}
        for sid, i in self.idx.items():
            if self.is_root[i] and self.seen[i] and self.owner[i] == i:
                rev[i] = sid
        return rev


class _Parents(Mapping[int, Optional[int]]):
    """The parent links of a :class:`SpanIndex` as a mapping (index → parent index or ``None``)
    over its arrays, so owner assignment needs no second per-span dict."""

    def __init__(self, index: SpanIndex) -> None:
        self._parent = index.parent
        self._seen = index.seen

    def __getitem__(self, i: int) -> int | None:
        if not (0 <= i < len(self._seen) and self._seen[i]):
            raise KeyError(i)
        p = self._parent[i]
        return p if p >= 0 else None

    def __contains__(self, i: object) -> bool:
        return type(i) is int and 0 <= i < len(self._seen) and self._seen[i] == 1

    def __iter__(self) -> Iterator[int]:
        seen = self._seen
        return (i for i in range(len(seen)) if seen[i])

    def __len__(self) -> int:
        return sum(self._seen)

    def items(self) -> Iterator[tuple[int, int | None]]:  # type: ignore[override]
        parent = self._parent
        return ((i, (parent[i] if parent[i] >= 0 else None)) for i in self)


def build_span_index(
    files: list[BatchFile], on_warning: WarningCallback | None = None, on_file: Callable[[BatchFile], None] | None = None
) -> SpanIndex:
    index = SpanIndex()
    for no, bf in enumerate(files):
        batch = read_batch(bf, on_warning, "summary")
        if on_file:
            on_file(bf)
        if batch is None:
            continue
        for pos, s in enumerate(batch["spans"]):
            index.add(s, no, pos)
    index.assign()
    return index


def _cell(v: object) -> object:
    return "" if v is None else v


def write_csv(
    spool_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    session_prefix: str | None = None,
    on_warning: WarningCallback | None = None,
    on_file: Callable[[BatchFile], None] | None = None,
) -> int:
    """Stream the spans of ``spool_dir`` to ``path``; returns rows written.

    ``session_prefix`` keeps the sessions whose id starts with it. Raises
    :class:`NoTracesFound` / :class:`NoSessionFound` before creating any file.
    ``on_file`` is called twice per batch file (once per pass).
    """
    files = list_batch_files(Path(spool_dir), on_warning)
    quiet: WarningCallback = lambda _m: None  # noqa: E731 - pass 2 must not repeat pass 1's warnings
    gc_on = gc.isenabled()
    gc.disable()
    try:
        index = build_span_index(files, on_warning, on_file)
        roots = index.root_ids()
        orphan_mode = use_orphan_session(len(roots), sum(index.seen))
        if not any(index.seen):
            raise NoTracesFound()
        wanted = None
        if session_prefix is not None:
            names = [ORPHAN_SESSION_ID] if orphan_mode else list(roots.values())
            wanted = {n for n in names if n.startswith(session_prefix)}
            if not wanted:
                raise NoSessionFound(session_prefix)
        idx, owner, win_file, win_pos = index.idx, index.owner, index.win_file, index.win_pos
        emitted = bytearray(len(index.parent))
        rows = 0
        with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for no, bf in enumerate(files):
                batch = read_batch(bf, quiet, "export")
                if on_file:
                    on_file(bf)
                if batch is None:
                    continue
                out = []
                for pos, s in enumerate(batch["spans"]):
                    i = idx[s["id"]]
                    if win_file[i] != no or win_pos[i] != pos or emitted[i]:
                        continue
                    o = owner[i]
                    if o >= 0:
                        sess = roots[o]
                    elif orphan_mode:
                        sess = ORPHAN_SESSION_ID
                    else:
                        continue
                    if wanted is not None and sess not in wanted:
                        continue
                    emitted[i] = 1
                    st, en = s.get("start_ns"), s.get("end_ns")
                    out.append((
                        sess, s["id"], _cell(s.get("parent_id")), _cell(s.get("name")), _cell(s.get("index")),
                        _cell(st), _cell(en), en - st if (type(st) is int and type(en) is int) else "",
                        _cell(s.get("cpu_ns")), _cell(s.get("gpu_ns")), _cell(s.get("memory_peak_bytes")),
                        _cell(s.get("thread_id")), _cell(s.get("pid")), _cell(s.get("rank")),
                        attrs_text(s.attrs),
                    ))
                w.writerows(out)
                rows += len(out)
                del batch, out
    finally:
        if gc_on:
            gc.enable()
    return rows
