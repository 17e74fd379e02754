"""What the OTLP and Perfetto exports of a session too big for whole columns share: exact keys of
ids, a sorted index of the session's span ids, and spilled Arrow tables in a temporary directory.

The column encoders find a mark's span by the exact text of its ``span_id`` (``index_in`` on the
span ids), so the pieces of one session are joined the same way here: an id of 32 lowercase hex
digits is keyed by its 128 bits, any other id by a BLAKE2 digest of its text (another spelling of
the same number, uppercase for one, is another key, as it is another string).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cirron.export._otlp_columns import CannotEncode
from cirron.spool.arrays import JoinedIndex
from cirron.spool.columnar import _Ids

__all__ = ["SpanIndex", "Spill", "exact_keys"]


def exact_keys(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hi, lo, valid)`` of a string column: 128-bit keys equal exactly when the texts are equal
    (see the module docstring); ``valid`` is False for nulls (which match no span)."""
    ids = _Ids.of(col)
    valid = col.is_valid()
    valid = (valid.combine_chunks() if isinstance(valid, pa.ChunkedArray) else valid).to_numpy(zero_copy_only=False)
    hi, lo = ids.hi, ids.lo
    odd = np.flatnonzero(~ids.good & valid)
    if odd.size:
        for i, text in zip(odd.tolist(), ids.text(odd).to_pylist()):
            d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, person=b"cirron.text").digest()
            hi[i], lo[i] = int.from_bytes(d[:8], "big"), int.from_bytes(d[8:], "big")
    return hi, lo, valid


class SpanIndex:
    """The session's span ids by exact key, to find a span's row (in session order) from an id.
    Built from the keys of each piece's spans, in order; about 16 bytes per span."""

    def __init__(self) -> None:
        self._join: list[np.ndarray] = []
        self._hi: list[np.ndarray] = []
        self.n = 0

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        self._join.append(hi ^ lo)
        self._hi.append(hi)
        self.n += len(hi)

    def seal(self) -> None:
        """Sort the keys (after the last :meth:`add`); two spans of one key cannot be told apart by
        their ids, which the column encoders would, so they raise :class:`CannotEncode`."""
        join = np.concatenate(self._join) if self._join else np.zeros(0, np.uint64)
        self._join = []
        self.hi = np.concatenate(self._hi) if self._hi else np.zeros(0, np.uint64)
        self._hi = []
        self._index = JoinedIndex.of(join, self.hi.__getitem__, np.int32 if self.n < 2**31 - 1 else np.int64)
        del join
        if self._index.repeats_a_key():
            raise CannotEncode("two spans share a key")

    def lookup(self, hi: np.ndarray, lo: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Row of each key's span (-1: none), int64."""
        rows = self._index.lookup(hi ^ lo, hi.__getitem__).astype(np.int64)
        rows[~valid] = -1
        return rows


class Spill:
    """Arrow tables (with optional Python values beside them) kept in numbered files of a
    temporary directory, appended to and read back whole (each file once)."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.dir, self.prefix = directory, prefix
        self._writers: dict[int, Any] = {}
        self._values: dict[int, Any] = {}
        self.rows: dict[int, int] = {}

    def _path(self, k: int, ext: str) -> Path:
        return self.dir / f"{self.prefix}-{k}.{ext}"

    def append(self, k: int, table: pa.Table, values: list[Any] | None = None) -> None:
        """Add ``table``'s rows to file ``k`` (``values``: one Python value per row, or ``None``)."""
        w = self._writers.get(k)
        if w is None:
            w = self._writers[k] = pa.ipc.new_file(str(self._path(k, "arrow")), table.schema)
            self._values[k] = open(self._path(k, "pickle"), "wb")  # noqa: SIM115 - closed in close()
        w.write_table(table)
        pickle.dump((table.num_rows, values), self._values[k], protocol=pickle.HIGHEST_PROTOCOL)
        self.rows[k] = self.rows.get(k, 0) + table.num_rows

    def append_each(self, keys: np.ndarray, table: pa.Table, values: list[Any] | None = None) -> None:
        """Add each row of ``table`` to file ``keys[row]`` (rows of one key keep their order)."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)]):
            rows = order[a:b]
            run = table.take(pa.array(rows)) if (a, b) != (0, len(order)) else table
            self.append(int(sorted_keys[a]), run, None if values is None else [values[i] for i in rows.tolist()])

    def close(self) -> None:
        for k in list(self._writers):
            self._writers.pop(k).close()
            self._values.pop(k).close()

    def read(self, k: int, schema: pa.Schema) -> tuple[pa.Table, list[Any] | None]:
        """File ``k``'s table (empty with ``schema`` when nothing was added) and its values, one per
        row where any run had values (the others' from ``value_of``), else ``None``; the file is
        removed once read (it is closed first if it was still being appended to)."""
        writer = self._writers.pop(k, None)
        if writer is not None:
            writer.close()
            self._values.pop(k).close()
        path = self._path(k, "arrow")
        if not path.exists():
            return schema.empty_table(), None
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # mapped: no copy into fresh pages
        runs = []
        with open(self._path(k, "pickle"), "rb") as fh:
            while True:
                try:
                    runs.append(pickle.load(fh))
                except EOFError:
                    break
        path.unlink()
        self._path(k, "pickle").unlink()
        if all(v is None for _n, v in runs):
            return table, None
        values: list[Any] = []
        at = 0
        for n, v in runs:
            values.extend(v if v is not None else table["value"].slice(at, n).to_pylist())
            at += n
        return table, values
