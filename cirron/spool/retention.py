"""Which sessions ``cirron traces clear`` may delete: the one place the rule is written.

* a **live** session (its writer holds the liveness lock) is never deleted;
* an **unfinished** session (:attr:`~cirron.spool.reconstruct.Session.unfinished`: no closed
  root, and its writer has no lock protocol, so nothing shows whether it is still writing) is
  treated as the seed treats a live session: plain ``clear`` and ``--keep`` keep it, ``--before``
  deletes it only when it started before the cutoff;
* a **crashed** session (open root, lock released) is kept by ``--keep`` and deleted by plain
  ``clear`` and by ``--before``;
* ``--keep N`` keeps the N newest ended sessions; ``--before`` keeps what started at or after
  the cutoff (or has no start time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from cirron.safetensors_io import SafetensorsError, read_header
from cirron.spool import paths

if TYPE_CHECKING:
    from cirron.spool.sessions import Session

__all__ = ["ClearPlan", "ClearSource", "DeleteGroup", "SpoolClearPlan", "plan_clear", "plan_spool_clear",
           "snapshot_dir_sessions"]

T = TypeVar("T")


@dataclass
class ClearPlan(Generic[T]):
    #: Entries to delete, in the order given (oldest first).
    eligible: list[T] = field(default_factory=list)
    #: Live sessions (kept whatever the options).
    live: list[T] = field(default_factory=list)
    #: Unfinished sessions kept because they may still be writing.
    unfinished: list[T] = field(default_factory=list)


def _identity(x: Any) -> Any:
    return x


def plan_clear(entries: Sequence[T], cutoff_ns: int | None = None, keep: int | None = None,
               session: Callable[[T], Any] = _identity) -> ClearPlan[T]:
    """What ``clear`` deletes among ``entries`` (oldest first), and what it protects.

    ``session(entry)`` gives the session of an entry (anything with ``live``, ``crashed``,
    ``unfinished`` and ``started_ns``; e.g. ``(spool_dir, session)`` pairs with
    ``session=lambda e: e[1]``).
    """
    plan: ClearPlan[T] = ClearPlan(live=[e for e in entries if session(e).live])
    candidates = [e for e in entries if not session(e).live]
    if cutoff_ns is None:
        eligible = [e for e in candidates if not session(e).unfinished]
    else:
        eligible = [e for e in candidates
                    if session(e).started_ns is not None and session(e).started_ns < cutoff_ns]
    plan.unfinished = [e for e in candidates if session(e).unfinished and not any(e is x for x in eligible)]
    if keep is not None:
        finished = [e for e in reversed(candidates) if not session(e).crashed and not session(e).unfinished]
        kept = {id(e) for e in finished[:keep]} | {id(e) for e in candidates
                                                   if session(e).crashed or session(e).unfinished}
        plan.unfinished = [e for e in candidates if session(e).unfinished]
        eligible = [e for e in eligible if id(e) not in kept]
    plan.eligible = eligible
    return plan


#: Paths deleted together, all below one ``.cirron/`` directory (the first item):
#: ``(cirron_root, files, snapshot_dirs)``.
DeleteGroup = tuple[Path, list[Path], list[Path]]


@dataclass
class SpoolClearPlan:
    """Everything ``clear`` would do across the chosen spools, before anything is deleted."""

    #: Sessions to delete, oldest first.
    eligible: list[Session] = field(default_factory=list)
    #: Live sessions, never touched.
    live: list[Session] = field(default_factory=list)
    #: Unfinished sessions kept because they may still be writing.
    unfinished: list[Session] = field(default_factory=list)
    #: One group per eligible session: its batch files (only those holding no other session's
    #: records), its liveness lock and its snapshot dirs.
    groups: list[DeleteGroup] = field(default_factory=list)
    #: Snapshot dirs no surviving session references, as ``(cirron_root, dir)``.
    orphan_dirs: list[tuple[Path, Path]] = field(default_factory=list)
    #: Bytes of the batch files to delete.
    n_bytes: int = 0
    #: Snapshot dirs to delete (orphans included).
    n_dirs: int = 0
    #: Spans of the eligible sessions.
    n_spans: int = 0


class ClearSource(Protocol):
    """What planning a clear needs of one spool: a loaded :class:`~cirron.spool.sessions.Spool`,
    or the index's summaries (:meth:`cirron.spool.catalog.Catalog.clear_source`), which read no
    batch file unless snapshot dirs must be matched to their sessions."""

    @property
    def sessions(self) -> Sequence[Any]: ...  # Session or SessionInfo

    @property
    def file_sessions(self) -> dict[Path, set[str | None]]: ...

    def snapshot_refs(self, names: set[str]) -> dict[str, set[str | None]]:
        """For each of ``names`` that a span id or a snapshot's span id is equal to, the sessions
        holding those records (None: spans of no session)."""
        ...


def plan_spool_clear(spools: Sequence[tuple[Path, ClearSource]], cutoff_ns: int | None = None,
                     keep: int | None = None, prune_orphans: bool = True) -> SpoolClearPlan:
    """What ``clear`` deletes in ``spools`` (``(spool_dir, source)`` pairs): the sessions
    :func:`plan_clear` allows, and the files and snapshot dirs that belong to them alone."""
    everything = sorted(((d, s) for d, sp in spools for s in sp.sessions),
                        key=lambda ds: (ds[1].started_ns if ds[1].started_ns is not None else 0, ds[1].id))
    rule = plan_clear(everything, cutoff_ns, keep, session=lambda ds: ds[1])
    plan = SpoolClearPlan(eligible=[s for _d, s in rule.eligible], live=[s for _d, s in rule.live],
                          unfinished=[s for _d, s in rule.unfinished])
    for spool_dir, sp in spools:
        _plan_one_spool(plan, sp, spool_dir, [s for d, s in rule.eligible if d == spool_dir], prune_orphans)
    return plan


def _span_count(s: Any) -> int:
    return s.spans if type(s.spans) is int else len(s.spans)


def _snapshot_dir_names(snap_root: Path) -> set[str]:
    """Names of the real directories under ``snapshots/`` (hidden ones aside)."""
    try:
        entries = list(snap_root.iterdir())
    except OSError:
        return set()
    return {d.name for d in entries if not d.name.startswith(".") and d.is_dir() and not d.is_symlink()}


def _plan_one_spool(plan: SpoolClearPlan, sp: ClearSource, spool_dir: Path, eligible: list[Any],
                    prune_orphans: bool) -> None:
    """Adds to ``plan`` what deleting ``eligible`` (sessions of the one spool ``sp``) removes there."""
    base = paths.cirron_root(spool_dir)
    doomed = {s.id for s in eligible}
    snap_root = paths.snapshots_dir(spool_dir)
    names = _snapshot_dir_names(snap_root)
    refs = sp.snapshot_refs(names) if names else {}
    claimed: set[Path] = set()
    doomed_dirs: set[Path] = set()
    for s in eligible:
        # A batch file goes only when every session it holds records of is being deleted.
        files: list[Path] = []
        for bf in s.files:
            owners = sp.file_sessions.get(bf.path, set()) - {None}
            if owners <= doomed and bf.path not in claimed:
                claimed.add(bf.path)
                files.append(bf.path)
                plan.n_bytes += bf.size
        dirs = [snap_root / n for n in sorted(names) if s.id in refs.get(n, ()) and paths.is_safe_id(n)]
        if paths.is_safe_id(s.id):
            lock = paths.live_lock_path(spool_dir, s.id)
            if lock.is_file() and not lock.is_symlink():
                files.append(lock)
        doomed_dirs.update(dirs)
        plan.n_dirs += len(dirs)
        plan.n_spans += _span_count(s)
        plan.groups.append((base, files, dirs))
    if not prune_orphans or not names:
        return

    kept_sessions = {s.id for s in sp.sessions if s.id not in doomed}  # live ones included
    # Records of a kept session, or spans of no session, still reference their dirs.
    referenced = {n for n, owners in refs.items() if any(o is None or o not in doomed for o in owners)}
    for name in sorted(names):
        d = snap_root / name
        if d in doomed_dirs or name in referenced:
            continue
        if snapshot_dir_sessions(d) & kept_sessions:
            continue
        plan.orphan_dirs.append((base, d))
        plan.n_dirs += 1


def snapshot_dir_sessions(d: Path) -> set[str]:
    """``session_id`` values in the metadata of the safetensors files in the snapshot dir ``d``
    (best effort: unreadable or invalid files and symlinks are skipped)."""
    out: set[str] = set()
    try:
        entries = list(d.iterdir())
    except OSError:
        return out
    for f in entries:
        if f.suffix != ".safetensors" or f.is_symlink() or not f.is_file():
            continue
        try:
            sid = read_header(f, follow_symlinks=False).metadata.get("session_id")
        except SafetensorsError:
            continue
        if sid:
            out.add(sid)
    return out
