"""Session reconstruction and dedupe: the one implementation every reader uses.

Pure functions and one accumulator, no I/O. The spool loader (:mod:`cirron.spool.sessions`), the
exporters, ``ci.trace()`` and the CLI all rebuild sessions and trees through this module, so the
rules below are written once.

Rules (spec section 3 and the ``cirron traces`` reference):

* spans dedupe by ``id``: the record with ``end_ns`` wins, the later one among equals
  (:func:`span_wins`); marks and snapshots dedupe by ``id``, last write wins; a session lists its
  records in the order their winning records were written (what a streaming reader sees);
* a session is rooted at each ``cirron.session`` span whose ``parent_id`` is null
  (:func:`is_session_root`); every other span belongs to the session its ``parent_id`` chain
  reaches (:func:`assign_owners`, iterative, linear, safe on cycles);
* marks and snapshots attach to their span's session; those on the ``"root"`` sentinel (or on a
  span that never reached the spool) attach to the session named by their batch's ``session_id``;
  inside a session a mark whose span is unknown hangs under the root (:func:`mark_span_id`);
* spans that reach no root form the synthetic ``(orphan spans)`` session, only when the records
  hold no real session (:func:`use_orphan_session`).

Interfaces, from the smallest up:

* :func:`assign_owners`, :func:`children_index`, :func:`walk_tree` work on any ids;
* :class:`Reconstructor` takes batches (``add_batch``), dedupes as it goes and returns the
  sessions with :meth:`Reconstructor.finish`. A streaming reader feeds it the batches of one
  session at a time (:func:`reconstruct`); the spool loader feeds it a whole spool.

A batch here is what :func:`cirron.spool.reader.read_batch` returns: a mapping with
``session_id``, ``resource``, ``sdk_version`` and ``spans``/``marks``/``snapshots`` lists of
record structs (``.id``, ``.parent_id``, ``.session`` ... attributes).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from cirron._schema import ROOT_SENTINEL, SESSION_SPAN_NAME

__all__ = [
    "ORPHAN_SESSION_ID",
    "Reconstruction",
    "Reconstructor",
    "Session",
    "Unplaced",
    "assign_owners",
    "assign_sessions",
    "children_index",
    "is_session_root",
    "is_unfinished",
    "mark_span_id",
    "merge_span",
    "place_by_window",
    "place_loose",
    "reconstruct",
    "session_status",
    "session_windows",
    "span_wins",
    "use_orphan_session",
    "walk_tree",
    "writer_name",
]

#: Id (and display name) of the synthetic session holding spans that reach no root.
ORPHAN_SESSION_ID = "(orphan spans)"

K = TypeVar("K", bound=Hashable)
#: A span, mark or snapshot as the spool holds it: one JSON object.
Record = dict[str, Any]


# --------------------------------------------------------------------------- the rules


def is_session_root(span: Mapping[str, Any]) -> bool:
    return span.get("name") == SESSION_SPAN_NAME and span.get("parent_id") is None


def span_wins(old_end_ns: object, new_end_ns: object) -> bool:
    """Whether a newer record of a span replaces the one already kept: unless the kept one is
    closed and the newer one open (a closed record wins; the later one among equals)."""
    return new_end_ns is not None or old_end_ns is None


def use_orphan_session(n_sessions: int, n_spans: int) -> bool:
    """Spans that reach no root are shown as the ``(orphan spans)`` session only when there is
    no real session at all."""
    return n_sessions == 0 and n_spans > 0


def mark_span_id(span_id: object, span_ids: Iterable[object] | Mapping[Any, Any], root_id: str | None) -> Any:
    """The span a mark (or snapshot) hangs under inside its session: its own span when the
    session holds it, else the session root (``root_id``; ``None`` when there is no root)."""
    if span_id != ROOT_SENTINEL and span_id in span_ids:  # type: ignore[operator]
        return span_id
    return root_id


def merge_span(spans: dict[str, Record], span: Record) -> bool:
    """Put ``span`` into ``spans`` (by id) unless :func:`span_wins` says the kept one stays.
    Returns whether it was stored."""
    sid = span["id"]
    old = spans.get(sid)
    if old is None or span_wins(old.get("end_ns"), span.get("end_ns")):
        spans[sid] = span
        return True
    return False


def assign_owners(parents: Mapping[K, K | None], roots: Iterable[K]) -> dict[K, K | None]:
    """Map every key of ``parents`` (id → parent id, ``None`` for none) to the root its chain
    reaches, or ``None``: a missing parent, a top-level node that is not a root, a cycle.

    Iterative and linear: each node is walked once, so a chain of any depth is safe.
    """
    owner: dict[K, K | None] = {r: r for r in roots if r in parents}
    for start, p0 in parents.items():
        if start in owner:
            continue
        if p0 is not None and p0 in owner:  # fast path: parent already resolved
            owner[start] = owner[p0]
            continue
        path: list[K] = []
        on_path: set[K] = set()
        cur: K | None = start
        result: K | None = None
        while cur is not None:
            if cur in owner:
                result = owner[cur]
                break
            if cur in on_path or cur not in parents:
                break
            on_path.add(cur)
            path.append(cur)
            cur = parents[cur]
        for x in path:
            owner[x] = result
    return owner


def _parent(span: Mapping[str, Any]) -> str | None:
    p = span.get("parent_id")
    return p if type(p) is str and p else None


def assign_sessions(spans: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """Map every span id (of dict-like records) to the id of the session root its chain reaches,
    or ``None`` (see :func:`assign_owners`)."""
    parents = {sid: _parent(s) for sid, s in spans.items()}
    return assign_owners(parents, [sid for sid, s in spans.items() if is_session_root(s)])


# --------------------------------------------------------------------------- trees


def _start_key(span: Mapping[str, Any]) -> tuple[int, Any]:
    s = span.get("start_ns")
    return (s if type(s) is int else 0, span.get("id", ""))


def _reach(start: Iterable[Any], children: Mapping[Any, list[Record]], reached: set[Any]) -> None:
    stack = list(start)
    while stack:
        x = stack.pop()
        if x in reached:
            continue
        reached.add(x)
        stack.extend(c["id"] for c in children.get(x, ()))


def children_index(spans: Iterable[Record],
                   root_ids: Iterable[Any] = ()) -> tuple[list[Record], dict[Any, list[Record]]]:
    """``(top_level, children)`` for a set of spans: ``children[parent_id]`` sorted by ``start_ns``
    (then id).

    ``top_level`` holds the spans in ``root_ids``, the spans whose parent is not in the set,
    and one member of every ``parent_id`` cycle (so nothing is unreachable), sorted by start.
    Ids may be any hashable (strings from the spool, ints in process).
    """
    by_id = {s["id"]: s for s in spans}
    roots = set(root_ids)
    children: dict[Any, list[Record]] = {}
    top: list[Record] = []
    for sid, s in by_id.items():
        p = s.get("parent_id")
        if sid in roots or p is None or p not in by_id or p == sid:
            top.append(s)
        else:
            children.setdefault(p, []).append(s)
    for lst in children.values():
        lst.sort(key=_start_key)
    # Anything not reachable from the top level sits on a cycle: promote one span per cycle.
    reached: set[Any] = set()
    _reach((s["id"] for s in top), children, reached)
    if len(reached) < len(by_id):
        for sid in sorted(by_id, key=str):
            if sid in reached:
                continue
            s = by_id[sid]
            p = s.get("parent_id")
            if p in children:
                children[p] = [c for c in children[p] if c["id"] != sid]
            top.append(s)
            _reach([sid], children, reached)
    top.sort(key=_start_key)
    return top, children


def walk_tree(top: list[Record], children: Mapping[Any, list[Record]]) -> Iterator[tuple[Record, int]]:
    """Pre-order ``(span, depth)`` over a forest, children in ``start_ns`` order; no recursion."""
    stack: list[tuple[Record, int]] = [(s, 0) for s in reversed(top)]
    seen: set[Any] = set()
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


def writer_name(lock_protocol: bool) -> str:
    """``"cirron"`` (this SDK's protocol: batch ``session_id`` and a liveness lock) or ``"other"``
    (another schema_version 1 writer)."""
    return "cirron" if lock_protocol else "other"


def is_unfinished(lock_protocol: bool, has_root: bool, root_end_ns: object) -> bool:
    """A session whose writer cannot prove it finished (no closed root) and has no lock to show
    it is alive: it may still be writing."""
    return not lock_protocol and (not has_root or root_end_ns is None)


def session_status(live: bool, crashed: bool, unfinished: bool) -> str:
    """``"live"``, ``"crashed"``, ``"unfinished"`` or ``"ended"``, in that order of precedence."""
    if live:
        return "live"
    if crashed:
        return "crashed"
    return "unfinished" if unfinished else "ended"


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    """One ``ci.profile()`` lifetime: its root span and every record that hangs from it.

    ``files`` are the sources of the batches that hold its records (the spool loader passes
    :class:`cirron.spool.reader.BatchFile` objects); ``live``/``crashed`` are set by whoever
    can check the writer's liveness (the spool loader).
    """

    id: str
    root: Record | None
    spans: list[Record] = field(default_factory=list)
    marks: list[Record] = field(default_factory=list)
    snapshots: list[Record] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)
    live: bool = False
    crashed: bool = False
    resource: dict[str, Any] = field(default_factory=dict)
    sdk_version: str | None = None
    #: Every batch of this session came from a writer that holds the liveness lock while it
    #: writes (a batch-level ``session_id`` key, :data:`cirron.spool.tolerant.LOCK_PROTOCOL_KEY`).
    lock_protocol: bool = True

    @property
    def writer(self) -> str:
        return writer_name(self.lock_protocol)

    @property
    def unfinished(self) -> bool:
        return is_unfinished(self.lock_protocol, self.root is not None,
                             self.root.get("end_ns") if self.root is not None else None)

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
        """``"ended"``, ``"live"``, ``"crashed"`` or ``"unfinished"`` (:attr:`unfinished`)."""
        return session_status(self.live, self.crashed, self.unfinished)

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

    @property
    def root_id(self) -> str | None:
        return self.root["id"] if self.root is not None else None

    def tree(self) -> tuple[list[Record], dict[str, list[Record]]]:
        """``(top_level, children)`` as :func:`children_index` builds them; spans placed in the
        session without a parent in it (another writer's thread or request spans) hang under
        the root."""
        if self.root is None:
            return children_index(self.spans)
        rid = self.root["id"]
        top, children = children_index(self.spans, [rid])
        if len(top) > 1:
            kids = children.get(rid, []) + [s for s in top if s["id"] != rid]
            kids.sort(key=_start_key)
            children[rid] = kids
            top = [s for s in top if s["id"] == rid]
        return top, children

    def marks_by_span(self) -> dict[str, list[Record]]:
        """Marks grouped under the span they belong to (:func:`mark_span_id`), by ``ts_ns``.
        Without a root, marks of unknown spans go under the ``"root"`` sentinel."""
        ids = {s["id"] for s in self.spans}
        root_id = self.root["id"] if self.root else ROOT_SENTINEL
        out: dict[str, list[Record]] = {}
        for m in self.marks:
            out.setdefault(mark_span_id(m.get("span_id"), ids, root_id), []).append(m)
        for lst in out.values():
            lst.sort(key=lambda m: m.get("ts_ns") if type(m.get("ts_ns")) is int else 0)
        return out


@dataclass
class Reconstruction:
    """What :meth:`Reconstructor.finish` returns."""

    #: Oldest first (by root start, then id).
    sessions: list[Session]
    #: Deduped records by id (the winners), including spans of no session.
    spans: dict[str, Any]
    marks: dict[str, Any]
    snapshots: dict[str, Any]
    #: For each batch added, in order: ``(source, ids of the sessions its records belong to)``
    #: (``None`` in the set: records of no session).
    batch_sessions: list[tuple[Any, set[str | None]]]
    #: Records of writers without session roots: placed by pid/time, or shown as orphans.
    unplaced: Unplaced = field(default_factory=lambda: Unplaced())


class _Batch:
    __slots__ = ("source", "spans", "marks", "snaps", "session_id", "sdk_version", "lock_protocol")

    def __init__(self, source: Any, batch: Mapping[str, Any]) -> None:
        self.source = source
        self.spans = batch["spans"]
        self.marks = batch["marks"]
        self.snaps = batch["snapshots"]
        self.session_id = batch["session_id"]
        self.sdk_version = batch.get("sdk_version")
        self.lock_protocol = batch.get("lock_protocol", True)


class Reconstructor:
    """Accumulates batches, deduping records by id as they come, and rebuilds the sessions.

    Feed batches in write order (oldest first): among equal records the later one wins.
    """

    def __init__(self) -> None:
        self.spans: dict[str, Any] = {}
        self.marks: dict[str, Any] = {}
        self.snapshots: dict[str, Any] = {}
        self._batches: list[_Batch] = []
        self._meta: dict[str, tuple[Record, str | None]] = {}
        self._dup_marks: set[str] = set()
        self._dup_snaps: set[str] = set()
        self._dups: list[Any] = []  # span records that lost the dedupe (their batch still maps to the session)

    def add_batch(self, batch: Mapping[str, Any], source: Any = None) -> None:
        """Add one batch (as :func:`cirron.spool.reader.read_batch` returns it); ``source`` is
        what :attr:`Session.files` lists for it."""
        b = _Batch(source, batch)
        bsid = b.session_id
        if bsid is not None and bsid not in self._meta:
            self._meta[bsid] = (batch["resource"], b.sdk_version)
        spans = self.spans
        setdefault = spans.setdefault
        for s in b.spans:
            old = setdefault(s.id, s)
            if old is not s:
                if span_wins(old.end_ns, s.end_ns):
                    del spans[s.id]  # the winner takes the place where it was written
                    spans[s.id] = s
                    self._dups.append(old)
                else:
                    self._dups.append(s)
        self._add_last_wins(self.marks, b.marks, self._dup_marks)
        self._add_last_wins(self.snapshots, b.snaps, self._dup_snaps)
        self._batches.append(b)

    @staticmethod
    def _add_last_wins(into: dict[str, Any], recs: list[Any], dup_ids: set[str]) -> None:
        n = len(into)
        for r in recs:
            into[r.id] = r
        if len(into) - n != len(recs):  # some ids repeated: remember them for the winner check
            dup_ids.update(r.id for r in recs)

    def _assign(self) -> list[Any]:
        """Set ``rec.session`` on every span (:func:`assign_owners`); returns the roots."""
        spans = self.spans
        roots = [rec for rec in spans.values() if rec.parent_id is None and rec.name == SESSION_SPAN_NAME]
        owner = assign_owners({sid: rec.parent_id for sid, rec in spans.items()}, [r.id for r in roots])
        for sid, rec in spans.items():
            rec.session = owner[sid]
        return roots

    def _place_foreign(self, roots: list[Any]) -> int:
        """Spans of writers without the lock protocol that reach no root (parentless thread and
        request spans, runs whose root was never written): :func:`place_loose`. Returns how
        many spans were placed."""
        spans = self.spans
        loose: dict[str, str | None] = {}
        for b in self._batches:
            if b.lock_protocol:
                continue
            for s in b.spans:
                if s.session is None and spans[s.id] is s:  # the winner of its id
                    loose[s.id] = s.parent_id
        if not loose:
            return 0
        placed = place_loose(loose, lambda k: spans[k].get("pid"), lambda k: spans[k].start_ns, session_windows(roots))
        for sid, target in placed.items():
            spans[sid].session = target
        return len(placed)

    def finish(self) -> Reconstruction:
        spans, marks, snaps = self.spans, self.marks, self.snapshots
        roots = self._assign()
        placed = self._place_foreign(roots)
        sessions: dict[str, Session] = {r.id: Session(id=r.id, root=r) for r in roots}
        all_sessions = dict(sessions)
        orphan_mode = use_orphan_session(len(sessions), len(spans))
        if orphan_mode:
            all_sessions[ORPHAN_SESSION_ID] = Session(id=ORPHAN_SESSION_ID, root=None)
            for s in spans.values():
                s.session = ORPHAN_SESSION_ID
        unplaced = Unplaced(placed_spans=placed)
        # Records of writers without the lock protocol are never dropped: what reaches no
        # session goes to the orphan group, shown even beside real sessions.
        for b in self._batches:
            if b.lock_protocol:
                continue
            for s in b.spans:
                if s.session is None:
                    s.session = ORPHAN_SESSION_ID
                    if spans.get(s.id) is s:
                        unplaced.spans += 1
        if unplaced.spans and ORPHAN_SESSION_ID not in all_sessions:
            all_sessions[ORPHAN_SESSION_ID] = Session(id=ORPHAN_SESSION_ID, root=None, lock_protocol=False)
        for d in self._dups:
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
        batch_sessions: list[tuple[Any, set[str | None]]] = []
        for b in self._batches:
            bspans, bmarks, bsnaps, bsid = b.spans, b.marks, b.snaps, b.session_id
            local = {s.id: s.session for s in bspans}  # small and cache-friendly; most marks hit it
            local_get = local.get
            owners: set[str | None] = set(local.values())
            if b.lock_protocol:
                batch_fallback = fallback
            else:  # no batch session_id: the one session this batch's spans belong to, else the orphan group
                span_owners = owners - {None}
                batch_fallback = next(iter(span_owners)) if len(span_owners) == 1 else ORPHAN_SESSION_ID
            for recs, lists, winners, dup_ids in ((bmarks, mark_lists, marks, self._dup_marks),
                                                  (bsnaps, snap_lists, snaps, self._dup_snaps)):
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
                            bs = r.batch_session
                            o = bs if bs in sessions else batch_fallback
                    if o == ORPHAN_SESSION_ID and o not in all_sessions:
                        all_sessions[o] = Session(id=o, root=None, lock_protocol=False)
                        mark_lists[o] = all_sessions[o].marks
                        snap_lists[o] = all_sessions[o].snapshots
                    r.session = o
                    if o is not None and (not dup_ids or r.id not in dup_ids or winners[r.id] is r):
                        lists[o].append(r)
                        if o == ORPHAN_SESSION_ID and not b.lock_protocol:
                            if recs is bmarks:
                                unplaced.marks += 1
                            else:
                                unplaced.snapshots += 1
                owners.update(map(get_session, recs))
            if not (bspans or bmarks or bsnaps):
                owners.add(bsid if bsid in all_sessions else None)
            batch_sessions.append((b.source, owners))
            for o in owners:
                if o is not None:
                    sess = all_sessions[o]
                    sess.files.append(b.source)
                    if not b.lock_protocol:
                        sess.lock_protocol = False
                    if sess.sdk_version is None and type(b.sdk_version) is str:
                        sess.sdk_version = b.sdk_version

        for sess in all_sessions.values():
            meta = self._meta.get(sess.id)
            if meta is not None:
                sess.resource = dict(meta[0])
                if meta[1] is not None:
                    sess.sdk_version = meta[1]
            if sess.root is not None:
                attrs = sess.root.get("attrs")
                if sess.sdk_version is None and isinstance(attrs, dict) and isinstance(attrs.get("sdk_version"), str):
                    sess.sdk_version = attrs["sdk_version"]
                for k in ("pid", "rank"):
                    if k not in sess.resource and sess.root.get(k) is not None:
                        sess.resource[k] = sess.root[k]

        ordered = sorted(
            all_sessions.values(), key=lambda s: (s.started_ns if s.started_ns is not None else 0, s.id)
        )
        return Reconstruction(ordered, spans, marks, snaps, batch_sessions, unplaced)


@dataclass
class Unplaced:
    """Records of writers without session roots: how many were placed by pid and time window,
    and how many could not be and went to the ``(orphan spans)`` group (shown, never dropped)."""

    placed_spans: int = 0
    spans: int = 0
    marks: int = 0
    snapshots: int = 0

    def warning(self) -> str | None:
        if not (self.spans or self.marks or self.snapshots):
            return None
        return (f"{self.spans} span(s), {self.marks} mark(s) and {self.snapshots} snapshot(s) from writers without "
                f"session roots could not be placed in a session; they are shown as {ORPHAN_SESSION_ID}")


def session_windows(roots: Iterable[Any]) -> dict[Any, list[tuple[int, float, str]]]:
    """Per pid, the ``(start, end, session id)`` windows of the session roots (an open root's
    window has no end), latest start first."""
    out: dict[Any, list[tuple[int, float, str]]] = {}
    for r in roots:
        pid = r.get("pid")
        if pid is None and isinstance(r.get("attrs"), dict):
            pid = r["attrs"].get("pid")
        start, end = r.get("start_ns"), r.get("end_ns")
        if type(start) is not int:
            continue
        out.setdefault(pid, []).append((start, end if type(end) is int else float("inf"), r["id"]))
    for lst in out.values():
        lst.sort(reverse=True)
    return out


def place_loose(
    loose: Mapping[K, K | None], pid_of: Callable[[K], Any], start_of: Callable[[K], Any],
    windows: Mapping[Any, list[tuple[int, float, str]]],
) -> dict[K, str]:
    """Place spans that reach no session root: each chain of ``loose`` spans (id → parent id)
    goes, whole, to the session of its top span's pid whose window holds the top's start
    (:func:`place_by_window`). Returns ``{id: session id}`` for the spans placed."""
    parents = {k: (p if p in loose else None) for k, p in loose.items()}
    tops = [k for k, p in parents.items() if p is None]
    top_of = assign_owners(parents, tops)
    target = {t: place_by_window(windows, pid_of(t), start_of(t)) for t in tops}
    out: dict[K, str] = {}
    for k, top in top_of.items():
        sid = target.get(top) if top is not None else None
        if sid is not None:
            out[k] = sid
    return out


def place_by_window(windows: Mapping[Any, list[tuple[int, float, str]]], pid: Any, start_ns: Any) -> str | None:
    """The session of process ``pid`` whose window holds ``start_ns`` (the latest one to start),
    or ``None``."""
    if pid is None or type(start_ns) is not int:
        return None
    for start, end, sid in windows.get(pid, ()):
        if start <= start_ns <= end:
            return sid
    return None


def reconstruct(batches: Iterable[Mapping[str, Any] | tuple[Mapping[str, Any], Any]]) -> Reconstruction:
    """Dedupe and rebuild the sessions of ``batches`` (oldest first; each a batch or a
    ``(batch, source)`` pair). For a streaming reader: pass the batches of one session."""
    r = Reconstructor()
    with paused_gc():
        for b in batches:
            if isinstance(b, tuple):
                r.add_batch(b[0], b[1])
            else:
                r.add_batch(b)
        return r.finish()


class paused_gc:
    """Turn the cyclic GC off while millions of small records are built (it would rescan them
    over and over); restores the previous state."""

    def __enter__(self) -> None:
        self._was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was:
            gc.enable()
