"""The read API over one or many spools: cheap session summaries, then one session at a time.

::

    from cirron.spool import open_catalog
    cat = open_catalog(["runs/*/.cirron/spool"])      # globs and several spools
    for info in cat.sessions:                         # SessionInfo: counts, times, status, rank, run id
        print(info.id, info.status, info.spans, info.rank)
    for run in cat.runs():                            # sessions sharing a run id, by rank
        print(run.id, [s.rank for s in run.sessions])
    session = cat.load(cat.sessions[-1])              # one session fully rebuilt (cirron.spool.sessions)
    for span in cat.iter_spans(cat.sessions[-1], start_ns=t0, end_ns=t1):
        ...

Summaries come from the per-spool index (:mod:`cirron.spool.index`), so listing sessions never
holds more than one session's records. :meth:`Catalog.load` and :meth:`Catalog.iter_load` rebuild
sessions from the batch files that hold their records, one session at a time: a command that
walks every session holds at most the biggest one in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirron.spool import paths
from cirron.spool.reader import BatchFile, WarningCallback, default_warning
from cirron.spool.reconstruct import is_unfinished, session_status, writer_name
from cirron.spool.sessions import Session, load_spool

__all__ = ["Catalog", "Run", "SessionInfo", "open_catalog"]

#: Root-span attributes that describe a rank of a multi-process run (set by ``ci.profile()``).
RUN_ATTRS = ("run_id", "rank", "world_size", "local_rank")


@dataclass(frozen=True)
class SessionInfo:
    """What the index knows about one session without reading its records."""

    id: str
    spool: Path
    started_ns: int | None
    ended_ns: int | None
    last_ns: int | None
    live: bool
    crashed: bool
    spans: int
    marks: int
    snapshots: int
    files: tuple[BatchFile, ...]
    sdk_version: str | None = None
    resource: dict[str, Any] = field(default_factory=dict)
    #: The root span's attributes (``run_id``, ``rank``, ``world_size``, ``host``...).
    attrs: dict[str, Any] = field(default_factory=dict)
    is_orphan: bool = False
    #: Its batch files hold its records and nothing else, so it can be read file by file
    #: (:mod:`cirron.spool.stream`) instead of being rebuilt whole.
    streamable: bool = False
    #: Every batch came from a writer with the liveness-lock protocol (:attr:`Session.lock_protocol`).
    lock_protocol: bool = True

    @property
    def writer(self) -> str:
        return writer_name(self.lock_protocol)

    @property
    def unfinished(self) -> bool:
        return is_unfinished(self.lock_protocol, not self.is_orphan, self.ended_ns)

    @property
    def status(self) -> str:
        """``"ended"``, ``"live"``, ``"crashed"`` or ``"unfinished"``."""
        return session_status(self.live, self.crashed, self.unfinished)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def _run_attr(self, key: str) -> Any:
        v = self.attrs.get(key)
        return self.resource.get(key) if v is None else v

    @property
    def run_id(self) -> str | None:
        v = self._run_attr("run_id")
        return v if isinstance(v, str) and v else None

    @property
    def rank(self) -> int | None:
        v = self._run_attr("rank")
        return v if type(v) is int else None

    @property
    def world_size(self) -> int | None:
        v = self._run_attr("world_size")
        return v if type(v) is int else None

    @property
    def local_rank(self) -> int | None:
        v = self._run_attr("local_rank")
        return v if type(v) is int else None

    @property
    def host(self) -> str | None:
        v = self._run_attr("host")
        return v if isinstance(v, str) else None


@dataclass(frozen=True)
class Run:
    """Sessions that share a run id (the ranks of one multi-process job), ordered by rank."""

    id: str
    sessions: tuple[SessionInfo, ...]

    @property
    def ranks(self) -> list[int | None]:
        return [s.rank for s in self.sessions]

    @property
    def started_ns(self) -> int | None:
        starts = [s.started_ns for s in self.sessions if s.started_ns is not None]
        return min(starts) if starts else None


def info_from_session(sess: Session, spool_dir: Path) -> SessionInfo:
    """The summary of a rebuilt session (what the index stores)."""
    root_attrs = sess.root.get("attrs") if sess.root is not None else None
    return SessionInfo(
        id=sess.id, spool=spool_dir, started_ns=sess.started_ns, ended_ns=sess.ended_ns, last_ns=sess.last_ns,
        live=sess.live, crashed=sess.crashed, spans=len(sess.spans), marks=len(sess.marks),
        snapshots=len(sess.snapshots), files=tuple(sess.files), sdk_version=sess.sdk_version,
        resource=dict(sess.resource), attrs=dict(root_attrs) if isinstance(root_attrs, dict) else {},
        is_orphan=sess.is_orphan, lock_protocol=sess.lock_protocol,
    )


class Catalog:
    """Sessions of several spool directories, summarised cheaply and loaded one at a time."""

    def __init__(self, spools: Sequence[str | os.PathLike[str]], on_warning: WarningCallback | None = None,
                 *, use_index: bool = True) -> None:
        self.spools: list[Path] = [Path(s) for s in spools]
        self.on_warning: WarningCallback = on_warning or default_warning
        self.use_index = use_index
        self._sessions: list[SessionInfo] | None = None
        self._file_sessions: dict[Path, set[str | None]] = {}
        #: Spools whose sessions can only be rebuilt from all of their files (see cirron.spool.index).
        self._whole: set[Path] = set()

    # ------------------------------------------------------------------ summaries
    @property
    def sessions(self) -> list[SessionInfo]:
        """Every session of every spool, oldest first."""
        if self._sessions is None:
            from cirron.spool.index import summarize_spool

            out: list[SessionInfo] = []
            for d in self.spools:
                summary = summarize_spool(d, self.on_warning, use_index=self.use_index)
                out.extend(summary.sessions)
                self._file_sessions.update(summary.file_sessions)
                if summary.whole:
                    self._whole.add(d)
            out.sort(key=lambda s: (s.started_ns if s.started_ns is not None else 0, s.id))
            self._sessions = out
        return self._sessions

    @property
    def file_sessions(self) -> dict[Path, set[str | None]]:
        """For each readable batch file, the sessions its records belong to (None: no session)."""
        self.sessions  # noqa: B018  (fills the map)
        return self._file_sessions

    def clear_source(self, spool_dir: Path) -> Any:
        """What :func:`cirron.spool.retention.plan_spool_clear` needs of ``spool_dir`` (one of
        :attr:`spools`), from the index: batch files are read only to match snapshot dirs."""
        self.sessions  # noqa: B018  (fills the maps)
        return _IndexedClearSource(self, spool_dir)

    def find(self, prefix: str) -> list[SessionInfo]:
        """Sessions whose id starts with ``prefix``, oldest first."""
        return [s for s in self.sessions if s.id.startswith(prefix)]

    def runs(self) -> list[Run]:
        """Sessions grouped by run id (sessions without one are left out), oldest run first."""
        groups: dict[str, list[SessionInfo]] = {}
        for s in self.sessions:
            if s.run_id is not None:
                groups.setdefault(s.run_id, []).append(s)
        runs = [Run(rid, tuple(sorted(ss, key=_rank_key))) for rid, ss in groups.items()]
        runs.sort(key=lambda r: (r.started_ns if r.started_ns is not None else 0, r.id))
        return runs

    def find_run(self, prefix: str) -> list[Run]:
        """Runs whose id starts with ``prefix`` (an exact id wins over longer ones)."""
        runs = [r for r in self.runs() if r.id.startswith(prefix)]
        exact = [r for r in runs if r.id == prefix]
        return exact or runs

    # ------------------------------------------------------------------ records
    def load(self, info: SessionInfo, fields: str = "full") -> Session:
        """``info``'s session rebuilt from the batch files holding its records."""
        self.sessions  # noqa: B018  (the summary says how the spool must be read)
        files = None if info.spool in self._whole else info.files
        sp = load_spool(info.spool, lambda _m: None, fields=fields, files=files)
        for sess in sp.sessions:
            if sess.id == info.id:
                return sess
        # The files changed since the summary was taken (a concurrent clear): an empty session.
        return Session(id=info.id, root=None)

    def iter_load(self, infos: Iterable[SessionInfo], fields: str = "full") -> Iterator[Session]:
        """Each session rebuilt in turn; only one is held at a time (unless the caller keeps them)."""
        for info in infos:
            yield self.load(info, fields)

    def streamable(self, info: SessionInfo) -> bool:
        """Whether ``info``'s session can be read from its batch files one at a time
        (:attr:`SessionInfo.streamable` in a spool the index could split by session)."""
        self.sessions  # noqa: B018  (the summary says how the spool must be read)
        return info.streamable and info.spool not in self._whole

    def iter_snapshots(self, infos: Iterable[SessionInfo]) -> Iterator[tuple[SessionInfo, Any]]:
        """The snapshot records of each session (deduped by id, last write wins), reading its batch
        files one at a time; only sessions the index counts snapshots in are worth passing."""
        from cirron.spool.reader import read_batch

        for info in infos:
            if not self.streamable(info):
                yield from ((info, r) for r in self.load(info).snapshots)
                continue
            kept: dict[str, Any] = {}
            for bf in info.files:
                batch = read_batch(bf, lambda _m: None, "full")
                if batch is not None:
                    for r in batch["snapshots"]:
                        kept.pop(r.id, None)  # a rewrite moves to where it was last written
                        kept[r.id] = r
            yield from ((info, r) for r in kept.values())

    def spool_snapshots(self, spool_dir: Path) -> list[tuple[SessionInfo | None, Any]]:
        """Every snapshot record of one spool with its session (None: a batch of no session),
        from the sessions the index counts snapshots in; a spool with records of no session is
        read whole."""
        infos = [s for s in self.sessions if s.spool == spool_dir]
        loose = any(None in owners for p, owners in self.file_sessions.items() if p.parent == spool_dir)
        if spool_dir in self._whole or loose:
            sp = load_spool(spool_dir, lambda _m: None)
            by_id = {s.id: s for s in infos}
            return [(by_id.get(sess.id), r) for sess in sp.sessions for r in sess.snapshots] + [
                (None, r) for r in sp.snapshots.values() if r.get("session") is None]
        return list(self.iter_snapshots(i for i in infos if i.snapshots))

    def find_spans(self, info: SessionInfo, span_ids: set[str]) -> dict[str, Any]:
        """The records of the spans ``span_ids`` in ``info``'s session (the dedupe's winners; ids
        it does not hold are left out), reading its batch files one at a time."""
        from cirron.spool.reader import read_batch
        from cirron.spool.reconstruct import span_wins

        if not span_ids:
            return {}
        if not self.streamable(info):
            return {s["id"]: s for s in self.load(info).spans if s["id"] in span_ids}
        found: dict[str, Any] = {}
        for bf in info.files:
            batch = read_batch(bf, lambda _m: None, "full")
            for s in batch["spans"] if batch is not None else ():
                if s.id in span_ids:
                    old = found.get(s.id)
                    if old is None or span_wins(old.end_ns, s.end_ns):
                        found[s.id] = s
        return found

    def iter_spans(self, info: SessionInfo, start_ns: int | None = None, end_ns: int | None = None,
                   fields: str = "full") -> Iterator[Any]:
        """Spans of one session (deduped) that overlap ``[start_ns, end_ns]``, by start time.

        An open span (no ``end_ns``) is taken to last until the session's last known time.
        """
        sess = self.load(info, fields)
        horizon = info.last_ns
        out = []
        for sp in sess.spans:
            s, e = sp.get("start_ns"), sp.get("end_ns")
            if type(s) is not int:
                continue
            e = e if type(e) is int else (horizon if horizon is not None else s)
            if start_ns is not None and e < start_ns:
                continue
            if end_ns is not None and s > end_ns:
                continue
            out.append(sp)
        out.sort(key=lambda sp: (sp.get("start_ns"), sp.get("id")))
        return iter(out)


class _IndexedClearSource:
    """One spool's sessions as the index summarises them, for planning a clear
    (:class:`cirron.spool.retention.ClearSource`)."""

    def __init__(self, cat: Catalog, spool_dir: Path) -> None:
        self._cat = cat
        self.dir = spool_dir
        self.sessions = [s for s in cat.sessions if s.spool == spool_dir]
        self.file_sessions = cat.file_sessions

    def snapshot_refs(self, names: set[str]) -> dict[str, set[str | None]]:
        """Read the spool's batch files one at a time (summary fields) for the records named by
        ``names``; a spool whose files hold records of several sessions is rebuilt whole instead."""
        from cirron.spool.reader import read_batch

        files = sorted({bf.path: bf for s in self.sessions for bf in s.files}.values(),
                       key=lambda b: (b.created_ns, b.batch_id))
        whole = self.dir in self._cat._whole or any(
            len(self.file_sessions.get(bf.path, set()) - {None}) > 1 for bf in files)
        if whole or any(s.is_orphan for s in self.sessions):
            return load_spool(self.dir, lambda _m: None, fields="summary").snapshot_refs(names)
        out: dict[str, set[str | None]] = {}
        quiet = lambda _m: None  # noqa: E731 - the summary already reported every file
        for bf in files:
            batch = read_batch(bf, quiet, "summary")
            if batch is None:
                continue
            owner = next(iter(self.file_sessions.get(bf.path, set()) - {None}), None)
            if owner is None:
                continue
            hits = [sp.id for sp in batch["spans"] if sp.id in names]
            hits += [x.span_id for x in batch["snapshots"] if x.span_id in names]
            for h in hits:
                out.setdefault(h, set()).add(owner)
        return out


def _rank_key(s: SessionInfo) -> tuple[int, int, str]:
    return (0 if s.rank is not None else 1, s.rank if s.rank is not None else 0, s.id)


def open_catalog(patterns: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] = (str(paths.DEFAULT_SPOOL_DIR),),
                 on_warning: WarningCallback | None = None, *, use_index: bool = True) -> Catalog:
    """A :class:`Catalog` of every spool directory the patterns name (globs expanded)."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    return Catalog(paths.resolve_spools(patterns, on_warning), on_warning, use_index=use_index)
