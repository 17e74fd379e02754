"""Helpers every exporter shares: atomic output files and flat span/mark/snapshot rows."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from cirron._atomic import atomic_file as _atomic_file
from cirron._schema import encode_float, encode_int
from cirron.spool.reader import safe_dumps

__all__ = ["OutputRefused", "atomic_dir", "atomic_file", "attrs_json", "attrs_text", "check_output", "duration_ns",
           "json_scalar"]

#: ``--output -``: the single-file formats write to standard output.
STDOUT = "-"


class OutputRefused(OSError):
    """The output path names something an export must not replace (one-line message)."""


def _kind(mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def check_output(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Refuse (:class:`OutputRefused`) an output path that is a symlink, device, FIFO, socket or
    (for a file export) a directory: an export only ever replaces a regular file, or fills a
    real directory (``directory=True``)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputRefused(exc.errno, f"Cannot write {path}: {exc.strerror or exc}") from None
    kind = _kind(mode)
    if kind is None or (directory and kind == "a directory"):
        return
    hint = " (use --output - for standard output)" if kind != "a directory" else ""
    raise OutputRefused(f"Cannot write {path}: it is {kind}, which an export never replaces{hint}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`cirron._atomic.atomic_file` for an export's output, after :func:`check_output`."""
    check_output(path)
    with _atomic_file(path) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], names: tuple[str, ...]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to write ``names`` into; on success each one is
    moved into ``path`` (created if needed) with ``os.replace``; on failure nothing is left.

    A name may be a file or a directory; a directory of that name already in ``path`` is moved
    aside first and removed once the new one is in place (a file there is never replaced by a
    directory: that fails with an ``OSError``)."""
    path = Path(path)
    check_output(path, directory=True)
    for n in names:
        check_output(path / n, directory=True)
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
                check_output(dst)
                os.chmod(src, 0o644 & ~_umask())
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def duration_ns(rec: dict[str, Any]) -> int | None:
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


def write_members(fh: Any, items: Iterable[bytes], already: int = 0, chunk: int = 5000,
                  chunk_bytes: int = 1 << 20) -> int:
    """Write JSON array members (already encoded) comma-separated, in chunks of ``chunk`` members
    or ``chunk_bytes`` bytes, continuing an array that already has ``already`` members; returns
    the number of items written (an item may itself be several members, comma-separated)."""
    n = 0
    size = 0
    buf: list[bytes] = []
    for item in items:
        if len(item) >= chunk_bytes:  # written as it is, not copied into a joined chunk
            if buf:
                fh.write((b"," if n or already else b"") + b",".join(buf))
                n += len(buf)
                buf.clear()
                size = 0
            fh.write(b"," if n or already else b"")
            fh.write(item)
            n += 1
            continue
        buf.append(item)
        size += len(item)
        if len(buf) >= chunk or size >= chunk_bytes:
            size = 0
            fh.write((b"," if n or already else b"") + b",".join(buf))
            n += len(buf)
            buf.clear()
    if buf:
        fh.write((b"," if n or already else b"") + b",".join(buf))
        n += len(buf)
    return n


def is_columns(item: Any) -> bool:
    """Whether ``item`` is a :class:`cirron.spool.columnar.SessionColumns` (checked by name, so
    exporters need not import pyarrow to tell)."""
    return type(item).__name__ == "SessionColumns"


def arrow_text(arr: Any) -> memoryview:
    """The bytes of a string array's values, back to back (what a writer of joined lines needs)."""
    import numpy as np

    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    width = np.int64 if str(arr.type) == "large_string" else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset: arr.offset + len(arr) + 1]
    if len(arr) == 0:
        return memoryview(b"")
    return memoryview(arr.buffers()[2])[int(offsets[0]): int(offsets[-1])]


def join_lines(columns: list[Any], separator: str, end: str) -> Any:
    """One string per row: the columns' texts joined by ``separator``, followed by ``end``."""
    import pyarrow.compute as pc

    line = pc.binary_join_element_wise(*columns, separator)
    return pc.binary_join_element_wise(line, "", end)
