"""Where things live on disk: the spool, the snapshot blobs, the liveness locks.

Layout (spec section 3)::

    .cirron/
    ├── spool/<created_ns>-<batch_id>.json
    ├── spool/.live/<session_id>.lock      held (flock) by the writing process
    └── snapshots/<span_id>/{weights,gradients}.safetensors

``blob_uri`` values in snapshot records are relative to the ``.cirron/`` directory, which is
the spool directory's parent.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from cirron._atomic import TMP_PREFIX  # noqa: F401  (part of the layout this module describes)
from cirron._safeopen import open_regular_fd

DEFAULT_SPOOL_DIR = Path(".cirron") / "spool"
LIVE_DIR_NAME = ".live"
SNAPSHOTS_DIR_NAME = "snapshots"


def cirron_root(spool_dir: str | os.PathLike[str]) -> Path:
    """The ``.cirron/`` directory a spool belongs to (blob URIs are relative to it)."""
    return Path(spool_dir).parent


def snapshots_dir(spool_dir: str | os.PathLike[str]) -> Path:
    return cirron_root(spool_dir) / SNAPSHOTS_DIR_NAME


def snapshot_span_dir(spool_dir: str | os.PathLike[str], span_id: str) -> Path:
    """The blob directory of ``span_id``; ``ValueError`` for an id that is not :func:`is_safe_id`."""
    if not is_safe_id(span_id):
        raise ValueError(f"unsafe span id {span_id!r}")
    return snapshots_dir(spool_dir) / span_id


def live_dir(spool_dir: str | os.PathLike[str]) -> Path:
    return Path(spool_dir) / LIVE_DIR_NAME


#: Longest id used as a file name (lock files, snapshot directories).
MAX_ID_LENGTH = 200


def is_safe_id(value: object) -> bool:
    """Whether a session or span id read from disk may become one path component: a non-empty
    string of at most :data:`MAX_ID_LENGTH` characters, no ``/`` or ``\\``, no control
    character, not ``.``/``..`` and not starting with ``.`` (hidden names are the tools' own)."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_ID_LENGTH
        and not value.startswith(".")
        and "/" not in value
        and "\\" not in value
        and value.isprintable()
    )


def live_lock_path(spool_dir: str | os.PathLike[str], session_id: str) -> Path:
    """The lock file of ``session_id``; ``ValueError`` for an id that is not :func:`is_safe_id`."""
    if not is_safe_id(session_id):
        raise ValueError(f"unsafe session id {session_id!r}")
    return live_dir(spool_dir) / f"{session_id}.lock"


def is_session_live(spool_dir: str | os.PathLike[str], session_id: str) -> bool:
    """True while some process holds the session's liveness lock.

    An id that cannot be a file name (:func:`is_safe_id`) has no lock; only a regular file
    counts as a lock file.

    Probes with a non-blocking shared lock: a writer holds an exclusive one, so the probe
    fails exactly while the writer lives (even when it is idle or stopped). A missing lock
    file means no writer. Age and pid are never consulted.
    """
    if not is_safe_id(session_id):
        return False
    try:  # never blocks: a FIFO or device where the lock should be is no lock
        fd = open_regular_fd(live_lock_path(spool_dir, session_id), follow_symlinks=False)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def hold_lock(path: str | os.PathLike[str]) -> int:
    """Create ``path`` if needed and hold an exclusive flock on it; the fd, to close to let go.
    OSError when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


_GLOB_CHARS = re.compile(r"[*?[]")


def has_glob(pattern: str | os.PathLike[str]) -> bool:
    """Whether ``pattern`` holds glob characters (``*``, ``?``, ``[``)."""
    return _GLOB_CHARS.search(os.fspath(pattern)) is not None


def resolve_spools(patterns: Iterable[str | os.PathLike[str]],
                   on_warning: Callable[[str], None] | None = None) -> list[Path]:
    """The spool directories ``patterns`` name, in the order given, each once.

    A pattern with glob characters (``*``, ``?``, ``[``; ``**`` crosses directories) stands for
    the directories it matches, sorted; one that matches none is reported through
    ``on_warning``. A plain path is kept as given, even when it does not exist (an empty spool);
    a missing one other than the default ``.cirron/spool`` is reported too, naming it.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        text = os.fspath(pat)
        if has_glob(text):
            found = sorted(p for p in glob.glob(os.path.expanduser(text), recursive=True) if os.path.isdir(p))
            if not found and on_warning is not None:
                on_warning(f"no spool directory matches {text}")
            candidates = [Path(p) for p in found]
        else:
            candidates = [Path(text).expanduser()]
            if on_warning is not None and not candidates[0].exists() and Path(text) != DEFAULT_SPOOL_DIR:
                on_warning(f"spool directory {text} does not exist")
        for p in candidates:
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out
