"""One session's records as Arrow columns: the fast reader behind the exports and the viewer.

For a session whose batch files hold its records and nothing else (:attr:`SessionInfo.streamable`,
what cirron's writer produces) and that is not too big (:data:`MAX_SESSION_BYTES`),
:func:`read_columns` reads each batch file once (:func:`cirron.spool.reader.read_batch`, so the
tolerant reading of other writers' spellings applies), turns its records into Arrow columns
straight away, and then does the rest on whole columns:

* dedupe by id (:func:`cirron.spool.reconstruct.span_wins`: the last closed record of a span,
  else its last one; the last record of a mark or snapshot), on the 128 bits of the ids that
  are 32 lowercase hex digits (sorted numpy keys) and on the text of the others;
* each winning span's parent row, and from it the enclosing ``epoch`` and ``batch`` index of every
  span and mark (pointer jumping in numpy);
* which marks belong to the session (the rules of :mod:`cirron.spool.stream`: a mark on one of its
  spans, or on the ``"root"`` sentinel in one of the session's own batches).

The result, :class:`SessionColumns`, holds the same winning records in the same order as
:func:`cirron.spool.stream.iter_chunks` yields them, so an exporter writes identical content from
either. Anything the columns cannot carry exactly (a name or kind that is not a string, a
session too big to hold) makes :func:`read_columns` return ``None`` and the caller reads the
session the reference way. pyarrow is imported here, so only by the features that read columns.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Optional, TypeVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron import _native as native
from cirron._schema import BATCH_SPAN_NAME, EPOCH_SPAN_NAME, ROOT_SENTINEL
from cirron.spool import prefetch
from cirron.spool.arrays import PairIndex, enclosing_steps, hex_halves, last_of_each, packed_hex_halves
from cirron.spool.catalog import SessionInfo
from cirron.spool.parallel import file_bytes, ordered_map
from cirron.spool.reader import NONSTRICT_JSON, _Id, _Int, read_batch

__all__ = ["MARK_COLUMNS", "MAX_SESSION_BYTES", "SPAN_COLUMNS", "SessionColumns", "can_read", "read_columns"]

#: Sessions whose batch files are bigger than this are read the reference (bounded, two-pass)
#: way: the columns of one session take about 0.6 bytes per byte of JSON.
MAX_SESSION_BYTES = 256 << 20

SPAN_COLUMNS = ("id", "parent_id", "name", "index", "start_ns", "end_ns", "cpu_ns", "gpu_ns", "memory_peak_bytes",
                "thread_id", "pid", "rank")
MARK_COLUMNS = ("id", "span_id", "name", "value_type", "kind", "ts_ns", "thread_id")
_SPAN_TYPES = (pa.string(), pa.string(), pa.string(), *[pa.int64()] * 9)
_MARK_TYPES = (pa.string(), pa.string(), pa.string(), pa.string(), pa.string(), pa.int64(), pa.int64())
_STR_COLUMNS = ("name",)
_MARK_STR_COLUMNS = ("name", "value_type", "kind")


class Unsupported(Exception):
    """The records hold something the columns cannot carry exactly."""


@dataclass
class SessionColumns:
    """The winning records of one session, in write order, as columns.

    ``spans``: :data:`SPAN_COLUMNS` plus ``attrs`` (the raw JSON text of each record's attrs) and
    ``file`` (the position of its batch file in the session's files). ``marks``:
    :data:`MARK_COLUMNS`, ``value`` (float64: floats, ints and bools), ``value_text`` (string
    values), ``attrs`` and ``file``; :meth:`values` gives the values as read (for JSON).
    The epoch/batch arrays are int64, -1 where there is none.
    """

    session: SessionInfo
    spans: pa.Table
    marks: pa.Table
    snapshots: list[Any]
    span_epoch: np.ndarray
    span_batch: np.ndarray
    mark_epoch: np.ndarray
    mark_batch: np.ndarray
    #: The mark values as read, when some are not floats (``None``: each is the float in ``value``).
    mark_values: list[Any] | None
    #: Row of each winning span's parent among the winning spans (-1: not among them).
    span_parent: np.ndarray
    #: Row of each winning mark's ``span_id`` among the winning spans (-1: not among them, or
    #: null); ``None`` where the reader did not keep it (the encoders then look the ids up).
    mark_span: np.ndarray | None = None


    def values(self, start: int = 0, stop: int | None = None) -> list[Any]:
        """The values of marks ``start:stop`` as read (bools, ints, strings and floats)."""
        if self.mark_values is not None:
            return self.mark_values[start:stop]
        n = self.marks.num_rows if stop is None else min(stop, self.marks.num_rows)
        return self.marks["value"].slice(start, max(0, n - start)).to_pylist()


def can_read(info: SessionInfo) -> bool:
    """Whether :func:`read_columns` can read ``info`` (it may still find it cannot)."""
    return info.streamable and info.bytes <= MAX_SESSION_BYTES


def _raw_text(raws: list[Any]) -> pa.Array:
    """A string array of ``msgspec.Raw`` JSON texts, built from one concatenated buffer."""
    n = len(raws)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, raws), dtype=np.int64, count=n), out=offsets[1:])
    data = b"".join(raws)
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:  # not UTF-8: decoded with replacement, as the reference does
        return pa.array([bytes(r).decode("utf-8", "replace") for r in raws], pa.string())
    return arr.cast(pa.string())


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numpy array of a column without nulls (chunks combined; no pandas involved)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _strings_ok(values: list[Any]) -> bool:
    return all(type(v) is str or v is None for v in values)


def _columns(records: list[Any], names: tuple[str, ...], types: tuple[Any, ...],
             str_cols: tuple[str, ...]) -> dict[str, pa.Array]:
    out = {}
    for c, t in zip(names, types):
        values = list(map(attrgetter(c), records))
        if c in str_cols and not _strings_ok(values):
            raise Unsupported(c)
        out[c] = pa.array(values, t)
    return out


def _floats(values: list[Any]) -> pa.Array:
    # through numpy: pa.array(list, pa.float64()) converts element by element, 50 times slower
    return pa.array(np.array(values, dtype=np.float64))


def _mark_value_columns(values: list[Any]) -> tuple[pa.Array, pa.Array]:
    """``(value, value_text)`` as the Parquet export defines them."""
    types = set(map(type, values))
    if types <= {float}:
        return _floats(values), pa.nulls(len(values), pa.string())
    num: list[Any] = []
    text: list[Any] = []
    for v in values:
        t = type(v)
        if t is float:
            num.append(v)
        elif t is bool or t is int:
            try:
                num.append(float(v))
            except OverflowError:
                num.append(None)
        else:
            num.append(None)
        text.append(v if t is str else None)
    return pa.array(num, pa.float64()), pa.array(text, pa.string())


class _Ids:
    """A string column of ids with, where an id is 32 lowercase hex digits (``good``), its 128
    bits as two 64-bit halves; the dedupe and the lookups work on those and compare the text of
    the other ids (another spelling of the same number, uppercase for one, is another id)."""

    def __init__(self, col: pa.ChunkedArray | pa.Array, good: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> None:
        self.col, self.good, self.hi, self.lo = col, good, hi, lo

    @classmethod
    def of(cls, col: pa.ChunkedArray | pa.Array) -> _Ids:
        n = len(col)
        good = np.zeros(n, dtype=bool)
        hi = np.zeros(n, dtype=np.uint64)
        lo = np.zeros(n, dtype=np.uint64)
        at = 0
        for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
            m = len(chunk)
            if m:
                _hex_rows(chunk, good[at:at + m], hi[at:at + m], lo[at:at + m])
            at += m
        return cls(col, good, hi, lo)

    def filter(self, keep: np.ndarray) -> _Ids:
        return _Ids(self.col.filter(pa.array(keep)), self.good[keep], self.hi[keep], self.lo[keep])

    def text(self, rows: np.ndarray) -> pa.Array:
        """The ids of ``rows``, as one array."""
        got = self.col.take(pa.array(rows))
        return got.combine_chunks() if isinstance(got, pa.ChunkedArray) else got


def _hex_rows(chunk: pa.Array, good: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> None:
    """Fill ``good``/``hi``/``lo`` (see :class:`_Ids`) for one chunk of a string column, from its
    buffers (no Python strings)."""
    m = len(chunk)
    if not pa.types.is_string(chunk.type) and not pa.types.is_large_string(chunk.type):
        chunk = chunk.cast(pa.string())
    bufs = chunk.buffers()
    if _cbatch is not None and chunk.type == pa.string():
        h, lo_, plain = _cbatch.hex_keys(bufs[1], b"" if bufs[2] is None else bufs[2], bufs[0], chunk.offset, m, True)
        good[:] = np.frombuffer(plain, dtype=np.bool_)
        hi[:] = np.frombuffer(h, dtype=np.uint64)
        lo[:] = np.frombuffer(lo_, dtype=np.uint64)
        return
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=width)[chunk.offset: chunk.offset + m + 1].astype(np.int64)
    if bufs[2] is None:
        return
    data = np.frombuffer(bufs[2], dtype=np.uint8)
    plain = np.diff(offsets) == 32
    if chunk.null_count:
        plain &= _np(chunk.is_valid())
    rows = np.flatnonzero(plain)
    if not rows.size:
        return
    if rows.size == m and offsets[-1] - offsets[0] == 32 * m:  # all 32 characters, back to back: one call
        halves = packed_hex_halves(data[offsets[0]:offsets[-1]].tobytes(), lower_only=True)
        if halves is not None:
            good[:] = True
            hi[:] = halves[:, 0]
            lo[:] = halves[:, 1]
            return
    ok, halves = hex_halves(data[offsets[rows, None] + np.arange(32)], lower_only=True)
    rows = rows[ok]
    good[rows] = True
    hi[rows] = halves[:, 0]
    lo[rows] = halves[:, 1]


def _winners(ids: _Ids, closed: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the rows that win the dedupe by id (rows are in write order)."""
    if ids.good.all():
        return last_of_each(ids.hi, ids.lo, closed)
    # an id of 32 lowercase hex digits never equals one that is not: the two kinds dedupe apart
    keep = np.zeros(len(ids.good), dtype=bool)
    pairs, texts = np.flatnonzero(ids.good), np.flatnonzero(~ids.good)
    if pairs.size:
        keep[pairs] = last_of_each(ids.hi[pairs], ids.lo[pairs], None if closed is None else closed[pairs])
    keep[texts] = _text_winners(ids.text(texts), None if closed is None else closed[texts])
    return keep


def _text_winners(ids: pa.Array, closed: np.ndarray | None) -> np.ndarray:
    """:func:`_winners` by the ids' text."""
    n = len(ids)
    if pc.count_distinct(ids).as_py() == n:  # no id repeats: every record wins
        return np.ones(n, dtype=bool)
    codes = _np(pc.dictionary_encode(ids).indices).astype(np.uint64)
    return last_of_each(codes, np.zeros(n, dtype=np.uint64), closed)


class _IdIndex:
    """Rows of distinct ids (:class:`_Ids`), to look ids up: by their 128 bits, or by their text
    for the ids that are not 32 lowercase hex digits."""

    def __init__(self, keys: _Ids) -> None:
        self._hex_rows = np.flatnonzero(keys.good)
        self._pairs = PairIndex(keys.hi[self._hex_rows], keys.lo[self._hex_rows])
        self._text_rows = np.flatnonzero(~keys.good)
        self._text = keys.text(self._text_rows) if self._text_rows.size else None

    def lookup(self, values: _Ids) -> np.ndarray:
        """Row of each value among the keys (-1: null or not there)."""
        out = np.full(len(values.good), -1, dtype=np.int64)
        rows = np.flatnonzero(values.good) if not values.good.all() else None
        hi, lo = (values.hi, values.lo) if rows is None else (values.hi[rows], values.lo[rows])
        if len(self._pairs) and len(hi):
            found = self._pairs.lookup(hi, lo)
            at = np.where(found >= 0, self._hex_rows[np.maximum(found, 0)], -1)
            if rows is None:
                out = at
            else:
                out[rows] = at
        if self._text is not None and rows is not None:
            rows = np.flatnonzero(~values.good)
            pos = _np(pc.fill_null(pc.index_in(values.text(rows), value_set=self._text), -1)).astype(np.int64)
            out[rows] = np.where(pos >= 0, self._text_rows[np.maximum(pos, 0)], -1)
        return out


def _snapshots(batches: list[tuple[bool, list[Any]]], win_ids: set[str]) -> list[Any]:
    """Winning snapshots of the session (last write wins), in write order."""
    last: dict[str, int] = {}
    flat: list[tuple[bool, Any]] = []
    for own, snaps in batches:
        for sn in snaps:
            last[sn.id] = len(flat)
            flat.append((own, sn))
    out = []
    for i, (own, sn) in enumerate(flat):
        if last[sn.id] != i:
            continue
        sid = sn.span_id
        if (sid is not None and sid != ROOT_SENTINEL and sid in win_ids) or \
                ((sid is None or sid == ROOT_SENTINEL) and own):
            out.append(sn)
    return out


def read_columns(info: SessionInfo, *, marks: bool = True) -> SessionColumns | None:
    """``info``'s winning records as columns, or ``None`` when this reader cannot read it exactly
    (see the module docstring); the caller then reads it the reference way. With ``marks=False``
    only the spans are read (the marks table is empty): what a spans-only export needs."""
    if not can_read(info):
        return None
    try:
        return _read(info, marks)
    except Unsupported:
        return None


class _Span(msgspec.Struct, gc=False):
    id: _Id
    parent_id: Optional[str] = None
    name: Optional[str] = None
    index: _Int = None
    start_ns: _Int = None
    end_ns: _Int = None
    cpu_ns: _Int = None
    gpu_ns: _Int = None
    memory_peak_bytes: _Int = None
    thread_id: _Int = None
    pid: _Int = None
    rank: _Int = None
    attrs: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


class _Mark(msgspec.Struct, gc=False):
    id: _Id
    span_id: Optional[str] = None
    name: Optional[str] = None
    value: Any = None
    value_type: Optional[str] = None
    kind: Optional[str] = None
    ts_ns: _Int = None
    thread_id: _Int = None
    attrs: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))


class _Batch(msgspec.Struct, gc=False):
    session_id: Any = msgspec.UNSET
    spans: Optional[list[_Span]] = None
    marks: Optional[list[_Mark]] = None
    snapshots: Any = None


class _SpansBatch(msgspec.Struct, gc=False):
    session_id: Any = msgspec.UNSET
    spans: Optional[list[_Span]] = None
    snapshots: Any = None


_DECODERS: dict[bool, Any] = {True: msgspec.json.Decoder(_Batch), False: msgspec.json.Decoder(_SpansBatch)}

_T = TypeVar("_T")
_FileCols = tuple[dict, dict, list, Any, list]
#: What :func:`file_batches` makes of one file.
FileBatches = tuple[pa.RecordBatch, pa.RecordBatch, list, bool, list]


#: The compiled parser of batch files into column buffers (``_cbatch.c``), when built and wanted.
_cbatch = native.load("cirron.spool._cbatch")


def _array(arrow_type: pa.DataType, rows: int, col: tuple) -> pa.Array:
    """An Arrow array over the buffers of one column that ``_cbatch.parse`` made."""
    validity, nulls, *buffers = col
    return pa.Array.from_buffers(arrow_type, rows, [None if validity is None else pa.py_buffer(validity),
                                                    *map(pa.py_buffer, buffers)], null_count=nulls)


def _compiled_file(data: bytes | memoryview, with_marks: bool) -> _FileCols | None:
    """What :func:`_fast_file`'s decoder would give, from the compiled parser (no Python object
    per record), or ``None`` where that parser is absent or leaves the file to the decoder."""
    return _parsed_columns(None if _cbatch is None else _cbatch.parse(data, with_marks))


def _parsed_columns(got: Any) -> _FileCols | None:
    """:func:`_compiled_file` of what ``_cbatch.parse`` gave (None: it declined)."""
    if got is None:
        return None
    sid, (n_spans, span_cols), (n_marks, mark_cols) = got
    spans_c = {c: _array(t, n_spans, span_cols[c]) for c, t in zip(SPAN_COLUMNS, _SPAN_TYPES)}
    spans_c["attrs"] = _array(pa.string(), n_spans, span_cols["attrs"])
    marks_c = {c: _array(t, n_marks, mark_cols[c]) for c, t in zip(MARK_COLUMNS, _MARK_TYPES)}
    value = np.frombuffer(mark_cols["value"][2], dtype=np.float64)
    marks_c["value"] = pa.array(value)
    marks_c["value_text"] = pa.nulls(n_marks, pa.string())
    marks_c["attrs"] = _array(pa.string(), n_marks, mark_cols["attrs"])
    return spans_c, marks_c, value.tolist(), sid, []


def _fast_file(data: bytes | memoryview, with_marks: bool = True) -> _FileCols | None:
    """One batch file's columns, decoded straight into the fields the columns need; ``None`` when
    the file needs :func:`read_batch`'s care: anything the strict types refuse (quoted or
    out-of-range integers, odd types, records without an id), mark values that are not plain
    floats, snapshots, or a writer without the lock protocol (whose spellings
    :mod:`cirron.spool.tolerant` maps). The compiled parser reads what it can, exactly as the
    decoder would."""
    compiled = _compiled_file(data, with_marks)
    if compiled is not None:
        return compiled
    try:
        batch = _DECODERS[with_marks].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if batch.session_id is msgspec.UNSET or batch.snapshots:
        return None
    spans = batch.spans or []
    marks = (batch.marks or []) if with_marks else []
    values = [m.value for m in marks]
    if not set(map(type, values)) <= {float}:
        return None
    spans_c = {c: pa.array(list(map(attrgetter(c), spans)), t) for c, t in zip(SPAN_COLUMNS, _SPAN_TYPES)}
    parent = spans_c["parent_id"]
    if len(parent) and pc.any(pc.equal(parent, "")).as_py():  # "no parent" from a writer that does not use null
        spans_c["parent_id"] = pc.if_else(pc.equal(parent, "").fill_null(False), pa.scalar(None, pa.string()), parent)
    spans_c["attrs"] = _raw_text([s.attrs for s in spans])
    marks_c = {c: pa.array(list(map(attrgetter(c), marks)), t) for c, t in zip(MARK_COLUMNS, _MARK_TYPES)}
    marks_c["value"] = _floats(values)
    marks_c["value_text"] = pa.nulls(len(values), pa.string())
    marks_c["attrs"] = _raw_text([m.attrs for m in marks])
    sid = batch.session_id
    return spans_c, marks_c, values, sid if type(sid) is str and sid else None, []


def _careful_file(bf: Any, with_marks: bool = True) -> _FileCols | None:
    """One batch file's columns from :func:`read_batch` (every tolerance of the reference reader)."""
    batch = read_batch(bf, lambda _m: None, "export")
    if batch is None:
        return None
    if batch.get(NONSTRICT_JSON):  # its attrs lost their non-finite numbers (OTLP keeps them)
        raise Unsupported("non-strict JSON")
    spans, marks = batch["spans"], batch["marks"] if with_marks else []
    spans_c = _columns(spans, SPAN_COLUMNS, _SPAN_TYPES, _STR_COLUMNS)
    spans_c["attrs"] = _raw_text([s.attrs for s in spans])
    marks_c = _columns(marks, MARK_COLUMNS, _MARK_TYPES, _MARK_STR_COLUMNS)
    values = [m.value for m in marks]
    marks_c["value"], marks_c["value_text"] = _mark_value_columns(values)
    marks_c["attrs"] = _raw_text([m.attrs for m in marks])
    return spans_c, marks_c, values, batch["session_id"], batch["snapshots"]


def read_file(bf: Any, with_marks: bool = True) -> _FileCols | None:
    from cirron._safeopen import open_regular

    early = _parsed_columns(prefetch.take(bf.path, with_marks))  # parsed while pyarrow was imported
    if early is not None:
        return early
    try:
        with open_regular(bf.path, follow_symlinks=False) as fh:
            data: bytes | memoryview | None = file_bytes(fh)
    except OSError:
        data = None
    fast = _fast_file(data, with_marks) if data else None
    del data
    return fast if fast is not None else _careful_file(bf, with_marks)


def file_batches(info: SessionInfo, file_no: int, got: _FileCols) -> FileBatches:
    """One batch file's columns (what :func:`read_file` read) as a span and a mark record batch
    (:func:`span_schema`, :func:`mark_schema`: with the file's position and each mark's
    ``attached`` code), its mark values as read, whether it is one of ``info``'s own batches, and
    its snapshots."""
    spans_c, marks_c, values, session_id, file_snaps = got
    own = session_id == info.id
    spans_c["file"] = pa.array(np.full(len(spans_c["id"]), file_no, dtype=np.int32))
    marks_c["file"] = pa.array(np.full(len(values), file_no, dtype=np.int32))
    # 1: hangs from a span id; 0: from the sentinel (or none) in a batch of the session; -1: neither
    sid = marks_c["span_id"]
    on_span = pc.and_kleene(pc.is_valid(sid), pc.not_equal(sid, ROOT_SENTINEL)).fill_null(False)
    marks_c["attached"] = pa.array(np.where(_np(on_span), 1, 0 if own else -1).astype(np.int8))
    return (pa.RecordBatch.from_pydict(spans_c, schema=span_schema()),
            pa.RecordBatch.from_pydict(marks_c, schema=mark_schema()), values, own, file_snaps)


def read_session_files(info: SessionInfo, with_marks: bool = True) -> Generator[tuple[int, FileBatches], None, None]:
    """``(position, file_batches(...))`` of each of ``info``'s batch files that :func:`read_file`
    can read, in the files' order, parsed on :func:`cirron.spool.parallel.read_threads` threads
    (a few files ahead of the caller). Close it when stopping early."""
    return map_session_files(info, with_marks, lambda file_no, batches: (file_no, batches))


def map_session_files(info: SessionInfo, with_marks: bool,
                      then: Callable[[int, FileBatches], _T]) -> Generator[_T, None, None]:
    """:func:`read_session_files` with ``then(position, file_batches(...))`` of each file, computed
    on the reading threads too (work that releases the GIL then runs beside the caller's)."""
    def one(item: tuple[int, Any]) -> _T | None:
        file_no, bf = item
        got = read_file(bf, with_marks)
        return None if got is None else then(file_no, file_batches(info, file_no, got))

    with closing(ordered_map(one, enumerate(info.files))) as results:
        for done in results:
            if done is not None:
                yield done


def _read(info: SessionInfo, with_marks: bool) -> SessionColumns:
    from cirron.spool.reconstruct import paused_gc

    with paused_gc():  # millions of short-lived lists: the cyclic GC would rescan them over and over
        return _read_session(info, with_marks)


def _read_session(info: SessionInfo, with_marks: bool) -> SessionColumns:
    span_batches: list[pa.RecordBatch] = []
    mark_batches: list[pa.RecordBatch] = []
    #: Mark values of the files whose values are not all floats (by position in mark_batches).
    odd_values: dict[int, list] = {}
    mark_lengths: list[int] = []
    snaps: list[tuple[bool, list]] = []
    pool = pa.default_memory_pool()
    with closing(read_session_files(info, with_marks)) as files:
        for k, (_file_no, (span_batch, mark_batch, values, own, file_snaps)) in enumerate(files):
            if k % 16 == 15:
                pool.release_unused()  # give back what the files read so far no longer need
            span_batches.append(span_batch)
            if not set(map(type, values)) <= {float}:
                odd_values[len(mark_batches)] = values
            mark_batches.append(mark_batch)
            mark_lengths.append(len(values))
            if file_snaps:
                snaps.append((own, file_snaps))
            del span_batch, mark_batch

    spans_t = _table(span_batches, span_schema())
    marks_t = _table(mark_batches, mark_schema())
    del span_batches, mark_batches

    span_ids = _Ids.of(spans_t["id"])
    keep = _winners(span_ids, _np(pc.is_valid(spans_t["end_ns"])))
    if not keep.all():
        spans_t = spans_t.filter(pa.array(keep))
        span_ids = span_ids.filter(keep)
    by_id = _IdIndex(span_ids)
    parent = by_id.lookup(_Ids.of(spans_t["parent_id"]))
    names = spans_t["name"]
    index = spans_t["index"]
    has_index = _np(pc.is_valid(index))
    kind_e = _np(pc.equal(names, EPOCH_SPAN_NAME).fill_null(False)) & has_index
    kind_b = _np(pc.equal(names, BATCH_SPAN_NAME).fill_null(False)) & has_index
    index_np = _np(pc.fill_null(index, -1))
    span_epoch, span_batch = enclosing_steps(parent, kind_e, kind_b, index_np)

    keep_m = _winners(_Ids.of(marks_t["id"]), None)
    row = by_id.lookup(_Ids.of(marks_t["span_id"]))
    attached = _np(marks_t["attached"])
    hit = (attached == 1) & (row >= 0)
    keep_m &= hit | (attached == 0)
    safe = np.maximum(row, 0)
    mark_epoch = np.where(hit, span_epoch[safe] if len(span_epoch) else -1, -1)[keep_m]
    mark_batch = np.where(hit, span_batch[safe] if len(span_batch) else -1, -1)[keep_m]
    marks_t = marks_t.drop_columns(["attached"])
    mark_values: list[Any] | None = None
    if odd_values:
        mark_values = []
        start = 0
        for i, length in enumerate(mark_lengths):
            mark_values.extend(odd_values[i] if i in odd_values else marks_t["value"].slice(start, length).to_pylist())
            start += length
    if not keep_m.all():
        marks_t = marks_t.filter(pa.array(keep_m))
        if mark_values is not None:
            mark_values = [v for v, k in zip(mark_values, keep_m.tolist()) if k]
        row = row[keep_m]
    win_set = set(span_ids.col.to_pylist()) if snaps else set()
    return SessionColumns(info, spans_t, marks_t, _snapshots(snaps, win_set), span_epoch, span_batch,
                          mark_epoch, mark_batch, mark_values, parent, row)


def span_schema() -> pa.Schema:
    return pa.schema([*zip(SPAN_COLUMNS, _SPAN_TYPES), ("attrs", pa.string()), ("file", pa.int32())])


def mark_schema() -> pa.Schema:
    return pa.schema([*zip(MARK_COLUMNS, _MARK_TYPES), ("value", pa.float64()), ("value_text", pa.string()),
                      ("attrs", pa.string()), ("file", pa.int32()), ("attached", pa.int8())])


def _table(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    if not batches:
        return schema.empty_table()
    return pa.Table.from_batches([b.select(schema.names) for b in batches], schema)

