"""Writing the spool: atomic batch files, the liveness lock, and the disk cap.

Plain synchronous code; the flush service calls it from a worker thread.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path

from cirron._atomic import atomic_write, remove_orphaned_temporaries
from cirron._safeopen import open_regular
from cirron._schema import BATCH_NAME_RE, batch_file_name
from cirron.spool.paths import hold_lock, is_safe_id, live_dir, live_lock_path, snapshots_dir

__all__ = ["SpoolFullError", "SpoolWriter", "atomic_write"]

DEFAULT_MAX_SPOOL_BYTES = 1 << 30
_SESSION_ID_RE = re.compile(rb'"session_id":\s*"([^"]+)"')
_SPAN_ID_IN_SNAPSHOT_RE = re.compile(rb'"blob_uri":\s*"snapshots/([^/"]+)/')


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class SpoolFullError(OSError):
    """A write would pass ``max_spool_bytes`` even after evicting every finished session."""


class SpoolWriter:
    """Owns one session's writes into a spool directory shared with other processes."""

    def __init__(self, spool_dir: Path, session_id: str | None, max_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
                 fsync: bool = True) -> None:
        self.spool_dir: Path = Path(spool_dir).absolute()  # a later os.chdir() must not move the spool
        self.session_id = session_id
        self.max_bytes = max_bytes
        self.fsync = fsync
        #: False in a forked child: the parent holds the session's liveness lock.
        self.take_lock = True
        self._lock_fd: int | None = None
        self._used: int | None = None
        self.batches_written: int = 0
        self.bytes_written: int = 0
        self.evicted_sessions: int = 0
        self.evicted_files: int = 0
        self.refused_writes: int = 0

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._remove_orphaned_temporaries()
        if self.session_id is not None and self.take_lock and self._lock_fd is None:
            live_dir(self.spool_dir).mkdir(exist_ok=True)
            self._lock_fd = hold_lock(live_lock_path(self.spool_dir, self.session_id))

    def _remove_orphaned_temporaries(self) -> None:
        """Temporary files left by writers that died mid-write (their pid is gone): in the spool
        and in every snapshot directory (a blob being written when the process was killed)."""
        remove_orphaned_temporaries(self.spool_dir)
        snaps = snapshots_dir(self.spool_dir)
        remove_orphaned_temporaries(snaps)
        try:
            with os.scandir(snaps) as it:
                span_dirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for d in span_dirs:
            remove_orphaned_temporaries(d)

    def close(self) -> None:
        """Release the liveness lock: from now on readers see the session as finished or crashed."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def forget_lock_after_fork(self) -> None:
        """In a forked child the lock fd is shared with the parent: never unlock it from here."""
        self._lock_fd = None

    # -- writing -------------------------------------------------------------------------

    def write_batch(self, created_ns: int, batch_id: str, data: bytes | list[bytes]) -> Path:
        size = len(data) if isinstance(data, bytes) else sum(map(len, data))
        self.ensure_room(size)
        path = self.spool_dir / batch_file_name(created_ns, batch_id)
        atomic_write(path, data, self.fsync)
        self._used = (self._used or 0) + size
        self.batches_written += 1
        self.bytes_written += size
        return path

    def write_blob(self, path: Path, data: bytes) -> None:
        self.ensure_room(len(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, self.fsync)
        self._used = (self._used or 0) + len(data)

    # -- disk cap ------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return _dir_bytes(self.spool_dir) + _dir_bytes(snapshots_dir(self.spool_dir))

    def ensure_room(self, incoming: int) -> None:
        """Make room for ``incoming`` bytes (temporary file included) or raise SpoolFullError."""
        if self._used is None or self._used + incoming > self.max_bytes * 0.9:
            self._used = self.used_bytes()
        if self._used + incoming <= self.max_bytes:
            return
        if incoming > self.max_bytes:  # no eviction can make room: keep the older sessions
            self.refused_writes += 1
            raise SpoolFullError(f"a write of {incoming} bytes is larger than the cap of spool {self.spool_dir} "
                                 f"({self.max_bytes} bytes); nothing was evicted")
        for session_id, files in self._finished_sessions_oldest_first():
            self._evict(session_id, files)
            self._used = self.used_bytes()
            if self._used + incoming <= self.max_bytes:
                return
        self.refused_writes += 1
        raise SpoolFullError(
            f"spool {self.spool_dir} is at its cap of {self.max_bytes} bytes "
            f"({self._used} used) and no finished session is left to evict"
        )

    def _finished_sessions_oldest_first(self) -> list[tuple[str, list[Path]]]:
        from cirron.spool.paths import is_session_live

        by_session: dict[str, list[tuple[int, Path]]] = {}
        for entry in os.scandir(self.spool_dir):
            m = BATCH_NAME_RE.match(entry.name)
            if not m or not entry.is_file(follow_symlinks=False):
                continue
            try:
                with open_regular(entry.path, follow_symlinks=False) as f:
                    head = f.read(1024)
            except OSError:
                continue
            sm = _SESSION_ID_RE.search(head)
            sid = sm.group(1).decode() if sm else ""
            by_session.setdefault(sid, []).append((int(m.group(1)), Path(entry.path)))
        out = []
        for sid, files in by_session.items():
            if sid == self.session_id or (sid and is_session_live(self.spool_dir, sid)):
                continue
            files.sort()
            out.append((files[0][0], sid, [p for _, p in files]))
        out.sort()
        return [(sid, files) for _, sid, files in out]

    def _evict(self, session_id: str, files: list[Path]) -> None:
        span_dirs: set[str] = set()
        for path in files:
            try:
                span_dirs.update(m.decode() for m in _SPAN_ID_IN_SNAPSHOT_RE.findall(path.read_bytes()))
            except OSError:
                pass
        for path in files:
            try:
                path.unlink()
                self.evicted_files += 1
            except OSError:
                pass
        snaps = snapshots_dir(self.spool_dir)
        for span_id in span_dirs:
            target = snaps / span_id
            if target.parent == snaps and target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
        if is_safe_id(session_id):
            try:
                live_lock_path(self.spool_dir, session_id).unlink()
            except OSError:
                pass
        self.evicted_sessions += 1
