"""Rebuild sessions and span trees from spool records.

Two layers, kept apart so the in-process ``ci.trace()`` can reuse the second without files:

* **Tree building** (no I/O): :func:`merge_span`, :func:`assign_sessions`, :func:`children_index`,
  :func:`walk_tree`. They take plain span dicts (``id``, ``parent_id``, ``name``, ``start_ns``,
  ``end_ns``) and never recurse, so a chain of any depth or a ``parent_id`` cycle is safe.
* **Spool loading**: :func:`load_spool` streams the batch files (:mod:`cirron.spool.reader`),
  dedupes records, groups them into :class:`Session` objects and remembers which batch files
  hold which session's records (what ``clear`` deletes and what ``list`` sizes).

Rules (spec section 3 and the ``cirron traces`` reference):

* spans dedupe by ``id``, the record with ``end_ns`` wins (the later one among equals);
  marks and snapshots dedupe by ``id``, last write wins;
* a session is rooted at each ``cirron.session`` span whose ``parent_id`` is null; every other
  span belongs to the session its ``parent_id`` chain reaches;
* marks attach to their span's session; marks on the ``"root"`` sentinel (or on a span that
  never reached the spool) attach to the session named by their batch's ``session_id``;
* spans that reach no root form the synthetic ``(orphan spans)`` session, only when the spool
  holds no real session;
* a session whose root has no ``end_ns`` is *live* while its writer holds the liveness lock
  (:func:`cirron.spool.paths.is_session_live`) and *crashed* otherwise.
"""

from __future__ import annotations

import gc
import os
from operator import attrgetter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirron._schema import ROOT_SENTINEL, SESSION_SPAN_NAME
from cirron.spool import paths
from cirron.spool.reader import BatchFile, WarningCallback, list_batch_files, read_batch

__all__ = [
    "ORPHAN_SESSION_ID",
    "Session",
    "Spool",
    "assign_sessions",
    "children_index",
    "is_session_root",
    "load_sessions",
    "load_spool",
    "merge_span",
    "walk_tree",
]

#: Id (and display name) of the synthetic session holding spans that reach no root.
ORPHAN_SESSION_ID = "(orphan spans)"


# --------------------------------------------------------------------------- tree building


def is_session_root(span: Mapping[str, Any]) -> bool:
    return span.get("name") == SESSION_SPAN_NAME and span.get("parent_id") is None


def merge_span(spans: dict[str, dict], span: dict) -> bool:
    """Put ``span`` into ``spans`` (by id) unless a closed record is already there and this one
    is open. Returns whether it was stored."""
    sid = span["id"]
    old = spans.get(sid)
    if old is None or span.get("end_ns") is not None or old.get("end_ns") is None:
        spans[sid] = span
        return True
    return False


def assign_sessions(spans: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """Map every span id to the id of the session root its ``parent_id`` chain reaches.

    ``None`` for spans that reach no root: a missing parent, a top-level span that is not a
    ``cirron.session``, or a ``parent_id`` cycle. Iterative and linear: each span is walked once.
    """
    owner: dict[str, str | None] = {}
    for sid, s in spans.items():
        if is_session_root(s):
            owner[sid] = sid
    for start, rec0 in spans.items():
        if start in owner:
            continue
        parent0 = rec0.get("parent_id")
        if type(parent0) is str and parent0 in owner:  # fast path: parent already resolved
            owner[start] = owner[parent0]
            continue
        path: list[str] = []
        on_path: set[str] = set()
        cur: Any = start
        result: str | None = None
        while True:
            if cur in owner:
                result = owner[cur]
                break
            rec = spans.get(cur)
            if rec is None or cur in on_path:
                break
            on_path.add(cur)
            path.append(cur)
            parent = rec.get("parent_id")
            if type(parent) is not str or not parent:
                break
            cur = parent
        for x in path:
            owner[x] = result
    return owner


def _start_key(span: Mapping[str, Any]) -> tuple[int, str]:
    s = span.get("start_ns")
    return (s if type(s) is int else 0, span.get("id", ""))


def children_index(spans: Iterable[dict], root_ids: Iterable[str] = ()) -> tuple[list[dict], dict[str, list[dict]]]:
    """``(top_level, children)`` for a set of spans: ``children[parent_id]`` sorted by ``start_ns``.

    ``top_level`` holds the spans in ``root_ids``, the spans whose parent is not in the set,
    and one member of every ``parent_id`` cycle (so nothing is unreachable), sorted by start.
    """
    by_id = {s["id"]: s for s in spans}
    roots = set(root_ids)
    children: dict[str, list[dict]] = {}
    top: list[dict] = []
    for sid, s in by_id.items():
        p = s.get("parent_id")
        if sid in roots or type(p) is not str or p not in by_id or p == sid:
            top.append(s)
        else:
            children.setdefault(p, []).append(s)
    for lst in children.values():
        lst.sort(key=_start_key)
    # Anything not reachable from the top level sits on a cycle: promote one span per cycle.
    reached: set[str] = set()
    stack = [s["id"] for s in top]
    while stack:
        x = stack.pop()
        if x in reached:
            continue
        reached.add(x)
        stack.extend(c["id"] for c in children.get(x, ()))
    if len(reached) < len(by_id):
        for sid in sorted(by_id):
            if sid in reached:
                continue
            s = by_id[sid]
            p = s.get("parent_id")
            if p in children:
                children[p] = [c for c in children[p] if c["id"] != sid]
            top.append(s)
            stack = [sid]
            while stack:
                x = stack.pop()
                if x in reached:
                    continue
                reached.add(x)
                stack.extend(c["id"] for c in children.get(x, ()))
    top.sort(key=_start_key)
    return top, children


def walk_tree(top: list[dict], children: Mapping[str, list[dict]]) -> Iterator[tuple[dict, int]]:
    """Pre-order ``(span, depth)`` over a forest, children in ``start_ns`` order; no recursion."""
    stack: list[tuple[dict, int]] = [(s, 0) for s in reversed(top)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        sid = span["id"]
        if sid in seen:
            continue
        seen.add(sid)
        yield span, depth
        kids = children.get(sid)
        if kids:
            stack.extend((k, depth + 1) for k in reversed(kids))


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    """One ``ci.profile()`` lifetime: its root span and every record that hangs from it."""

    id: str
    root: dict | None
    spans: list[dict] = field(default_factory=list)
    marks: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    files: list[BatchFile] = field(default_factory=list)
    live: bool = False
    crashed: bool = False
    resource: dict = field(default_factory=dict)
    sdk_version: str | None = None

    @property
    def is_orphan(self) -> bool:
        return self.root is None

    @property
    def started_ns(self) -> int | None:
        if self.root is not None:
            return self.root.get("start_ns")
        starts = [s["start_ns"] for s in self.spans if type(s.get("start_ns")) is int]
        return min(starts) if starts else None

    @property
    def ended_ns(self) -> int | None:
        if self.root is not None:
            return self.root.get("end_ns")
        ends = [s["end_ns"] for s in self.spans if type(s.get("end_ns")) is int]
        return max(ends) if ends else None

    @property
    def open(self) -> bool:
        """The root has no ``end_ns`` (the session is live or crashed)."""
        return self.root is not None and self.root.get("end_ns") is None

    @property
    def status(self) -> str:
        """``"ended"``, ``"live"`` or ``"crashed"``."""
        if self.live:
            return "live"
        if self.crashed:
            return "crashed"
        return "ended"

    @property
    def bytes(self) -> int:
        """Size of the batch files that hold this session's records."""
        return sum(f.size for f in self.files)

    @property
    def last_ns(self) -> int | None:
        """The latest timestamp known in the session (ends, starts, mark times)."""
        best: int | None = None
        for s in self.spans:
            for k in ("end_ns", "start_ns"):
                v = s.get(k)
                if type(v) is int and (best is None or v > best):
                    best = v
        for m in self.marks:
            v = m.get("ts_ns")
            if type(v) is int and (best is None or v > best):
                best = v
        return best

    def tree(self) -> tuple[list[dict], dict[str, list[dict]]]:
        """``(top_level, children)`` as :func:`children_index` builds them."""
        return children_index(self.spans, [self.root["id"]] if self.root else ())

    def marks_by_span(self) -> dict[str, list[dict]]:
        """Marks grouped under the span they belong to, by ``ts_ns``. Marks whose span is not in
        the session (the ``"root"`` sentinel, unknown spans) go under the root span."""
        ids = {s["id"] for s in self.spans}
        root_id = self.root["id"] if self.root else ROOT_SENTINEL
        out: dict[str, list[dict]] = {}
        for m in self.marks:
            sid = m.get("span_id")
            key = sid if sid in ids else root_id
            out.setdefault(key, []).append(m)
        for lst in out.values():
            lst.sort(key=lambda m: m.get("ts_ns") if type(m.get("ts_ns")) is int else 0)
        return out


@dataclass
class Spool:
    """Everything read from one spool directory, deduped and grouped."""

    dir: Path
    files: list[BatchFile]
    spans: dict[str, dict]
    marks: dict[str, dict]
    snapshots: dict[str, dict]
    sessions: list[Session]  # oldest first
    #: For each readable batch file, the sessions its records belong to (None: no session).
    file_sessions: dict[Path, set[str | None]]
    #: Batch files that could not be read (skipped with a warning).
    unreadable: list[BatchFile] = field(default_factory=list)

    def find(self, prefix: str) -> list[Session]:
        """Sessions whose id starts with ``prefix``."""
        return [s for s in self.sessions if s.id.startswith(prefix)]

    @property
    def referenced_span_ids(self) -> set[str]:
        ids = set(self.spans)
        ids.update(s.get("span_id") for s in self.snapshots.values() if isinstance(s.get("span_id"), str))
        return ids


def load_spool(
    spool_dir: str | os.PathLike[str],
    on_warning: WarningCallback | None = None,
    *,
    on_file: Callable[[BatchFile], None] | None = None,
    fields: str = "full",
    files: Iterable[BatchFile] | None = None,
) -> Spool:
    """Read every batch file of ``spool_dir`` and rebuild its sessions.

    ``on_file`` is called after each file is read (progress reporting). ``fields="summary"``
    reads only what session reconstruction, counts and sizes need (ids, parents, names, start
    and end times): several times faster, for ``list`` and ``clear``. Never raises for bad
    file content; a missing directory is an empty spool. ``files`` restricts reading to those
    batch files (e.g. ``Session.files`` from an earlier ``fields="summary"`` read).
    """
    spool_dir = Path(spool_dir)
    files = list_batch_files(spool_dir, on_warning) if files is None else sorted(
        files, key=lambda b: (b.created_ns, b.batch_id))
    spans: dict[str, dict] = {}
    marks: dict[str, dict] = {}
    snaps: dict[str, dict] = {}
    ok_files: list[BatchFile] = []
    unreadable: list[BatchFile] = []
    # Per readable file: its records (references, no copies), to map files to sessions.
    file_refs: list[tuple[list, list, list, str | None]] = []
    batch_meta: dict[str, tuple[dict, str | None]] = {}
    dup_marks: set[str] = set()
    dup_snaps: set[str] = set()
    dups: list = []  # span records that lost the dedupe (their file still maps to the session)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small dicts: the cyclic GC would rescan them over and over
    try:
        for bf in files:
            batch = read_batch(bf, on_warning, fields)
            if on_file is not None:
                on_file(bf)
            if batch is None:
                unreadable.append(bf)
                continue
            ok_files.append(bf)
            bsid = batch["session_id"]
            if bsid is not None and bsid not in batch_meta:
                batch_meta[bsid] = (batch["resource"], batch["sdk_version"])
            bspans = batch["spans"]
            setdefault = spans.setdefault
            for s in bspans:
                old = setdefault(s.id, s)
                if old is not s:  # seen before: the closed record wins, else the later one
                    if s.end_ns is not None or old.end_ns is None:
                        spans[s.id] = s
                        dups.append(old)
                    else:
                        dups.append(s)
            bmarks = batch["marks"]
            n = len(marks)
            for m in bmarks:
                marks[m.id] = m
            if len(marks) - n != len(bmarks):  # some ids repeated: remember them for the winner check
                dup_marks.update(m.id for m in bmarks)
            bsnaps = batch["snapshots"]
            n = len(snaps)
            for sn in bsnaps:
                snaps[sn.id] = sn
            if len(snaps) - n != len(bsnaps):
                dup_snaps.update(sn.id for sn in bsnaps)
            file_refs.append((bspans, bmarks, bsnaps, bsid))
        return _group(spool_dir, ok_files, unreadable, file_refs, batch_meta, spans, marks, snaps, dups,
                      dup_marks, dup_snaps)
    finally:
        if gc_was_enabled:
            gc.enable()


def _assign_in_place(spans: dict) -> list:
    """:func:`assign_sessions` for record structs: sets ``rec.session`` (attribute reads instead
    of a second big dict; this is the hot loop of ``traces list`` on large spools)."""
    get = spans.get
    roots = []
    for sid, rec in spans.items():
        if rec.parent_id is None and rec.name == SESSION_SPAN_NAME:
            rec.session = sid
            roots.append(rec)
        elif rec.session is not None:
            rec.session = None
    unresolved = []
    for sid, rec in spans.items():
        if rec.session is not None:
            continue
        p = rec.parent_id
        if p is None:
            continue
        parent = get(p)
        if parent is not None and parent.session is not None:
            rec.session = parent.session
        else:
            unresolved.append(rec)
    # Slow path for spans whose parent came later in iteration order (or never resolves).
    done: set[str] = set()
    for rec in unresolved:
        if rec.session is not None or rec.id in done:
            continue
        path = []
        on_path: set[str] = set()
        cur = rec
        result = None
        while True:
            if cur.session is not None:
                result = cur.session
                break
            if cur.id in on_path or cur.id in done:
                break
            on_path.add(cur.id)
            path.append(cur)
            p = cur.parent_id
            nxt = get(p) if p is not None else None
            if nxt is None:
                break
            cur = nxt
        for x in path:
            x.session = result
            done.add(x.id)
    return roots


def _group(
    spool_dir: Path,
    ok_files: list[BatchFile],
    unreadable: list[BatchFile],
    file_refs: list,
    batch_meta: dict,
    spans: dict,
    marks: dict,
    snaps: dict,
    dups: list,
    dup_marks: set[str],
    dup_snaps: set[str],
) -> Spool:
    roots = _assign_in_place(spans)
    sessions: dict[str, Session] = {r.id: Session(id=r.id, root=r) for r in roots}
    all_sessions = dict(sessions)
    orphan_mode = not sessions and bool(spans)
    if orphan_mode:
        all_sessions[ORPHAN_SESSION_ID] = Session(id=ORPHAN_SESSION_ID, root=None)
        for s in spans.values():
            s.session = ORPHAN_SESSION_ID
    for d in dups:
        d.session = spans[d.id].session

    span_lists = {k: v.spans for k, v in all_sessions.items()}
    span_lists[None] = []  # spans of no session (dropped when real sessions exist)
    for s in spans.values():
        span_lists[s.session].append(s)
    del span_lists[None]
    mark_lists = {k: v.marks for k, v in all_sessions.items()}
    snap_lists = {k: v.snapshots for k, v in all_sessions.items()}
    get_session = attrgetter("session")

    span_get = spans.get
    fallback = ORPHAN_SESSION_ID if orphan_mode else None
    file_sessions: dict[Path, set[str | None]] = {}
    for bf, (bspans, bmarks, bsnaps, bsid) in zip(ok_files, file_refs):
        local = {s.id: s.session for s in bspans}  # small and cache-friendly; most marks hit it
        local_get = local.get
        owners: set[str | None] = set(local.values())
        for recs, lists, winners, dup_ids in ((bmarks, mark_lists, marks, dup_marks),
                                              (bsnaps, snap_lists, snaps, dup_snaps)):
            if not recs:
                continue
            for r in recs:
                sid = r.span_id
                o = local_get(sid)
                if o is None:
                    if sid is not None:
                        target = span_get(sid)
                        if target is not None:
                            o = target.session
                    if o is None:
                        b = r.batch_session
                        o = b if b in sessions else fallback
                r.session = o
                if o is not None and (not dup_ids or r.id not in dup_ids or winners[r.id] is r):
                    lists[o].append(r)
            owners.update(map(get_session, recs))
        if not (bspans or bmarks or bsnaps):
            owners.add(bsid if bsid in all_sessions else None)
        file_sessions[bf.path] = owners
        for o in owners:
            if o is not None:
                all_sessions[o].files.append(bf)

    for sess in all_sessions.values():
        meta = batch_meta.get(sess.id)
        if meta is not None:
            sess.resource = dict(meta[0])
            sess.sdk_version = meta[1]
        if sess.root is not None:
            attrs = sess.root.get("attrs")
            if sess.sdk_version is None and isinstance(attrs, dict) and isinstance(attrs.get("sdk_version"), str):
                sess.sdk_version = attrs["sdk_version"]
            for k in ("pid", "rank"):
                if k not in sess.resource and sess.root.get(k) is not None:
                    sess.resource[k] = sess.root[k]
        if sess.open:
            sess.live = paths.is_session_live(spool_dir, sess.id)
            sess.crashed = not sess.live

    ordered = sorted(
        all_sessions.values(), key=lambda s: (s.started_ns if s.started_ns is not None else 0, s.id)
    )
    return Spool(
        dir=spool_dir,
        files=ok_files,
        spans=spans,
        marks=marks,
        snapshots=snaps,
        sessions=ordered,
        file_sessions=file_sessions,
        unreadable=unreadable,
    )


def load_sessions(spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None) -> list[Session]:
    """The sessions of ``spool_dir``, oldest first (see :func:`load_spool`)."""
    return load_spool(spool_dir, on_warning).sessions
