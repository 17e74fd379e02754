"""Load a spool directory: batch files → :mod:`cirron.spool.reconstruct` → sessions.

:func:`load_spool` streams the batch files (:mod:`cirron.spool.reader`), hands them to the one
session-reconstruction module (:class:`cirron.spool.reconstruct.Reconstructor`: dedupe,
grouping, trees), remembers which batch files hold which session's records (what ``clear``
deletes and what ``list`` sizes) and checks liveness: a session whose root has no ``end_ns`` is
*live* while its writer holds the liveness lock (:func:`cirron.spool.paths.is_session_live`) and
*crashed* otherwise. A session of a writer without the lock protocol whose root is missing or open
is *unfinished*: it may still be writing (:attr:`Session.unfinished`).

The reconstruction names are re-exported here for existing imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirron.spool import paths
from cirron.spool.reader import BatchFile, WarningCallback, default_warning, list_batch_files, read_batch
from cirron.spool.reconstruct import (
    ORPHAN_SESSION_ID,
    Reconstructor,
    Session,
    assign_sessions,
    children_index,
    is_session_root,
    merge_span,
    paused_gc,
    walk_tree,
)

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


@dataclass
class Spool:
    """Everything read from one spool directory, deduped and grouped."""

    dir: Path
    files: list[BatchFile]
    spans: dict[str, dict[str, Any]]
    marks: dict[str, dict[str, Any]]
    snapshots: dict[str, dict[str, Any]]
    sessions: list[Session]  # oldest first
    #: For each readable batch file, the sessions its records belong to (None: no session).
    file_sessions: dict[Path, set[str | None]]
    #: Batch files that could not be read (skipped with a warning).
    unreadable: list[BatchFile] = field(default_factory=list)

    def find(self, prefix: str) -> list[Session]:
        """Sessions whose id starts with ``prefix``."""
        return [s for s in self.sessions if s.id.startswith(prefix)]

    def snapshot_refs(self, names: set[str]) -> dict[str, set[str | None]]:
        """For each of ``names`` equal to a span id or a snapshot's span id, the sessions holding
        those records (None: spans of no session); see :class:`cirron.spool.retention.ClearSource`."""
        out: dict[str, set[str | None]] = {}
        attached: set[str] = set()
        for sess in self.sessions:
            for sp in sess.spans:
                attached.add(sp["id"])
                if sp["id"] in names:
                    out.setdefault(sp["id"], set()).add(sess.id)
            for snap in sess.snapshots:
                sid = snap.get("span_id")
                if sid in names:
                    out.setdefault(sid, set()).add(sess.id)
        for sid in names.intersection(self.spans).difference(attached):
            out.setdefault(sid, set()).add(None)
        return out

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
    builder = Reconstructor()
    ok_files: list[BatchFile] = []
    unreadable: list[BatchFile] = []
    with paused_gc():
        for bf in files:
            batch = read_batch(bf, on_warning, fields)
            if on_file is not None:
                on_file(bf)
            if batch is None:
                unreadable.append(bf)
                continue
            ok_files.append(bf)
            builder.add_batch(batch, bf)
        rec = builder.finish()
    for sess in rec.sessions:
        if sess.open and sess.lock_protocol:
            sess.live = paths.is_session_live(spool_dir, sess.id)
            sess.crashed = not sess.live
    message = rec.unplaced.warning()
    if message is not None:
        (on_warning or default_warning)(message)
    return Spool(
        dir=spool_dir,
        files=ok_files,
        spans=rec.spans,
        marks=rec.marks,
        snapshots=rec.snapshots,
        sessions=rec.sessions,
        file_sessions={bf.path: owners for bf, owners in rec.batch_sessions},
        unreadable=unreadable,
    )


def load_sessions(spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None) -> list[Session]:
    """The sessions of ``spool_dir``, oldest first (see :func:`load_spool`)."""
    return load_spool(spool_dir, on_warning).sessions
