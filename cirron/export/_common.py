"""Helpers every exporter shares: atomic output files and flat span/mark/snapshot rows."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from cirron._atomic import atomic_file
from cirron._schema import encode_float, encode_int
from cirron.spool.reader import safe_dumps

__all__ = ["atomic_dir", "atomic_file", "attrs_json", "attrs_text", "duration_ns", "json_scalar"]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], names: tuple[str, ...]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to write ``names`` into; on success each one is
    moved into ``path`` (created if needed) with ``os.replace``; on failure nothing is left.

    A name may be a file or a directory; a directory of that name already in ``path`` is moved
    aside first and removed once the new one is in place (a file there is never replaced by a
    directory: that fails with an ``OSError``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cirron-export-", dir=path))
    try:
        yield tmp
        for n in names:
            src, dst = tmp / n, path / n
            if src.is_dir():
                if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                    raise IsADirectoryError(21, "not a directory, refusing to replace it", str(dst))
                if dst.exists():
                    os.replace(dst, tmp / f".old-{n}")
                os.replace(src, dst)
            else:
                os.chmod(src, 0o644 & ~_umask())
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def duration_ns(rec: dict) -> int | None:
    s, e = rec.get("start_ns"), rec.get("end_ns")
    if type(s) is int and type(e) is int:
        return e - s
    return None


def attrs_text(a: Any) -> str:
    """``attrs`` as JSON text: raw text read by ``fields="export"`` is passed through."""
    if type(a) is msgspec.Raw:
        return bytes(a).decode("utf-8", "replace")
    if a is None:
        return "{}"
    return safe_dumps(a).decode()


def attrs_json(rec: Any) -> str:
    return attrs_text(rec.get("attrs"))


def json_scalar(value: Any) -> Any:
    """A mark value ready for strict JSON (non-finite floats and ints outside int64 as strings)."""
    if type(value) is float:
        return encode_float(value)
    if type(value) is int:
        return encode_int(value)
    return value


class NoTracesFound(Exception):
    """The spool holds no session to export."""


class NoSessionFound(LookupError):
    """No session id starts with the requested prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.prefix = prefix
