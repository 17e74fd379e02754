"""The spool index: per-batch and per-session summaries kept beside the batch files.

``.cirron/spool/.index.msgpack`` remembers, for every batch file (keyed by name, size, mtime and
inode), the ``session_id`` of its header and the warnings reading it gave; and for every group of
batch files sharing a header ``session_id``, the summaries of the sessions rebuilt from them
(:class:`~cirron.spool.catalog.SessionInfo` fields) and which sessions each file holds records of.
A group's entry is valid only for the exact files it was built from, so a new, removed, truncated
or rewritten batch file makes just its group be rebuilt. The batch files stay the only source of
truth: a missing, stale, unreadable or corrupt index is rebuilt from them, a reader that cannot
write the index still answers (it just rebuilds each time), and the index is replaced in one
rename, so a crash mid-update leaves the previous index or none.

Grouping by header is exact when every group is *self-contained*: its spans reach a root inside
the group, its marks and snapshots hang from its own spans (or from the ``"root"`` sentinel), and
no session shows up in two groups. That is what cirron's writer produces. When a spool breaks
the rule (a foreign writer, spans whose parent lives in another session's batches, no session
root at all), the whole spool is rebuilt in one piece instead, as :func:`load_spool` does, and
that answer is cached the same way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cirron._atomic import atomic_file
from cirron._safeopen import open_regular
from cirron._schema import ROOT_SENTINEL
from cirron.spool import paths
from cirron.spool.reader import BatchFile, WarningCallback, list_batch_files
from cirron.spool.sessions import load_spool

__all__ = ["INDEX_NAME", "INDEX_VERSION", "SpoolSummary", "index_path", "summarize_spool"]

INDEX_NAME = ".index.msgpack"
#: Bumped whenever the stored shape or the grouping rules change: an index of another version is rebuilt.
INDEX_VERSION = 3
#: Key of the group holding batch files whose header names no session.
_NO_SESSION = ""
#: Key of the one group used when the spool is not made of self-contained groups.
_WHOLE = "*"


def index_path(spool_dir: str | os.PathLike[str]) -> Path:
    return Path(spool_dir) / INDEX_NAME


class _FileEntry(msgspec.Struct, array_like=True):
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    session_id: str | None
    readable: bool


class _SessionEntry(msgspec.Struct):
    id: str
    started_ns: int | None
    ended_ns: int | None
    last_ns: int | None
    open: bool
    spans: int
    marks: int
    snapshots: int
    files: list[str]
    sdk_version: str | None
    resource: dict[str, Any]
    attrs: dict[str, Any]
    is_orphan: bool
    lock_protocol: bool = True


class _GroupEntry(msgspec.Struct):
    #: (name, size, mtime_ns, ctime_ns, inode) of every file the entry was built from, sorted.
    fingerprint: list[tuple[str, int, int, int, int]]
    self_contained: bool
    sessions: list[_SessionEntry]
    #: File name → sessions its records belong to ("" for records of no session).
    owners: dict[str, list[str]]
    #: File name → the warnings reading it gave (replayed on every use, as a fresh read would);
    #: under "" the ones about the whole group (records that could not be placed in a session).
    warnings: dict[str, list[str]]


class _Index(msgspec.Struct):
    version: int
    files: dict[str, _FileEntry]
    groups: dict[str, _GroupEntry]


class _Header(msgspec.Struct):
    session_id: Any = None


_HEADER = msgspec.json.Decoder(_Header)
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Index)


@dataclass
class SpoolSummary:
    """What :func:`summarize_spool` returns for one spool directory."""

    dir: Path
    #: Oldest first.
    sessions: list[Any]  # list[SessionInfo]
    #: For each readable batch file, the sessions its records belong to (None: no session).
    file_sessions: dict[Path, set[str | None]]
    #: The batch files listed for this answer (readable or not).
    files: list[BatchFile] = field(default_factory=list)
    #: Whether the answer came without reading any batch file.
    from_index: bool = False
    #: Whether the spool had to be rebuilt in one piece (its sessions are then loaded the same way).
    whole: bool = False


_StatKey = tuple[int, int, int, int]


def _stat_key(bf: BatchFile) -> _StatKey:
    """What identifies one version of a file: size, mtime, ctime (changed by any write, and not
    settable, so an in-place rewrite that restores the mtime still shows) and inode."""
    try:
        st = os.stat(bf.path, follow_symlinks=False)
    except OSError:
        return (bf.size, 0, 0, 0)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _load_index(spool_dir: Path) -> _Index | None:
    try:
        data = index_path(spool_dir).read_bytes()
        idx = _DECODER.decode(data)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
        return None
    return idx if idx.version == INDEX_VERSION else None


def _save_index(spool_dir: Path, idx: _Index) -> None:
    """Replace the index in one rename; a spool the reader cannot write just goes unindexed."""
    if not spool_dir.is_dir():
        return
    with contextlib.suppress(OSError):
        with atomic_file(index_path(spool_dir)) as tmp:
            tmp.write_bytes(_ENCODER.encode(idx))


def _read_header(bf: BatchFile) -> tuple[str | None, bool]:
    """``(session_id, parsed)`` of a batch file's header; ``parsed`` is False when the file is not
    a readable JSON object (the full read then reports why)."""
    try:
        with open_regular(bf.path, follow_symlinks=False) as fh:
            data = fh.read()
        hdr = _HEADER.decode(data)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, False
    sid = hdr.session_id
    return (sid if isinstance(sid, str) and sid else None), True


def _fingerprint(files: Iterable[tuple[BatchFile, _StatKey]]) -> list[tuple[str, int, int, int, int]]:
    return sorted((bf.name, *key) for bf, key in files)


def _build_group(spool_dir: Path, files: list[BatchFile], fingerprint: list[Any]) -> _GroupEntry:
    """Rebuild the sessions of ``files`` (one reconstruction, summary fields) and check whether
    they stand on their own."""
    warnings: dict[str, list[str]] = {}
    current: list[str] = []

    def collect(message: str) -> None:
        current.append(message)

    def on_file(bf: BatchFile) -> None:
        if current:
            warnings[bf.name] = list(current)
            current.clear()

    sp = load_spool(spool_dir, collect, fields="summary", files=files, on_file=on_file)
    if current:
        warnings[""] = list(current)
    contained = all(s.session is not None for s in sp.spans.values()) and not any(
        s.is_orphan for s in sp.sessions)
    if contained:
        for recs in (sp.marks.values(), sp.snapshots.values()):
            for r in recs:
                sid = r.span_id
                if sid is not None and sid != ROOT_SENTINEL and sid not in sp.spans:
                    contained = False
                    break
    sessions = []
    for s in sp.sessions:
        attrs = s.root.get("attrs") if s.root is not None else None
        sessions.append(_SessionEntry(
            id=s.id, started_ns=s.started_ns, ended_ns=s.ended_ns, last_ns=s.last_ns, open=s.open,
            spans=len(s.spans), marks=len(s.marks), snapshots=len(s.snapshots), files=[f.name for f in s.files],
            sdk_version=s.sdk_version, resource=_plain(s.resource),
            attrs=_plain(attrs if isinstance(attrs, dict) else {}),
            is_orphan=s.is_orphan, lock_protocol=s.lock_protocol,
        ))
    owners = {p.name: sorted("" if o is None else o for o in os_) for p, os_ in sp.file_sessions.items()}
    return _GroupEntry(fingerprint, contained, sessions, owners, warnings)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as msgpack can store it (anything odd becomes its JSON text)."""
    try:
        _ENCODER.encode(d)
        return d
    except (TypeError, ValueError, OverflowError):
        from cirron.spool.reader import safe_dumps

        return msgspec.json.decode(safe_dumps(d))


def summarize_spool(spool_dir: str | os.PathLike[str], on_warning: WarningCallback, *,
                    use_index: bool = True) -> SpoolSummary:
    """Session summaries of one spool, from the index where it is still valid (see module doc)."""
    from cirron.spool.catalog import SessionInfo

    spool_dir = Path(spool_dir)
    files = list_batch_files(spool_dir, on_warning)
    old = _load_index(spool_dir) if use_index else None
    old_files = old.files if old is not None else {}
    old_groups = old.groups if old is not None else {}
    new_files: dict[str, _FileEntry] = {}
    by_group: dict[str, list[tuple[BatchFile, _StatKey]]] = {}
    read_any = False
    for bf in files:
        key = _stat_key(bf)
        entry = old_files.get(bf.name)
        if entry is None or (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino) != key:
            sid, ok = _read_header(bf)
            read_any = True
            entry = _FileEntry(*key, sid, ok)
        new_files[bf.name] = entry
        by_group.setdefault(entry.session_id or _NO_SESSION, []).append((bf, key))

    groups: dict[str, _GroupEntry] = {}
    whole_fp = _fingerprint((bf, k) for members in by_group.values() for bf, k in members)
    cached_whole = old_groups.get(_WHOLE)
    if cached_whole is not None and cached_whole.fingerprint == whole_fp:
        groups[_WHOLE] = cached_whole
    else:
        seen_sessions: set[str] = set()
        split_ok = True
        for gid, members in by_group.items():
            fp = _fingerprint(members)
            g = old_groups.get(gid)
            if g is None or g.fingerprint != fp:
                g = _build_group(spool_dir, [bf for bf, _k in members], fp)
                read_any = True
            groups[gid] = g
            ids = {s.id for s in g.sessions}
            if not g.self_contained or ids & seen_sessions:
                split_ok = False
                break
            seen_sessions |= ids
        if not split_ok:
            groups = {_WHOLE: _build_group(spool_dir, files, whole_fp)}
            read_any = True

    by_name = {bf.name: bf for bf in files}
    warnings = {name: msgs for g in groups.values() for name, msgs in g.warnings.items()}
    for bf in files:  # in file order, as a fresh read gives them
        for m in warnings.get(bf.name, ()):
            on_warning(m)
    for g in groups.values():
        for m in g.warnings.get("", ()):
            on_warning(m)
    sessions = []
    file_sessions: dict[Path, set[str | None]] = {}
    for g in groups.values():
        streamable = g.self_contained and len(g.sessions) == 1 and _WHOLE not in groups
        for name, owners in g.owners.items():
            bf = by_name.get(name)
            if bf is not None:
                file_sessions[bf.path] = {o or None for o in owners}
        for e in g.sessions:
            locked = e.open and e.lock_protocol  # a writer without the lock protocol is never live/crashed
            live = locked and paths.is_session_live(spool_dir, e.id)
            sessions.append(SessionInfo(
                id=e.id, spool=spool_dir, started_ns=e.started_ns, ended_ns=e.ended_ns, last_ns=e.last_ns,
                live=live, crashed=locked and not live, spans=e.spans, marks=e.marks, snapshots=e.snapshots,
                files=tuple(by_name[n] for n in e.files if n in by_name), sdk_version=e.sdk_version,
                resource=dict(e.resource), attrs=dict(e.attrs), is_orphan=e.is_orphan, streamable=streamable,
                lock_protocol=e.lock_protocol,
            ))
    sessions.sort(key=lambda s: (s.started_ns if s.started_ns is not None else 0, s.id))
    if use_index and (read_any or old is None or set(old_files) != set(new_files)):
        _save_index(spool_dir, _Index(INDEX_VERSION, new_files, groups))
    return SpoolSummary(spool_dir, sessions, file_sessions, files, from_index=not read_any, whole=_WHOLE in groups)
