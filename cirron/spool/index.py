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


#: A group of at least this many batch files is first summarised in a light pass
#: (:func:`_summarize_one_session`), which holds about 60 bytes a record instead of the records.
LIGHT_PASS_FILES = 16


def _build_group(spool_dir: Path, files: list[BatchFile], fingerprint: list[Any]) -> _GroupEntry:
    """Rebuild the sessions of ``files`` (one reconstruction, summary fields) and check whether
    they stand on their own; a big group of one self-contained session is summarised in a light
    pass instead (same answer, bounded memory)."""
    if len(files) >= LIGHT_PASS_FILES:
        light = _summarize_one_session(files, fingerprint)
        if light is not None:
            return light
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


def _summarize_one_session(files: list[BatchFile], fingerprint: list[Any]) -> _GroupEntry | None:
    """The group entry :func:`_build_group` makes for ``files``, from numpy keys of their records
    (:mod:`cirron.spool.outline`'s rules), when they hold exactly one session of cirron's writer
    that stands on its own (its root's id is the batches' ``session_id``, every span reaches it,
    every mark and snapshot hangs from one of its spans or the sentinel); else ``None``."""
    import numpy as np

    from cirron._schema import SESSION_SPAN_NAME
    from cirron.spool.arrays import last_of_each
    from cirron.spool.outline import (
        SPAN_KEY_COLUMNS,
        append_span_keys,
        stack_parts,
        target_keys,
        time_column,
    )
    from cirron.spool.reader import _decode_attrs, read_batch
    from cirron.spool.reconstruct import paused_gc

    files = sorted(files, key=lambda b: (b.created_ns, b.batch_id))
    warnings: dict[str, list[str]] = {}
    ok_files: list[BatchFile] = []
    cols: dict[str, list[Any]] = {k: [] for k in (*SPAN_KEY_COLUMNS,
                                                    "mhi", "mlo", "mt", "mon", "mts", "nhi", "nlo", "nt", "non")}
    roots: list[tuple[int, Any]] = []
    sid: str | None = None
    first_meta: tuple[dict[str, Any], str | None] | None = None
    sdk_seen: str | None = None
    row = 0
    with paused_gc():
        for bf in files:
            current: list[str] = []
            batch = read_batch(bf, current.append, "export")
            if current:
                warnings[bf.name] = current
            if batch is None:
                continue
            if not batch["lock_protocol"] or batch["session_id"] is None or sid not in (None, batch["session_id"]):
                return None
            sid = batch["session_id"]
            ok_files.append(bf)
            if first_meta is None:
                first_meta = (batch["resource"], batch["sdk_version"])
            if sdk_seen is None and type(batch["sdk_version"]) is str:
                sdk_seen = batch["sdk_version"]
            spans = batch["spans"]
            append_span_keys(cols, spans)
            for j, x in enumerate(spans):
                if x.parent_id is None and x.name == SESSION_SPAN_NAME:
                    roots.append((row + j, x))
            row += len(spans)
            for recs, (khi, klo, kt, kon) in ((batch["marks"], ("mhi", "mlo", "mt", "mon")),
                                             (batch["snapshots"], ("nhi", "nlo", "nt", "non"))):
                rhi, rlo, tjoin, on = target_keys(recs)
                cols[khi].append(rhi)
                cols[klo].append(rlo)
                cols[kt].append(tjoin)
                cols[kon].append(on)
            cols["mts"].append(time_column([m.ts_ns for m in batch["marks"]]))
            del batch, spans
        u64 = np.uint64
        hi, lo, closed = stack_parts(cols["hi"], u64), stack_parts(cols["lo"], u64), stack_parts(cols["closed"], bool)
        win = last_of_each(hi, lo, closed)
        rows = np.flatnonzero(win)
        win_roots = [(r, x) for r, x in roots if win[r]]
        if len(win_roots) != 1 or win_roots[0][1].id != sid:
            return None
        root_row, root = win_roots[0]
        del closed, win
        join = (hi ^ lo)[rows]
        del hi, lo
        pjoin = stack_parts(cols["pjoin"], u64)[rows]
        has_p = stack_parts(cols["has_p"], bool)[rows].astype(bool)
        start = stack_parts(cols["start"], np.int64)[rows]
        end = stack_parts(cols["end"], np.int64)[rows]
        n = len(rows)
        by_join = np.argsort(join, kind="stable")
        sorted_join = join[by_join]

        def lookup(keys: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(sorted_join, keys), n - 1)
            return np.where(sorted_join[pos] == keys, by_join[pos], -1)

        root_idx = int(np.searchsorted(rows, root_row))
        parent = np.where(has_p, lookup(pjoin), -1)
        parent[root_idx] = -1
        # every span must reach the root through spans of the group
        reached = np.zeros(n, dtype=bool)
        reached[root_idx] = True
        for _ in range(n + 1):
            todo = ~reached & (parent >= 0)
            todo[todo] = reached[parent[todo]]
            if not todo.any():
                break
            reached |= todo
        if not reached.all():
            return None
        counts = []
        for khi, klo, kt, kon in (("mhi", "mlo", "mt", "mon"), ("nhi", "nlo", "nt", "non")):
            rwin = last_of_each(stack_parts(cols[khi], u64), stack_parts(cols[klo], u64), None)
            t, on = stack_parts(cols[kt], u64), stack_parts(cols[kon], bool).astype(bool)
            if n and on.any() and (lookup(t[on]) < 0).any():
                return None  # a mark or snapshot on a span the group does not hold
            counts.append(int(rwin.sum()))
            if khi == "mhi":
                mts = stack_parts(cols["mts"], np.int64)[rwin]
    no_time = np.iinfo(np.int64).min
    times = np.concatenate([start[start != no_time], end[end != no_time], mts[mts != no_time]])
    last_ns = int(times.max()) if len(times) else None
    resource = dict(first_meta[0]) if first_meta is not None else {}
    sdk = sdk_seen
    if first_meta is not None and first_meta[1] is not None:
        sdk = first_meta[1]
    attrs = _decode_attrs(root.attrs)
    if sdk is None and isinstance(attrs, dict) and isinstance(attrs.get("sdk_version"), str):
        sdk = attrs["sdk_version"]
    if "pid" not in resource and root.pid is not None:
        resource["pid"] = root.pid
    entry = _SessionEntry(
        id=root.id, started_ns=root.start_ns, ended_ns=root.end_ns, last_ns=last_ns, open=root.end_ns is None,
        spans=n, marks=counts[0], snapshots=counts[1], files=[f.name for f in ok_files], sdk_version=sdk,
        resource=_plain(resource), attrs=_plain(attrs if isinstance(attrs, dict) else {}), is_orphan=False,
        lock_protocol=True,
    )
    return _GroupEntry(fingerprint, True, [entry], {f.name: [root.id] for f in ok_files}, warnings)


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
