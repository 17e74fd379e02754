"""Helpers every exporter shares: atomic output files and flat span/mark/snapshot rows."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from cirron._atomic import atomic_file as _atomic_file
from cirron._schema import json_scalar
from cirron.spool.reader import safe_dumps

__all__ = ["DIRECT_AFTER_BYTES", "OUTPUT_BLOCK_BYTES", "OutputRefused", "atomic_dir", "atomic_file", "attrs_json",
           "attrs_text", "check_output", "duration_ns", "json_scalar", "open_output"]

#: ``--output -``: the single-file formats write to standard output.
STDOUT = "-"

#: An output file (:func:`open_output`) is written in blocks of this many bytes...
OUTPUT_BLOCK_BYTES = 1 << 20
#: ...which go to disk around the page cache once it holds this many, where the file system allows.
DIRECT_AFTER_BYTES = 256 << 20
#: What a write around the page cache must be aligned to: file offset, size and memory.
_ALIGN = 4096


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


def open_output(path: str | os.PathLike[str], mode: str = "wb", **text: Any) -> Any:
    """A new binary file (``"wb"``; ``"w"``: text, with ``text``'s options of ``open``) for an
    export's output. It is written in blocks of :data:`OUTPUT_BLOCK_BYTES`; once it holds
    :data:`DIRECT_AFTER_BYTES`, its whole blocks go straight to disk (``O_DIRECT``), not through
    the page cache, where the file system allows it. Exports of several GB were dominated by the
    kernel's copies into the page cache: on a 2-core VM, 2 GB written through it took 0.6 to 5.8 s
    from one run to the next, nearly all of it system time, and 7 GB around it 4.4 s, 0.35 s of it
    system time. A smaller file, and a file system without ``O_DIRECT``, are written as usual."""
    out = _OutputFile(path)
    try:
        return io.TextIOWrapper(out, **text) if "b" not in mode else out
    except BaseException:
        out.close()
        raise


class _OutputFile(io.BufferedIOBase):
    """:func:`open_output`'s file: writes gather in a page-aligned block; a full block is written
    with ``O_DIRECT`` once the file is big enough and the block starts at an aligned offset (the
    first bytes of a block are written as usual to get there). ``flush``, ``seek`` and
    ``truncate`` write what the block holds the usual way (a partial block cannot go around the
    cache), and later blocks go around it again once aligned."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import mmap

        super().__init__()
        self.name = os.fspath(path)
        self._block = mmap.mmap(-1, OUTPUT_BLOCK_BYTES)  # page-aligned, as O_DIRECT wants
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._staged = 0
        #: the file offset: what was written before the block's bytes
        self._pos = 0
        #: O_DIRECT is set on the file (:meth:`_around_cache`), or could be (``None``: refused)
        self._direct: bool | None = False if hasattr(os, "O_DIRECT") else None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos + self._staged

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        src = memoryview(data).cast("B")
        n = len(src)
        while len(src):
            take = min(len(src), OUTPUT_BLOCK_BYTES - self._staged)
            self._block[self._staged:self._staged + take] = src[:take]
            self._staged += take
            src = src[take:]
            if self._staged == OUTPUT_BLOCK_BYTES:
                self._write_block()
        return n

    def flush(self) -> None:
        if self._staged:
            self._through_cache()
            self._write_all(memoryview(self._block)[:self._staged])
            self._staged = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.flush()
        self._pos = os.lseek(self._fd, offset, whence)
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self.flush()
        size = self._pos if size is None else size
        os.ftruncate(self._fd, size)
        return size

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._block.close()
            super().close()

    def _write_block(self) -> None:
        """Write the full block: around the page cache where it may, else as usual."""
        if self._direct is False and self._pos >= DIRECT_AFTER_BYTES:
            lead = -self._pos % _ALIGN
            if lead:  # as usual up to an aligned offset; the rest waits for the next block
                self._write_all(memoryview(self._block)[:lead])
                self._block.move(0, lead, self._staged - lead)
                self._staged -= lead
                return
            self._around_cache()
        block = memoryview(self._block)[:self._staged]
        if self._direct:
            start = self._pos
            try:
                self._write_all(block)
            except OSError:  # the file system took O_DIRECT but not such a write: as usual from now on
                self._through_cache()
                self._direct = None
                block = block[self._pos - start:]
            else:
                block = block[:0]
        self._write_all(block)
        self._staged = 0

    def _write_all(self, data: memoryview) -> None:
        while len(data):
            n = os.write(self._fd, data)
            self._pos += n
            data = data[n:]

    def _around_cache(self) -> None:
        import fcntl

        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) | os.O_DIRECT)
        except OSError:  # not on this file system (tmpfs, some FUSE ones)
            self._direct = None
        else:
            self._direct = True

    def _through_cache(self) -> None:
        if self._direct:
            import fcntl

            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._direct = False


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


class WriteBehind:
    """Writes done by a thread, in order, at most ``depth`` blocks behind the caller: the kernel's
    copy of one block into the page cache (the write releases the GIL) overlaps the encoding of the
    next. :meth:`file` gives a file-like object for one file; a failed write is raised by the next
    call, or by :meth:`drain`. Use as a context manager: leaving it drains (or, on an error, stops)
    the thread."""

    def __init__(self, depth: int = 4) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cirron-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fh, data = item
            if self._error is None:
                try:
                    fh.write(data)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, fh: Any, data: Any) -> None:
        self._raise()
        self._queue.put((fh, data))

    def file(self, fh: Any) -> Any:
        """A file-like object whose ``write`` is queued for ``fh``."""
        return _BehindFile(self, fh)

    def drain(self) -> None:
        """Wait for every queued write; raise the first one that failed."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._error = self._error or RuntimeError("abandoned")  # the queued writes are skipped
            with contextlib.suppress(BaseException):
                self.drain()
            return
        self.drain()


class _BehindFile:
    def __init__(self, behind: WriteBehind, fh: Any) -> None:
        self._behind, self._fh = behind, fh

    def write(self, data: Any) -> None:
        self._behind.write(self._fh, data)


def append_file(dst: Any, src: Any) -> None:
    """Append all of the binary file ``src`` to the buffered binary file ``dst``: copied by the
    kernel (``copy_file_range``) where it can, else through memory."""
    dst.flush()
    src.flush()
    size = os.fstat(src.fileno()).st_size
    done = 0
    copy = getattr(os, "copy_file_range", None)
    if copy is not None:
        with contextlib.suppress(OSError):  # not supported here: the rest goes through memory
            while done < size:
                n = copy(src.fileno(), dst.fileno(), size - done, done)
                if n <= 0:
                    break
                done += n
        dst.seek(0, os.SEEK_END)
    src.seek(done)
    shutil.copyfileobj(src, dst, 1 << 20)


def arrow_column(prefix: bytes, arr: Any, kind: str) -> tuple[Any, ...]:
    """An Arrow array as a column of ``cirron.export._cjson.encode_rows``, the compiled row encoder
    (``kind``: ``i`` ints, ``s`` strings to quote, ``r`` JSON texts, ``c`` CSV fields)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    bufs = arr.buffers()
    valid = bufs[0] if arr.null_count else None
    if kind == "i":
        return prefix, kind, valid, None, bufs[1], arr.offset
    if arr.type == pa.large_string():
        kind = kind.upper()
    return prefix, kind, valid, bufs[1], bufs[2], arr.offset
