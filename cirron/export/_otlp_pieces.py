"""The OTLP/JSON spans of a session too big for whole columns, encoded piece by piece.

:func:`cirron.spool.pieces.read_pieces` gives the session's winning records in pieces, as often as
they are read; a mark is an event of its span (and a GenAI ``request`` span takes attributes from
its marks), so a piece's spans are encoded with every mark that hangs from them, wherever in the
session those are.

Usually the pieces' own rows of the marks' spans (:func:`~cirron.spool.pieces.read_pieces`'s
``mark_spans``) say where each mark goes (:class:`_Routes`): the pieces are read once, and a mark on
a span of a later piece waits in a temporary file until that piece is encoded. Where they cannot
(an id with an uppercase hex digit, whose key would also match another spelling; a mark on a span
of an earlier piece; marks of no span in a session without root), the marks are routed by exact
keys:

1. the pieces are read a first time for their keys: the exact keys of their span ids go to a
   :class:`~cirron.export._piecewise.SpanIndex`; each mark whose span is in its own piece stays
   there (the row of its span in the piece goes to a small file), the others (on the sentinel,
   on a span of another piece or of none) are spilled to temporary Arrow IPC files with the keys
   of their ``span_id``;
2. the spilled marks are routed to the file of the piece that holds their span (the session's
   root for marks on the sentinel or on no span of the session; a file of their own, written last
   as placeholder spans, when there is no root), each with the row of its span there;
3. the pieces are read again and each piece's spans are encoded with its own marks and those
   routed to it, in session order, by the column encoder
   (:func:`cirron.export._otlp_columns.write_spans`): the same bytes as for the whole session.
   A piece is written (the compiled encoder, without the GIL) on a thread while the next one is
   prepared (attrs, ids' digests: Python's share of the work).

Memory: 4 bytes per mark (its span's row) and, with a first read, about 16 bytes per span for the
index, plus one piece and its marks. Disk: 4 bytes per
mark, and the columns of the marks that are not in their span's piece twice at most (usually
few: a mark is written in the batch of its span or before it), besides the spill of
:func:`~cirron.spool.pieces.read_pieces`; removed when the export ends or fails.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._schema import ROOT_SENTINEL, SESSION_SPAN_NAME
from cirron.export._otlp_columns import CannotEncode, prepare_spans, write_prepared
from cirron.export._piecewise import SpanIndex, Spill, exact_keys
from cirron.spool.arrays import JoinedIndex
from cirron.spool.catalog import SessionInfo

__all__ = ["write_spans_in_pieces"]

#: A piece's own mark that is encoded with another piece's spans (in a piece's marks' span rows).
_AWAY = -2


class _Commas:
    """A file that puts a comma before the next piece's text when spans were written before."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.pending = False

    def write(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        if self.pending:
            self.fh.write(b",")
            self.pending = False
        self.fh.write(data)


def write_spans_in_pieces(fh: Any, info: SessionInfo, open_end_ns: int | None) -> int | None:
    """:func:`~cirron.export._otlp_columns.write_spans` for a session read piece by piece (see the
    module docstring); ``None``, with nothing written, when the pieces cannot carry it or the
    column encoder cannot encode it (then it is read the reference way)."""
    from cirron.spool.pieces import read_pieces

    if not fh.seekable():
        return None
    pieces = read_pieces(info, session_parents=True, mark_spans=True)
    if pieces is None:
        return None
    start = fh.tell()
    with pieces, tempfile.TemporaryDirectory(prefix="cirron-otlp-") as tmp:
        try:
            marks: _Routes | _Plan | None = _Routes.of(pieces, Path(tmp))
            if marks is None:
                marks = _read_keys(pieces, Path(tmp))
            return _write(fh, info, pieces, marks, open_end_ns)
        except CannotEncode:
            fh.seek(start)
            fh.truncate()
            return None


class _Plan:
    def __init__(self, directory: Path) -> None:
        #: the marks that are not in their span's piece, as read (with ``_mrow``)...
        self.away_marks = Spill(directory, "marks")
        #: ...and routed to the file of their span's piece (with ``_mspan``)
        self.routed = Spill(directory, "routed")
        self.dir = directory
        self.n_marks = 0
        self.n_pieces = 0
        self.piece_start: list[int] = [0]
        self.root = -1
        #: the schema of a piece's marks with ``_mrow``, their row among the session's marks
        self.mark_schema: Any = None
        #: ... and with ``_mspan``, the row of each one's span in the piece it is encoded with
        #: (-1: none, the root's marks), so the encoder need not look the ids up
        self.routed_schema: Any = None
        #: (parent row, key of the parent's id as the child names it) of spans whose parent is in
        #: another piece: the encoder derives such a parent's span id from that text
        self.away: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def stay_path(self, k: int) -> Path:
        """Per mark of piece ``k``: the row of its span in the piece, :data:`_AWAY` where it is routed."""
        return self.dir / f"stay-{k}.npy"

    def of_piece(self, k: int, piece: Any, row0: int, m0: int) -> tuple[pa.Table, list[Any] | None, np.ndarray]:
        """Piece ``k``'s marks to encode with its spans (its first span and mark are the
        session's ``row0`` and ``m0``): see :func:`_piece_marks`."""
        stay = np.load(self.stay_path(k)) if piece.marks.num_rows else np.zeros(0, dtype=np.int32)
        routed, routed_values = self.routed.read(k, self.routed_schema)
        return _piece_marks(piece, stay, m0, routed, routed_values)

    def orphans(self) -> tuple[pa.Table, list[Any] | None] | None:
        """The marks of no span in a session without root (with ``_mrow`` and ``_mspan``), to be
        written as placeholder spans; ``None`` where there are none."""
        if not self.n_pieces:
            return None
        marks, values = self.routed.read(self.n_pieces, self.routed_schema)
        return (marks, values) if marks.num_rows else None


class _Routes:
    """Where each mark is encoded, from the pieces' own rows of the marks' spans: what
    :func:`_read_keys` finds by reading the pieces a first time, when the pieces' keys are exact
    (:attr:`~cirron.spool.pieces.Pieces.exact_ids`), every mark has a span or a root to go to and
    none goes to a piece before its own. A mark on a span of a later piece is spilled while its
    own piece is written and read back with that piece."""

    def __init__(self, mark_span: np.ndarray, root: int, span_end: np.ndarray, directory: Path) -> None:
        #: per mark (in session order) the row of its span in the session (-1: the root's marks)
        self.mark_span = mark_span
        self.root = root
        self.span_end = span_end
        self.ahead = Spill(directory, "ahead")

    @classmethod
    def of(cls, pieces: Any, directory: Path) -> _Routes | None:
        mark_span = pieces.mark_span
        if mark_span is None or not pieces.exact_ids:
            return None
        target = np.where(mark_span >= 0, mark_span, pieces.root)
        if (target < 0).any():  # marks of no span, in a session without root: placeholders
            return None
        span_end, mark_end = pieces.bounds()
        span_start = np.concatenate([[0], span_end[:-1]])
        if (target < np.repeat(span_start, np.diff(mark_end, prepend=0))).any():  # on an earlier piece's span
            return None
        return cls(mark_span, pieces.root, span_end, directory)

    def of_piece(self, _k: int, piece: Any, row0: int, m0: int) -> tuple[pa.Table, list[Any] | None, np.ndarray]:
        """As :meth:`_Plan.of_piece`: the piece's marks on its own spans and those spilled for it
        by the pieces before; its marks on a later piece's spans are spilled for that one."""
        n, m = piece.spans.num_rows, piece.marks.num_rows
        span = self.mark_span[m0:m0 + m].astype(np.int64)
        target = np.where(span >= 0, span, self.root)
        ahead = np.flatnonzero(target >= row0 + n)
        if len(ahead):
            self._spill_ahead(piece, ahead, m0, span[ahead], target[ahead])
        stay = np.where(span >= 0, span - row0, -1)
        stay[ahead] = _AWAY
        if not n:
            return piece.marks.schema.empty_table(), None, np.zeros(0, dtype=np.int64)
        schema = piece.marks.schema.append(pa.field("_mrow", pa.int64())).append(pa.field("_mspan", pa.int64()))
        routed, routed_values = self.ahead.read(int(np.searchsorted(self.span_end, row0, side="right")), schema)
        if routed.num_rows:
            at = routed.schema.get_field_index("_mspan")
            span = _combined(routed["_mspan"]).to_numpy()
            routed = routed.set_column(at, "_mspan", pa.array(np.where(span >= 0, span - row0, -1)))
        return _piece_marks(piece, stay, m0, routed, routed_values)

    def _spill_ahead(self, piece: Any, rows: np.ndarray, m0: int, span: np.ndarray, target: np.ndarray) -> None:
        """Marks ``rows`` of a piece, to be encoded with the spans of rows ``target`` of later
        pieces, to the spill of each one's piece (``_mspan``: the row of the mark's own span in
        the session, -1 for the root's marks)."""
        marks = piece.marks.take(pa.array(rows)).append_column("_mrow", pa.array(rows + m0, pa.int64()))
        marks = marks.append_column("_mspan", pa.array(span, pa.int64()))
        self.ahead.append_each(np.searchsorted(self.span_end, target, side="right"), marks,
                               _pick(piece.mark_values, rows))

    def orphans(self) -> None:
        """None: :meth:`of` leaves the sessions with marks for placeholders to :func:`_read_keys`."""
        return None


def _read_keys(pieces: Any, directory: Path) -> _Plan:
    """Steps 1 and 2 of the module docstring."""
    plan = _Plan(directory)
    index = SpanIndex()
    for k, piece in enumerate(pieces):
        plan.n_pieces = k + 1
        spans = piece.spans
        n = spans.num_rows
        row0 = plan.piece_start[-1]
        plan.piece_start.append(row0 + n)
        span_keys = exact_keys(spans["id"])
        index.add(span_keys[0], span_keys[1])
        names, parent_id = spans["name"], spans["parent_id"]
        if plan.root < 0 and n:
            root = pc.fill_null(pc.and_(pc.equal(names, SESSION_SPAN_NAME), pc.is_null(parent_id)), False)
            at = np.flatnonzero(root.to_numpy(zero_copy_only=False) if not isinstance(root, pa.ChunkedArray)
                                else root.combine_chunks().to_numpy(zero_copy_only=False))
            if len(at):
                plan.root = row0 + int(at[0])
        parent = np.asarray(piece.span_parent, dtype=np.int64)
        away = np.flatnonzero((parent >= 0) & ((parent < row0) | (parent >= row0 + n)))
        if len(away):
            phi, plo, _v = exact_keys(parent_id.take(pa.array(away)))
            plan.away.append((parent[away], phi, plo))
        del spans, parent
        _add_marks(plan, k, piece, span_keys)
        del piece, span_keys
    plan.away_marks.close()
    index.seal()
    _check_away(plan, index)
    _route_marks(plan, index)
    return plan  # without the index: step 3 needs none


def _add_marks(plan: _Plan, k: int, piece: Any, span_keys: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Which of piece ``k``'s marks hang from a span of the same piece (``span_keys``: the exact
    keys of its span ids), and that span's row there; the others are spilled with the keys of
    their span ids, for :func:`_route_marks`."""
    marks = piece.marks
    m = marks.num_rows
    m0 = plan.n_marks
    plan.n_marks += m
    plan.mark_schema = marks.schema.append(pa.field("_mrow", pa.int64()))
    plan.routed_schema = plan.mark_schema.append(pa.field("_mspan", pa.int64()))
    if not m:
        return
    span_id = _combined(marks["span_id"])
    hi, lo, valid = exact_keys(span_id)
    local = _local_rows(span_keys, hi, lo, valid)
    sentinel = pc.fill_null(pc.equal(span_id, ROOT_SENTINEL), False).to_numpy(zero_copy_only=False)
    here = (local >= 0) & ~sentinel
    np.save(plan.stay_path(k), np.where(here, local, _AWAY).astype(np.int32))
    if here.all():
        return
    rest = np.flatnonzero(~here)
    away = marks.take(pa.array(rest)).append_column("_mrow", pa.array(rest + m0, pa.int64()))
    hi, lo, valid = hi[rest], lo[rest], valid[rest] & ~sentinel[rest]
    np.save(plan.dir / f"keys-{k}.npy", np.stack([hi, lo, valid.astype(np.uint64)]))
    plan.away_marks.append(k, away, _pick(piece.mark_values, rest))


def _local_rows(span_keys: tuple[np.ndarray, np.ndarray, np.ndarray], hi: np.ndarray, lo: np.ndarray,
                valid: np.ndarray) -> np.ndarray:
    """The row among a piece's spans (their exact keys ``span_keys``) of the span each key names,
    -1 where none does or the key is not ``valid`` (a null id names no span, and no span is
    named by a null id)."""
    shi, slo, svalid = span_keys
    rows = None if svalid.all() else np.flatnonzero(svalid)
    index = JoinedIndex.of(shi ^ slo, shi.__getitem__, rows=rows)
    local = index.lookup(hi ^ lo, hi.__getitem__)
    local[~valid] = -1
    return local


def _combined(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _pick(values: list[Any] | None, rows: np.ndarray) -> list[Any] | None:
    return None if values is None else [values[i] for i in rows.tolist()]


def _check_away(plan: _Plan, index: SpanIndex) -> None:
    """A parent in another piece is named by the child with its exact id (else the whole
    session's encoder, which takes the parent's own id, would write another span id)."""
    for rows, hi, lo in plan.away:
        if not (index.lookup(hi, lo, np.ones(len(hi), dtype=bool)) == rows).all():
            raise CannotEncode("a parent named by another spelling of its id")
    plan.away = []


def _route_marks(plan: _Plan, index: SpanIndex) -> None:
    """The spilled marks to the file of the piece that holds their span."""
    starts = np.asarray(plan.piece_start[:-1], dtype=np.int64)
    orphans = plan.n_pieces  # the marks of no span in a session without root
    for k in range(plan.n_pieces):
        marks, values = plan.away_marks.read(k, plan.mark_schema)
        if not marks.num_rows:
            continue
        keys = plan.dir / f"keys-{k}.npy"
        hi, lo, valid = np.load(keys)
        keys.unlink()
        row = index.lookup(hi, lo, valid.astype(bool))
        del hi, lo, valid
        target = np.where(row >= 0, row, plan.root)
        target = np.where(target >= 0, np.searchsorted(starts, target, side="right") - 1, orphans)
        local = np.where(row >= 0, row - starts[np.minimum(target, plan.n_pieces - 1)], -1)
        del row
        plan.routed.append_each(target, marks.append_column("_mspan", pa.array(local, pa.int64())), values)
        del marks, values, target, local
        pa.default_memory_pool().release_unused()
    plan.routed.close()


def _write(fh: Any, info: SessionInfo, pieces: Any, plan: _Plan | _Routes, open_end_ns: int | None) -> int:
    """Step 3 of the module docstring: the spans of each piece, then the placeholders of a
    session without root; returns how many. A piece is written (the compiled encoder, without
    the GIL) on a thread while the next one is prepared."""
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="cirron-otlp-pieces") as writer:
        writing: list[Future[int]] = []
        n = _write_pieces(_Commas(fh), info, pieces, plan, open_end_ns, writer, writing)
        return n + sum(w.result() for w in writing)


def _write_pieces(out: _Commas, info: SessionInfo, pieces: Any, plan: _Plan | _Routes, open_end_ns: int | None,
                  writer: Any, writing: list[Any]) -> int:
    """:func:`_write`'s loop: each piece is prepared, then handed to ``writer`` once the piece
    before is written (``writing``: the one being written). Returns how many spans were written
    before the last piece."""
    from cirron.spool.columnar import SessionColumns

    n = 0
    empty = np.zeros(0, dtype=np.int64)

    def encode(spans: pa.Table, parent: np.ndarray, marks: pa.Table, values: list[Any] | None,
               mark_span: np.ndarray) -> None:
        nonlocal n
        cols = SessionColumns(info, spans, marks, [], empty, empty, empty, empty, values, parent, mark_span)
        prepared = prepare_spans(cols, open_end_ns)
        del cols
        if writing:
            n += writing.pop().result()
        out.pending = n > 0
        writing.append(writer.submit(write_prepared, out, prepared))

    row0 = m0 = 0
    span_schema = None
    for k, piece in enumerate(pieces):
        row1 = row0 + piece.spans.num_rows
        span_schema = piece.spans.schema
        parent = np.asarray(piece.span_parent, dtype=np.int64)
        parent = np.where((parent >= row0) & (parent < row1), parent - row0, -1)
        marks, values, mark_span = plan.of_piece(k, piece, row0, m0)
        m0 += piece.marks.num_rows
        encode(piece.spans, parent, marks, values, mark_span)
        del piece, parent, marks, values, mark_span
        row0 = row1
        pa.default_memory_pool().release_unused()
    orphans = plan.orphans()
    if orphans is not None and span_schema is not None:  # the marks of no span, in a session without root
        marks, values = _in_session_order(*orphans)
        encode(span_schema.empty_table(), empty, marks.drop_columns(["_mrow", "_mspan"]), values,
               _combined(marks["_mspan"]).to_numpy())
    return n


def _piece_marks(piece: Any, stay: np.ndarray, m0: int, routed: pa.Table,
                 routed_values: list[Any] | None) -> tuple[pa.Table, list[Any] | None, np.ndarray]:
    """A piece's marks to encode with its spans: its own that stay (``stay``: the row of each
    one's span in the piece, -1 for the root's marks, :data:`_AWAY` where routed away; ``m0``:
    the row of its first among the session's marks) and those routed to it (with ``_mrow``, their
    row among the session's marks, and ``_mspan``, their span's row in the piece), in session
    order; their values (``None``: the floats of ``value``) and the rows of their spans (-1: the
    root's)."""
    marks, values = piece.marks, piece.mark_values
    keep = stay != _AWAY
    if not keep.all():
        rows = np.flatnonzero(keep)
        marks, values, stay = marks.take(pa.array(rows)), _pick(values, rows), stay[rows]
    else:
        rows = None
    if not routed.num_rows:
        return marks, values, stay.astype(np.int64)
    own_rows = (np.arange(piece.marks.num_rows, dtype=np.int64) if rows is None else rows) + m0
    own = marks.append_column("_mrow", pa.array(own_rows)).append_column("_mspan", pa.array(stay.astype(np.int64)))
    both = pa.concat_tables([own, routed])
    if values is None and routed_values is None:
        all_values = None
    else:
        all_values = [*(values if values is not None else marks["value"].to_pylist()),
                      *(routed_values if routed_values is not None else routed["value"].to_pylist())]
    both, all_values = _in_session_order(both, all_values)
    return both.drop_columns(["_mrow", "_mspan"]), all_values, _combined(both["_mspan"]).to_numpy()


def _in_session_order(marks: pa.Table, values: list[Any] | None) -> tuple[pa.Table, list[Any] | None]:
    """Marks (a piece's own and those routed to it) in session order (by ``_mrow``)."""
    row = _combined(marks["_mrow"]).to_numpy()
    if len(row) > 1 and (row[1:] < row[:-1]).any():
        order = np.argsort(row, kind="stable")
        marks = marks.take(pa.array(order))
        values = None if values is None else [values[i] for i in order.tolist()]
    return marks, values
