"""A small, defensive reader and writer for the safetensors container format.

Layout of a file: an 8-byte little-endian header length ``N``, then ``N`` bytes of UTF-8 JSON
(``{"<tensor>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
"__metadata__": {"k": "v"}}``), then the data region. Offsets are relative to the data region.

The reader trusts nothing in the file: the header length is capped and must fit the file, the JSON
must have the documented shape, every tensor's byte range must lie inside the data region, ranges
must not overlap and must be exactly ``itemsize * prod(shape)`` bytes long. Values are read with
seek + read of the bytes asked for, never the whole file. It needs neither numpy nor the
``safetensors`` package (numpy is used only by :func:`to_numpy`).

The writer streams each tensor's buffer straight into a temporary file beside the destination and
renames it into place, so a reader never sees a half-written blob under the final name.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cirron._atomic import atomic_file
from cirron._errors import CirronSpoolError
from cirron._safeopen import NotRegularFile, open_regular

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "DType",
    "SafetensorsError",
    "SafetensorsHeader",
    "TensorInfo",
    "export_tensor",
    "read_header",
    "read_tensor_bytes",
    "read_values",
    "safe_filename",
    "to_numpy",
    "write_file",
]

#: Headers larger than this are refused (the format's own reference reader uses the same cap).
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(CirronSpoolError):
    """A safetensors file is missing, truncated, or its header is invalid."""


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    #: ``int``, ``uint``, ``float`` or ``bool``
    kind: str
    #: :mod:`struct` code for a direct decode, ``None`` for BF16/F8 (decoded by hand)
    struct_code: str | None
    #: numpy dtype string, ``None`` where numpy has no native type (BF16, F8)
    numpy: str | None


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("F64", 8, "float", "d", "<f8"),
        DType("F32", 4, "float", "f", "<f4"),
        DType("F16", 2, "float", "e", "<f2"),
        DType("BF16", 2, "float", None, None),
        DType("F8_E4M3", 1, "float", None, None),
        DType("F8_E5M2", 1, "float", None, None),
        DType("I64", 8, "int", "q", "<i8"),
        DType("I32", 4, "int", "i", "<i4"),
        DType("I16", 2, "int", "h", "<i2"),
        DType("I8", 1, "int", "b", "i1"),
        DType("U64", 8, "uint", "Q", "<u8"),
        DType("U32", 4, "uint", "I", "<u4"),
        DType("U16", 2, "uint", "H", "<u2"),
        DType("U8", 1, "uint", "B", "u1"),
        DType("BOOL", 1, "bool", "?", "?"),
    )
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    #: absolute byte offsets in the file (header and length prefix included)
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize


@dataclass
class SafetensorsHeader:
    path: Path
    file_size: int
    data_start: int
    metadata: dict[str, str] = field(default_factory=dict)
    #: tensors in data-offset order
    tensors: list[TensorInfo] = field(default_factory=list)

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def get(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# --------------------------------------------------------------------------------------- reading


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return type(x) is int


def read_header(path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES,
                follow_symlinks: bool = True) -> SafetensorsHeader:
    """Read and validate the header of ``path``. Raises :class:`SafetensorsError` with a one-line reason
    (also for a symlink when ``follow_symlinks`` is false)."""
    path = Path(path)
    try:
        with open_regular(path, follow_symlinks=follow_symlinks) as f:
            file_size = os.fstat(f.fileno()).st_size
            return _parse_header(f, path, file_size, max_header_bytes)
    except SafetensorsError:
        raise
    except (IsADirectoryError, NotRegularFile) as exc:
        if path.is_dir():
            raise SafetensorsError(f"{path} is a directory, not a safetensors file") from exc
        raise SafetensorsError(f"{path} is not a regular file (a FIFO, device or socket)") from exc
    except FileNotFoundError as exc:
        raise SafetensorsError(f"Snapshot blob not found: {path}") from exc
    except OSError as exc:
        raise SafetensorsError(f"Cannot read {path}: {exc.strerror or exc}") from exc


def _parse_header(f: BinaryIO, path: Path, file_size: int, max_header_bytes: int) -> SafetensorsHeader:
    def bad(reason: str) -> SafetensorsError:
        return SafetensorsError(f"Invalid safetensors file {path}: {reason}")

    prefix = f.read(8)
    if len(prefix) < 8:
        raise bad(f"truncated ({file_size} bytes, too short for a header)")
    (n,) = struct.unpack("<Q", prefix)
    if n < 2:
        raise bad(f"header length {n} is too small")
    if n > max_header_bytes:
        raise bad(f"header length {n} exceeds the {max_header_bytes}-byte limit")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the file ({file_size} bytes)")
    raw = f.read(n)
    if len(raw) != n:
        raise bad("truncated header")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise bad("header is not a JSON object")

    data_start = 8 + n
    data_size = file_size - data_start
    metadata: dict[str, str] = {}
    tensors: list[TensorInfo] = []
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise bad("__metadata__ is not an object")
            metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()}
            continue
        shown = repr(name[:80])
        if not name:
            raise bad("empty tensor name")
        if not isinstance(entry, dict):
            raise bad(f"entry {shown} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise bad(f"tensor {shown} has unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {shown} has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise bad(f"tensor {shown} has invalid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"tensor {shown} data_offsets [{begin}, {end}] lie outside the data region ({data_size} bytes)")
        expected = DTYPES[dtype].itemsize * math.prod(shape)
        if end - begin != expected:
            raise bad(f"tensor {shown} is {end - begin} bytes but {dtype} {shape} needs {expected}")
        tensors.append(TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end))

    tensors.sort(key=lambda t: (t.start, t.end))
    prev_end = data_start
    prev_name = None
    for t in tensors:
        if t.start < prev_end and t.nbytes:
            raise bad(f"tensors {prev_name!r} and {t.name!r} overlap")
        if t.nbytes:
            prev_end, prev_name = t.end, t.name
    return SafetensorsHeader(path, file_size, data_start, metadata, tensors)


def _read_exact(path: Path, offset: int, size: int) -> bytes:
    try:
        with open_regular(path) as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as exc:
        raise SafetensorsError(f"Cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) != size:
        raise SafetensorsError(f"Invalid safetensors file {path}: truncated data")
    return data


def read_tensor_bytes(header: SafetensorsHeader, info: TensorInfo) -> bytes:
    """The raw little-endian bytes of one tensor."""
    return _read_exact(header.path, info.start, info.nbytes)


def read_values(header: SafetensorsHeader, info: TensorInfo, start: int, count: int) -> list[Any]:
    """``count`` values of ``info`` from flat index ``start`` as Python scalars.

    Reads only those bytes. F16/BF16/F8 become floats (upcast through float32), integers stay exact
    Python ints (64-bit included), BOOL becomes bool.
    """
    numel = info.numel
    start = max(0, min(start, numel))
    count = max(0, min(count, numel - start))
    if count == 0:
        return []
    size = info.itemsize
    raw = _read_exact(header.path, info.start + start * size, count * size)
    return decode(info.dtype, raw)


def decode(dtype: str, raw: bytes) -> list[Any]:
    """Little-endian ``raw`` bytes of ``dtype`` as a list of Python scalars."""
    d = DTYPES[dtype]
    n = len(raw) // d.itemsize
    if d.struct_code is not None:
        values = list(struct.unpack(f"<{n}{d.struct_code}", raw[: n * d.itemsize]))
        if d.name == "F16":
            # round-trip through float32 so the display matches an upcast, not a float64 widening
            values = list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *values)))
        return values
    if d.name == "BF16":
        widened = bytearray(4 * n)
        widened[2::4] = raw[0::2]
        widened[3::4] = raw[1::2]
        return list(struct.unpack(f"<{n}f", bytes(widened)))
    table = _f8_table(d.name)
    return [table[b] for b in raw]


_F8_TABLES: dict[str, list[float]] = {}


def _f8_table(name: str) -> list[float]:
    table = _F8_TABLES.get(name)
    if table is None:
        table = [_decode_f8(b, name) for b in range(256)]
        _F8_TABLES[name] = table
    return table


def _decode_f8(b: int, name: str) -> float:
    sign = -1.0 if b & 0x80 else 1.0
    if name == "F8_E4M3":  # "fn" variant: no infinities, S.1111.111 is NaN
        e, m = (b >> 3) & 0xF, b & 0x7
        if e == 0xF and m == 0x7:
            return math.nan
        if e == 0:
            return sign * m * 2.0**-9
        return sign * (1 + m / 8) * 2.0 ** (e - 7)
    e, m = (b >> 2) & 0x1F, b & 0x3  # F8_E5M2: IEEE-like
    if e == 0x1F:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * m * 2.0**-16
    return sign * (1 + m / 4) * 2.0 ** (e - 15)


def to_numpy(header: SafetensorsHeader, info: TensorInfo) -> np.ndarray[Any, Any]:
    """One tensor as a numpy array (BF16 and F8 upcast to float32). Reads only its bytes."""
    import numpy as np

    raw = read_tensor_bytes(header, info)
    d = DTYPES[info.dtype]
    if d.numpy is not None:
        arr = np.frombuffer(raw, dtype=d.numpy).copy()
    elif d.name == "BF16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.asarray(_f8_table(d.name), dtype=np.float32)[np.frombuffer(raw, dtype=np.uint8)]
    return arr.reshape(info.shape)


# --------------------------------------------------------------------------------------- writing

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str, suffix: str = ".safetensors") -> str:
    """A tensor name turned into one harmless file name (``/``, ``..``, NUL etc. become ``_``)."""
    base = _UNSAFE_CHARS.sub("_", name)[:200]
    if not base.strip("."):
        base = "_" * max(1, len(base))
    base = base.replace("..", "__")
    return base + suffix


def _buffer_view(buf: Any) -> memoryview:
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError("tensor buffer must be C-contiguous")
    return mv


def write_file(
    path: str | os.PathLike[str],
    tensors: Iterable[tuple[str, str, Sequence[int], Any]],
    metadata: Mapping[str, str] | None = None,
    *,
    fsync: bool = True,
    reserve: Callable[[int], None] | None = None,
) -> int:
    """Write a safetensors file atomically; returns its size in bytes.

    ``tensors`` yields ``(name, dtype, shape, buffer)`` where ``buffer`` is any C-contiguous object
    with the buffer protocol (bytes, a numpy array, a memoryview) holding the little-endian values.
    The data is streamed from the buffers without an intermediate copy. ``reserve(size)`` is called
    with the final file size before anything is written (a disk-cap check may raise there).
    """
    path = Path(path)
    entries: list[tuple[str, memoryview]] = []
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, buf in tensors:
        if name == "__metadata__" or not name:
            raise ValueError(f"invalid tensor name {name!r}")
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown safetensors dtype {dtype!r}")
        mv = _buffer_view(buf)
        shape = [int(d) for d in shape]
        expected = DTYPES[dtype].itemsize * math.prod(shape)
        if mv.nbytes != expected:
            raise ValueError(f"tensor {name!r}: buffer has {mv.nbytes} bytes, {dtype} {shape} needs {expected}")
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + expected]}
        entries.append((name, mv))
        offset += expected
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the reference implementation pads the header to 8 bytes
    if reserve is not None:
        reserve(8 + len(blob) + offset)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, mv in entries:
            if mv.nbytes:
                f.write(mv)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return 8 + len(blob) + offset


def export_tensor(
    header: SafetensorsHeader,
    info: TensorInfo,
    dest: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    *,
    chunk_bytes: int = 1 << 20,
) -> int:
    """Write a fresh single-tensor safetensors file at ``dest`` holding ``info`` from ``header``'s
    file, streamed in chunks (never the whole tensor in memory). Atomic; returns the file size."""
    dest = Path(dest)
    meta = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    doc = {**meta, info.name: {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [0, info.nbytes]}}
    blob = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_file(dest) as tmp, open(header.path, "rb") as src, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        src.seek(info.start)
        left = info.nbytes
        while left:
            chunk = src.read(min(left, chunk_bytes))
            if not chunk:
                raise SafetensorsError(f"Invalid safetensors file {header.path}: truncated data")
            out.write(chunk)
            left -= len(chunk)
    return 8 + len(blob) + info.nbytes
