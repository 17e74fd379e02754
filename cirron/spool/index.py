"""The spool index: per-batch and per-session summaries kept beside the batch files.

``.cirron/spool/.index.msgpack`` remembers, for every batch file (keyed by name, size, mtime and
inode), the ``session_id`` of its header and the warnings reading it gave; and for every group of
batch files sharing a header ``session_id``, the summaries of the sessions rebuilt from them
(:class:`~cirron.spool.catalog.SessionInfo` fields) and which sessions each file holds records of.
A group's entry is valid only for the exact files it was built from, so a new, removed, truncated
or rewritten batch file makes just its group be rebuilt. It also keeps, for ``cirron spool list``,
each file's *listing* (:func:`list_batches`: the record counts and warnings of a summary read), valid
for the one version of the file it was read from. The batch files stay the only source of
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cirron import _native as native
from cirron._atomic import atomic_file
from cirron._safeopen import open_regular
from cirron._schema import ROOT_SENTINEL
from cirron.spool import paths
from cirron.spool.parallel import file_bytes, ordered_map
from cirron.spool.reader import BatchFile, WarningCallback, list_batch_files
from cirron.spool.sessions import load_spool

__all__ = ["INDEX_NAME", "INDEX_VERSION", "BatchListing", "SpoolSummary", "index_path", "list_batches",
           "summarize_spool"]

INDEX_NAME = ".index.msgpack"
#: Bumped whenever the stored shape or the grouping rules change: an index of another version is rebuilt.
INDEX_VERSION = 5  # 5: the light pass compares whole ids (4 took ids with equal hi ^ lo for one)
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


class _Listing(msgspec.Struct, array_like=True):
    """One batch file as ``cirron spool list`` shows it, for the version of it ``key`` names."""

    key: tuple[int, int, int, int]
    #: The session of the header, as the reader takes it (None: none, or not a valid id).
    session_id: str | None
    #: Record counts; None where the file could not be read.
    spans: int | None
    marks: int | None
    snapshots: int | None
    #: The warnings the read gave (replayed on every use, as a fresh read would).
    warnings: list[str]


class _Index(msgspec.Struct):
    version: int
    files: dict[str, _FileEntry]
    groups: dict[str, _GroupEntry]
    #: File name → its listing (:func:`list_batches`); kept apart from ``files``, whose entries
    #: only :func:`summarize_spool` makes (from a header read, not a summary read).
    listings: dict[str, _Listing] = msgspec.field(default_factory=dict)


class _Header(msgspec.Struct):
    session_id: Any = None


_HEADER = msgspec.json.Decoder(_Header)
#: The compiled scan of a batch file's session id (``_cbatch.session_of``), when built and wanted.
_cbatch = native.load("cirron.spool._cbatch")
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
    a readable JSON object (the full read then reports why). The compiled scan (no GIL: several
    threads read headers at once) reads what it can vouch for, the decoder the rest."""
    try:
        with open_regular(bf.path, follow_symlinks=False) as fh:
            data = file_bytes(fh)
        got = None if _cbatch is None else _cbatch.session_of(data)
        sid = got[0] if got is not None else _HEADER.decode(data).session_id
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, False
    return (sid if isinstance(sid, str) and sid else None), True


def _scan_one(bf: BatchFile) -> tuple[tuple[str | None, bool], Any, list[str]]:
    """A stale file's header, with its light-pass keys and their warnings where the compiled keys
    scan reads it (else None and the header scan's reading)."""
    from cirron.spool.batchkeys import read_compiled_keys

    compiled = read_compiled_keys(bf)
    if compiled is None:
        return _read_header(bf), None, []
    keys, warnings = compiled
    return (keys.session_id, True), keys, warnings


#: A run's light pass: the fingerprint of its files and the entry (None: the light pass declines).
_Run = tuple[list[tuple[str, int, int, int, int]], "_GroupEntry | None"]


def _scan_stale(stale: list[tuple[BatchFile, _StatKey]]) -> tuple[dict[str, tuple[str | None, bool]],
                                                                     dict[str, _Run | None]]:
    """The headers of the ``stale`` files (by name) and, by session id, the light pass of each
    session whose stale files come one after another (a *run*, cirron's writer's usual order),
    done on the way so that each file is read once: the entry stands for the group of exactly the
    run's files (its fingerprint), and None marks a session seen in several runs, in a file the
    compiled scan left to the decoder, or in files of fewer than :data:`LIGHT_PASS_BYTES` bytes
    in all. Only a few files' keys are held besides the run's columns."""
    from cirron._memory import returned_memory
    from cirron.spool.reconstruct import paused_gc

    headers: dict[str, tuple[str | None, bool]] = {}
    runs: dict[str, _Run | None] = {}
    run = _RunKeys(None)

    def close(run: _RunKeys) -> None:
        if run.sid is None:
            return
        runs[run.sid] = None if run.sid in runs else run.result()

    with returned_memory(), paused_gc(), contextlib.closing(
            ordered_map(_scan_one, [bf for bf, _k in stale])) as scanned:
        for (bf, key), (header, keys, warnings) in zip(stale, scanned):
            headers[bf.name] = header
            if header[0] != run.sid:
                close(run)
                run = _RunKeys(header[0])
            run.add(bf, key, keys, warnings)
            del keys  # before the next file is read
        close(run)
    return headers, runs


class _RunKeys:
    """The light pass of one run of a session's files (:func:`_scan_stale`); the first files'
    keys are held until the run is big enough to be worth one."""

    def __init__(self, sid: str | None) -> None:
        self.sid = sid
        self.files: list[tuple[BatchFile, _StatKey]] = []
        self.size = 0  # bytes of the run's files
        self.held: list[tuple[BatchFile, Any, list[str]]] = []
        self.light: _LightKeys | None = None
        self.ok = True  # every file read by the compiled scan, and the light pass still goes on
        self.declined = False  # the light pass found the files are not one session of cirron's writer

    def add(self, bf: BatchFile, key: _StatKey, keys: Any, warnings: list[str]) -> None:
        self.files.append((bf, key))
        self.size += key[0]
        if keys is None or self.sid is None:  # no session: the group is rebuilt by itself
            self.ok = False
        if not self.ok or self.declined:
            self.held.clear()
            self.light = None  # its columns are let go at once
            return
        self.held.append((bf, keys, warnings))
        if self.light is None and self.size >= LIGHT_PASS_BYTES:
            self.light = _LightKeys()
        if self.light is not None:
            for f, k, w in self.held:
                if not self.light.add(f, k, w):
                    self.declined = True
                    self.light = None
                    break
            self.held.clear()

    def result(self) -> _Run | None:
        if not self.ok or self.size < LIGHT_PASS_BYTES:
            return None
        fp = _fingerprint(self.files)
        return fp, None if self.light is None else self.light.summarize(fp)


def _changed(entry: _FileEntry | None, key: _StatKey) -> bool:
    return entry is None or (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino) != key


def _fingerprint(files: Iterable[tuple[BatchFile, _StatKey]]) -> list[tuple[str, int, int, int, int]]:
    return sorted((bf.name, *key) for bf, key in files)


#: A group of batch files of at least this many bytes is first summarised in a light pass
#: (:func:`_summarize_one_session`), which holds about 60 bytes a record instead of the records.
#: Below it the light pass's fixed cost (a few dozen numpy calls) outweighs what it saves on the
#: reconstruction; above it, it is faster, even more so when the keys come from the header scan.
LIGHT_PASS_BYTES = 1 << 17


def _build_group(spool_dir: Path, files: list[BatchFile], fingerprint: list[Any], light: bool = True) -> _GroupEntry:
    """Rebuild the sessions of ``files`` (one reconstruction, summary fields) and check whether
    they stand on their own; a big group of one self-contained session is summarised in a light
    pass instead (same answer, bounded memory). ``light=False``: the light pass is known to decline."""
    if light and sum(bf.size for bf in files) >= LIGHT_PASS_BYTES:
        entry = _summarize_one_session(files, fingerprint)
        if entry is not None:
            return entry
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
    every mark and snapshot hangs from one of its spans or the sentinel); else ``None``.

    Memory: about 34 bytes per span and 33 per mark (:class:`_LightKeys`), plus a few batch files'
    records (read ahead); each column is let go as soon as the rules above are checked on it."""
    from cirron._memory import returned_memory
    from cirron.spool.reconstruct import paused_gc

    with returned_memory(), paused_gc():
        return _LightKeys().summarize_files(files, fingerprint)


class _LightKeys:
    """Per record key columns of one session's batch files, collected file by file."""

    def __init__(self) -> None:
        #: Spans: id halves, the parent's joined key and its hi half (the two make the whole
        #: key), whether there is one, whether the span is closed, its latest time. Marks and
        #: snapshots: id halves, the joined key of the span they name and its hi half, whether
        #: they name one; marks also their time.
        import numpy as np

        from cirron.spool.arrays import Column

        u64, i64 = np.uint64, np.int64
        self.cols: dict[str, Column] = {k: Column(t) for k, t in (
            ("hi", u64), ("lo", u64), ("pjoin", u64), ("has_p", bool), ("closed", bool),
            ("tmax", i64), ("mhi", u64), ("mlo", u64), ("mt", u64), ("mon", bool), ("mts", i64),
            ("nhi", u64), ("nlo", u64), ("nt", u64), ("non", bool))}
        #: the hi halves of the parents' and targets' keys, only read a block at a time
        self.his = {k: _DiskColumn() for k in ("phi", "mth", "nth")}
        self.roots: list[tuple[int, Any]] = []
        self.rows = 0
        self.sid: str | None = None
        self.first_meta: tuple[dict[str, Any], str | None] | None = None
        self.sdk_seen: str | None = None
        self.warnings: dict[str, list[str]] = {}
        self.ok_files: list[BatchFile] = []

    def summarize_files(self, files: list[BatchFile], fingerprint: list[Any]) -> _GroupEntry | None:
        files = sorted(files, key=lambda b: (b.created_ns, b.batch_id))
        return self.summarize(fingerprint) if self.read(files) else None

    def read(self, files: list[BatchFile]) -> bool:
        """Read ``files`` in order (the next ones are read meanwhile on another thread: see
        :mod:`cirron.spool.parallel`); False as soon as they are not one session of cirron's writer."""
        from cirron.spool.batchkeys import read_keys

        with contextlib.closing(ordered_map(read_keys, files)) as batches:
            return self._read(files, batches)

    def _read(self, files: list[BatchFile], batches: Iterator[tuple[Any, list[str]]]) -> bool:
        for bf, (keys, current) in zip(files, batches):
            if not self.add(bf, keys, current):
                return False
            del keys  # before the next file is read
        return True

    def add(self, bf: BatchFile, keys: Any, warnings: list[str]) -> bool:
        """Take the keys of the next file (None: unreadable, ``warnings`` say why); False when the
        files are not one session of cirron's writer."""
        if warnings:
            self.warnings[bf.name] = warnings
        if keys is None:
            return True
        if not keys.lock_protocol or keys.session_id is None or self.sid not in (None, keys.session_id):
            return False
        self.sid = keys.session_id
        self.ok_files.append(bf)
        if self.first_meta is None:
            self.first_meta = (keys.resource, keys.sdk_version)
        if self.sdk_seen is None and type(keys.sdk_version) is str:
            self.sdk_seen = keys.sdk_version
        self._add_spans(keys)
        self._add_targets(keys.marks, "m")
        self._add_targets(keys.snapshots, "n")
        return True

    def _add_spans(self, keys: Any) -> None:
        c, sp = self.cols, keys.spans
        c["hi"].append(sp["hi"])
        c["lo"].append(sp["lo"])
        c["pjoin"].append(sp["phi"] ^ sp["plo"])
        self.his["phi"].append(sp["phi"])
        c["has_p"].append(sp["has_p"])
        c["closed"].append(sp["closed"])
        c["tmax"].append(sp["tmax"])
        self.roots.extend((self.rows + j, rec) for j, rec in keys.roots)
        self.rows += len(sp["hi"])

    def _add_targets(self, recs: dict[str, Any], p: str) -> None:
        c = self.cols
        c[p + "hi"].append(recs["hi"])
        c[p + "lo"].append(recs["lo"])
        c[p + "t"].append(recs["thi"] ^ recs["tlo"])
        self.his[p + "th"].append(recs["thi"])
        c[p + "on"].append(recs["on"])
        if "ts" in recs:
            c[p + "ts"].append(recs["ts"])

    def _take(self, name: str, dtype: Any = None) -> Any:
        return self.cols[name].take()

    def summarize(self, fingerprint: list[Any]) -> _GroupEntry | None:
        import numpy as np

        from cirron.spool.arrays import JoinedIndex, last_of_each
        from cirron.spool.reader import _decode_attrs

        u64, i64 = np.uint64, np.int64
        # Marks and snapshots first: their ids, times and dedupe are then let go before the spans'.
        counts = []
        last_ns: int | None = None
        for p in ("m", "n"):
            rwin = last_of_each(self._take(p + "hi", u64), self._take(p + "lo", u64), None)
            counts.append(int(rwin.sum()))
            if p == "m":
                last_ns = _max_time(self._take("mts", i64), where=rwin)
            del rwin
        hi, lo = self._take("hi", u64), self._take("lo", u64)
        win = last_of_each(hi, lo, self._take("closed", bool))
        win_roots = [(r, x) for r, x in self.roots if win[r]]
        if len(win_roots) != 1 or win_roots[0][1].id != self.sid:
            return None
        root_row, root = win_roots[0]
        dups = not win.all()
        rows = np.flatnonzero(win) if dups else None
        del win

        lo ^= hi  # the joined key of each span
        join = _rows_of(lo, rows)
        del lo
        hi = _rows_of(hi, rows)
        n = len(join)
        span_last = _max_time(_rows_of(self._take("tmax", i64), rows))
        if span_last is not None:
            last_ns = span_last if last_ns is None else max(last_ns, span_last)
        spans_by_key = JoinedIndex.of(join, hi.__getitem__)
        del join

        # every span must reach the root through spans of the group
        parent = _lookup_blocks(spans_by_key, self._take("pjoin", u64), self.his["phi"], rows)
        parent[~_rows_of(self._take("has_p", bool), rows)] = -1
        root_idx = int(np.searchsorted(rows, root_row)) if rows is not None else root_row
        del rows
        parent[root_idx] = -1
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
        del parent, reached, todo
        for p in ("m", "n"):
            t, on = self._take(p + "t", u64), np.flatnonzero(self._take(p + "on", bool))
            if n and on.size and (_lookup_blocks(spans_by_key, t, self.his[p + "th"], on) < 0).any():
                return None  # a mark or snapshot on a span the group does not hold
            del t, on
        resource = dict(self.first_meta[0]) if self.first_meta is not None else {}
        sdk = self.sdk_seen
        if self.first_meta is not None and self.first_meta[1] is not None:
            sdk = self.first_meta[1]
        attrs = _decode_attrs(root.attrs)
        if sdk is None and isinstance(attrs, dict) and isinstance(attrs.get("sdk_version"), str):
            sdk = attrs["sdk_version"]
        if "pid" not in resource and root.pid is not None:
            resource["pid"] = root.pid
        files = self.ok_files
        entry = _SessionEntry(
            id=root.id, started_ns=root.start_ns, ended_ns=root.end_ns, last_ns=last_ns, open=root.end_ns is None,
            spans=n, marks=counts[0], snapshots=counts[1], files=[f.name for f in files], sdk_version=sdk,
            resource=_plain(resource), attrs=_plain(attrs if isinstance(attrs, dict) else {}), is_orphan=False,
            lock_protocol=True,
        )
        return _GroupEntry(fingerprint, True, [entry], {f.name: [root.id] for f in files}, self.warnings)


#: "No time" in the int64 time columns (:func:`cirron.spool.outline.time_column`).
_NO_TIME = -(1 << 63)


class _DiskColumn:
    """A uint64 column read back a block at a time: held in memory up to :data:`_SPILL_VALUES`
    values, then appended to a temporary file (a small session's columns never touch the disk)."""

    def __init__(self) -> None:
        self._parts: list[Any] = []
        self._held = 0
        self._fh: Any = None

    def append(self, part: Any) -> None:
        if self._fh is None:
            self._parts.append(part)
            self._held += len(part)
            if self._held <= _SPILL_VALUES:
                return
            import tempfile

            self._fh = tempfile.TemporaryFile(prefix="cirron-index-")
            for held in self._parts:
                held.tofile(self._fh)
            self._parts.clear()
        else:
            part.tofile(self._fh)

    def blocks(self, rows: int) -> Iterator[Any]:
        """The column in blocks of ``rows`` values (the file is closed after the last)."""
        import numpy as np

        if self._fh is None:
            whole = np.concatenate(self._parts) if self._parts else np.empty(0, dtype=np.uint64)
            self._parts.clear()
            for first in range(0, len(whole), rows):
                yield whole[first:first + rows]
            return
        with self._fh:
            self._fh.seek(0)
            while len(block := np.fromfile(self._fh, dtype=np.uint64, count=rows)):
                yield block


#: Values a :class:`_DiskColumn` holds in memory before it spills them to a file (512 KiB).
_SPILL_VALUES = 1 << 16


#: Keys read back per block by :func:`_lookup_blocks`.
_LOOKUP_BLOCK = 1 << 18


def _lookup_blocks(spans: Any, join: Any, his: _DiskColumn, rows: Any) -> Any:
    """``spans``' row (:class:`cirron.spool.arrays.JoinedIndex`) of the keys whose joined keys are
    ``join`` and hi halves ``his`` (only ``rows``, ascending, when given)."""
    import numpy as np

    out = np.empty(len(join) if rows is None else len(rows), dtype=spans.dtype)
    first = done = 0
    for block in his.blocks(_LOOKUP_BLOCK):
        end = first + len(block)
        if rows is None:
            out[first:end] = spans.lookup(join[first:end], block.__getitem__)
        else:
            stop = int(np.searchsorted(rows, end))
            at = rows[done:stop]
            out[done:stop] = spans.lookup(join[at], block[at - first].__getitem__)
            done = stop
        first = end
    return out


def _rows_of(a: Any, rows: Any) -> Any:
    """The winning rows of a span column (the column itself when every row wins: ``rows`` None)."""
    return a if rows is None else a[rows]


def _max_time(a: Any, where: Any = None) -> int | None:
    """The latest time in ``a`` (rows of ``where`` only), None when there is none."""
    if where is None:
        m = int(a.max(initial=_NO_TIME))
    else:
        m = int(a.max(initial=_NO_TIME, where=where))
    return None if m == _NO_TIME else m


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
    keys = [_stat_key(bf) for bf in files]
    stale = [(bf, key) for bf, key in zip(files, keys) if _changed(old_files.get(bf.name), key)]
    fresh, runs = _scan_stale(stale)
    read_any = bool(fresh)
    for bf, key in zip(files, keys):
        header = fresh.get(bf.name)
        entry = _FileEntry(*key, *header) if header is not None else old_files[bf.name]
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
                run = runs.get(gid)
                if run is not None and run[0] == fp and run[1] is not None:
                    g = run[1]  # its light pass, done while its files were scanned
                else:
                    g = _build_group(spool_dir, [bf for bf, _k in members], fp, light=run is None or run[0] != fp)
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
        listings = {n: v for n, v in old.listings.items() if n in new_files} if old is not None else {}
        _save_index(spool_dir, _Index(INDEX_VERSION, new_files, groups, listings))
    return SpoolSummary(spool_dir, sessions, file_sessions, files, from_index=not read_any, whole=_WHOLE in groups)


@dataclass(frozen=True)
class BatchListing:
    """One batch file with what :func:`list_batches` found in it."""

    file: BatchFile
    session_id: str | None
    #: None where the file could not be read (its warning says why).
    spans: int | None
    marks: int | None
    snapshots: int | None

    @property
    def readable(self) -> bool:
        return self.spans is not None


def _listing_of(file: tuple[BatchFile, _StatKey]) -> _Listing:
    """A summary read of a file (its key taken before it: a file replaced meanwhile is read again
    next time, its key no longer matching)."""
    bf, key = file
    from cirron.spool.batchkeys import read_compiled_keys
    from cirron.spool.reader import read_batch

    compiled = read_compiled_keys(bf)  # without the GIL: the read threads count files at once
    if compiled is not None:
        keys, warnings = compiled
        return _Listing(key, keys.session_id, len(keys.spans["hi"]), len(keys.marks["hi"]),
                        len(keys.snapshots["hi"]), warnings)
    warnings = []
    batch = read_batch(bf, warnings.append, "summary")
    if batch is None:
        return _Listing(key, None, None, None, None, warnings)
    return _Listing(key, batch["session_id"], len(batch["spans"]), len(batch["marks"]), len(batch["snapshots"]),
                    warnings)


def list_batches(spool_dir: str | os.PathLike[str], on_warning: WarningCallback, *,
                 use_index: bool = True) -> tuple[list[BatchListing], bool]:
    """Every batch file of ``spool_dir``, oldest first, with its session and record counts, and
    whether the answer came without reading any batch file. A file is read (one summary read)
    only when the index holds no listing of its current version; warnings are given in file order
    either way."""
    spool_dir = Path(spool_dir)
    files = list_batch_files(spool_dir, on_warning)
    old = _load_index(spool_dir) if use_index else None
    old_listings = old.listings if old is not None else {}
    listings: dict[str, _Listing] = {}
    out = []
    keys = [_stat_key(bf) for bf in files]
    stale = [(bf, key) for bf, key in zip(files, keys)
             if (had := old_listings.get(bf.name)) is None or tuple(had.key) != key]
    with contextlib.closing(ordered_map(_listing_of, stale)) as fresh_listings:
        fresh = {bf.name: listing for (bf, _k), listing in zip(stale, fresh_listings)}
    read_any = bool(fresh)
    for bf in files:
        listing = fresh.get(bf.name) or old_listings[bf.name]
        listings[bf.name] = listing
        for message in listing.warnings:
            on_warning(message)
        out.append(BatchListing(bf, listing.session_id, listing.spans, listing.marks, listing.snapshots))
    if use_index and (read_any or set(old_listings) != set(listings)):
        idx = old if old is not None else _Index(INDEX_VERSION, {}, {})
        _save_index(spool_dir, _Index(INDEX_VERSION, idx.files, idx.groups, listings))
    return out, not read_any
