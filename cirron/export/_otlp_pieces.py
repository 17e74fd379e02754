"""The OTLP/JSON spans of a session too big for whole columns, encoded piece by piece.

:func:`cirron.spool.pieces.iter_pieces` gives the session's winning records in pieces; a mark is
an event of its span (and a GenAI ``request`` span takes attributes from its marks), so a piece's
spans are encoded with every mark that hangs from them, wherever in the session those are:

1. the pieces are read once: each piece's spans and marks go to temporary Arrow IPC files, the
   exact keys of its span ids to a :class:`~cirron.export._piecewise.SpanIndex`, its marks' keys
   of their ``span_id`` to a file;
2. each piece's marks are read back and appended to the file of the piece that holds their span
   (the session's root for marks on the sentinel or on no span of the session; a file of their
   own, written last as placeholder spans, when there is no root), so each file holds its marks
   in session order, each with the row of its span in that piece (the encoder need not look the
   ids up again);
3. each piece's spans are encoded with their marks by the column encoder
   (:func:`cirron.export._otlp_columns.write_spans`): the same bytes as for the whole session.

Memory: about 16 bytes per span for the index, plus one piece and its marks. Disk: the pieces'
columns twice at most (about 0.6 bytes per byte of JSON each), besides the spill of
:func:`~cirron.spool.pieces.iter_pieces` while it runs; removed when the export ends or fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cirron._schema import ROOT_SENTINEL, SESSION_SPAN_NAME
from cirron.export._otlp_columns import CannotEncode, write_spans
from cirron.export._piecewise import SpanIndex, Spill, exact_keys
from cirron.spool.arrays import JoinedIndex
from cirron.spool.catalog import SessionInfo

__all__ = ["write_spans_in_pieces"]


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
    from cirron.spool.columnar import SessionColumns
    from cirron.spool.pieces import iter_pieces

    if not fh.seekable():
        return None
    pieces = iter_pieces(info, session_parents=True)
    if pieces is None:
        return None
    start = fh.tell()
    with tempfile.TemporaryDirectory(prefix="cirron-otlp-") as tmp:
        try:
            plan = _read_pieces(pieces, Path(tmp))
            out = _Commas(fh)
            n = 0
            empty = np.zeros(0, dtype=np.int64)
            for k in range(plan.n_pieces + 1):
                spans, _ = plan.spans.read(k, plan.span_schema) if k < plan.n_pieces else (None, None)
                marks, values = _in_session_order(*plan.routed.read(k, plan.routed_schema))
                mark_span = marks["_mspan"].to_numpy()
                marks = marks.drop_columns(["_mspan"])
                if spans is None:  # the marks of no span, in a session without root: placeholders
                    if not marks.num_rows:
                        continue
                    spans = plan.span_schema.empty_table()
                parent = spans["_parent"].to_numpy() if spans.num_rows else empty
                cols = SessionColumns(info, spans.drop_columns(["_parent"]), marks, [], empty, empty, empty, empty,
                                      values, parent, mark_span)
                del spans, marks, values, mark_span
                out.pending = n > 0
                n += write_spans(out, cols, open_end_ns)
                del cols
                pa.default_memory_pool().release_unused()
            return n
        except CannotEncode:
            fh.seek(start)
            fh.truncate()
            return None
        finally:
            cast(Generator[Any, None, None], pieces).close()  # its spill goes now, read to the end or not


def _in_session_order(marks: pa.Table, values: list[Any] | None) -> tuple[pa.Table, list[Any] | None]:
    """A piece's marks (those of its own and those routed to it later) in session order."""
    row = marks["_mrow"].to_numpy()
    if len(row) > 1 and (row[1:] < row[:-1]).any():
        order = np.argsort(row, kind="stable")
        marks = marks.take(pa.array(order))
        values = None if values is None else [values[i] for i in order.tolist()]
    return marks.drop_columns(["_mrow"]), values


class _Plan:
    def __init__(self, directory: Path) -> None:
        self.spans = Spill(directory, "spans")
        self.marks = Spill(directory, "marks")
        self.routed = Spill(directory, "routed")
        self.dir = directory
        self.n_marks = 0
        self.index = SpanIndex()
        self.n_pieces = 0
        self.piece_start: list[int] = [0]
        self.root = -1
        self.span_schema: Any = None
        self.mark_schema: Any = None
        #: the marks' schema in the files of their span's piece: with ``_mspan``, the row there of
        #: each mark's span (-1: none, the root's marks), so the encoder need not look the ids up
        self.routed_schema: Any = None
        #: (parent row, key of the parent's id as the child names it) of spans whose parent is in
        #: another piece: the encoder derives such a parent's span id from that text
        self.away: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []


def _read_pieces(pieces: Any, directory: Path) -> _Plan:
    plan = _Plan(directory)
    for k, piece in enumerate(pieces):
        plan.n_pieces = k + 1
        spans = piece.spans
        n = spans.num_rows
        row0 = plan.piece_start[-1]
        plan.piece_start.append(row0 + n)
        span_keys = exact_keys(spans["id"])
        plan.index.add(span_keys[0], span_keys[1])
        names, parent_id = spans["name"], spans["parent_id"]
        if plan.root < 0 and n:
            root = pc.fill_null(pc.and_(pc.equal(names, SESSION_SPAN_NAME), pc.is_null(parent_id)), False)
            at = np.flatnonzero(root.to_numpy(zero_copy_only=False) if not isinstance(root, pa.ChunkedArray)
                                else root.combine_chunks().to_numpy(zero_copy_only=False))
            if len(at):
                plan.root = row0 + int(at[0])
        parent = np.asarray(piece.span_parent, dtype=np.int64)
        inside = (parent >= row0) & (parent < row0 + n)
        away = np.flatnonzero((parent >= 0) & ~inside)
        if len(away):
            phi, plo, _v = exact_keys(parent_id.take(pa.array(away)))
            plan.away.append((parent[away], phi, plo))
        local = np.where(inside, parent - row0, -1)
        spans = spans.append_column("_parent", pa.array(local, pa.int64()))
        plan.span_schema = spans.schema
        plan.spans.append(k, spans)
        del spans, local, parent
        _add_marks(plan, k, piece, span_keys)
        del piece, span_keys
    plan.spans.close()
    plan.marks.close()
    plan.index.seal()
    _check_away(plan)
    _route_marks(plan)
    return plan


def _add_marks(plan: _Plan, k: int, piece: Any, span_keys: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Piece ``k``'s marks that hang from a span of the same piece (``span_keys``: the exact keys of
    its span ids) go to that piece's file now; the others are spilled with the keys of their span
    ids, for :func:`_route_marks`."""
    marks = piece.marks
    m = marks.num_rows
    marks = marks.append_column("_mrow", pa.array(np.arange(plan.n_marks, plan.n_marks + m, dtype=np.int64)))
    plan.n_marks += m
    plan.mark_schema = marks.schema
    plan.routed_schema = marks.schema.append(pa.field("_mspan", pa.int64()))
    if not m:
        return
    span_id = _combined(marks["span_id"])
    hi, lo, valid = exact_keys(span_id)
    local = _local_rows(span_keys, hi, lo, valid)
    sentinel = pc.fill_null(pc.equal(span_id, ROOT_SENTINEL), False).to_numpy(zero_copy_only=False)
    here = (local >= 0) & ~sentinel
    values = piece.mark_values
    if here.all():
        plan.routed.append(k, _with_span_rows(marks, local), values)
        return
    if here.any():
        plan.routed.append(k, _with_span_rows(marks.filter(pa.array(here)), local[here]), _pick(values, here))
    rest = ~here
    hi, lo, valid = hi[rest], lo[rest], valid[rest] & ~sentinel[rest]
    np.save(plan.dir / f"keys-{k}.npy", np.stack([hi, lo, valid.astype(np.uint64)]))
    plan.marks.append(k, marks.filter(pa.array(rest)), _pick(values, rest))


def _with_span_rows(marks: pa.Table, rows: np.ndarray) -> pa.Table:
    """``marks`` (about to go to the file of their span's piece) with ``_mspan``: ``rows``, the
    row of each one's span in that piece (-1: none)."""
    return marks.append_column("_mspan", pa.array(rows, pa.int64()))


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


def _pick(values: list[Any] | None, keep: np.ndarray) -> list[Any] | None:
    return None if values is None else [v for v, k in zip(values, keep.tolist()) if k]


def _check_away(plan: _Plan) -> None:
    """A parent in another piece is named by the child with its exact id (else the whole
    session's encoder, which takes the parent's own id, would write another span id)."""
    for rows, hi, lo in plan.away:
        if not (plan.index.lookup(hi, lo, np.ones(len(hi), dtype=bool)) == rows).all():
            raise CannotEncode("a parent named by another spelling of its id")
    plan.away = []


def _route_marks(plan: _Plan) -> None:
    """The spilled marks to the file of the piece that holds their span."""
    starts = np.asarray(plan.piece_start[:-1], dtype=np.int64)
    orphans = plan.n_pieces  # the marks of no span in a session without root
    for k in range(plan.n_pieces):
        marks, values = plan.marks.read(k, plan.mark_schema)
        if not marks.num_rows:
            continue
        keys = plan.dir / f"keys-{k}.npy"
        hi, lo, valid = np.load(keys)
        keys.unlink()
        row = plan.index.lookup(hi, lo, valid.astype(bool))
        del hi, lo, valid
        target = np.where(row >= 0, row, plan.root)
        target = np.where(target >= 0, np.searchsorted(starts, target, side="right") - 1, orphans)
        local = np.where(row >= 0, row - starts[np.minimum(target, plan.n_pieces - 1)], -1)
        del row
        order = np.argsort(target, kind="stable")
        sorted_target = target[order]
        bounds = np.flatnonzero(np.diff(sorted_target)) + 1
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)]):
            rows = order[a:b]
            run = marks.take(pa.array(rows)) if (a, b) != (0, len(order)) else marks
            plan.routed.append(int(sorted_target[a]), _with_span_rows(run, local[rows]),
                               None if values is None else [values[i] for i in rows.tolist()])
        del marks, values, order, target, local
        pa.default_memory_pool().release_unused()
    plan.routed.close()
