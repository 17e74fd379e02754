"""`cirron traces view | list | export | clear` (``snapshots``/``snapshot`` are registered by
:mod:`cirron_cli.snapshots`).

Exit codes: 0 success (an empty spool is not an error for ``view``/``list``), 1 when the command
cannot do its job (nothing to export, unknown session, unwritable output, refused upload,
declined prompt), 2 for an invalid option value (bad ``--before`` date, ``--min-wall``
duration, ``--format``, ``--header``), 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import orjson
import typer

from cirron._format import format_view_value, label_attrs, label_of, view_mark_line, view_span_line
from cirron._schema import ROOT_SENTINEL, json_scalar
from cirron.spool import paths
from cirron.spool.catalog import Catalog, SessionInfo, open_catalog
from cirron.spool.reader import _limit_depth
from cirron.spool.sessions import Session
from cirron_cli import render
from cirron_cli.render import fail, format_bytes, format_duration_ns, style, use_color, warn

if TYPE_CHECKING:
    from cirron.spool.retention import DeleteGroup, SpoolClearPlan

traces_app = typer.Typer(
    help="Read, view, export and clear the traces in the local spool.", no_args_is_help=True
)

DEFAULT_SPOOL = str(paths.DEFAULT_SPOOL_DIR)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

SpoolOpt = typer.Option(
    [DEFAULT_SPOOL], "--spool", show_default=True,
    help="Spool directory to read; repeat it or use a quoted glob ('runs/*/.cirron/spool') for several.",
)


# ============================================================================ shared helpers


def open_spools(spools: list[str]) -> Catalog:
    """The catalog of the spool directories the ``--spool`` values name (globs expanded)."""
    for s in spools:
        if not paths.has_glob(s):
            p = Path(s).expanduser()
            if p.exists() and not p.is_dir():
                fail(f"Spool path {s} is not a directory")
    return open_catalog(spools, warn)


@contextlib.contextmanager
def _progress(label: str, enabled: bool = True, total: int | None = None) -> Iterator[Callable[[Any], None]]:
    """A rich progress bar on stderr when it is a TTY; otherwise a no-op callback."""
    if not enabled or not sys.stderr.isatty() or os.environ.get("CIRRON_NO_PROGRESS"):
        yield lambda _x=None: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(label, total=total)
        yield lambda _x=None: prog.advance(task)


def _pick_sessions(spools: list[str], prefix: str | None, last: int | None) -> tuple[Catalog, list[SessionInfo]]:
    """The sessions a command works on (summaries; load them with ``Catalog.iter_load``). An empty
    spool gives ``[]``; an unknown prefix fails with the reference's message."""
    cat = open_spools(spools)
    if not cat.sessions:
        return cat, []
    chosen = _select(cat, prefix)
    if last is not None:
        chosen = chosen[-last:]
    return cat, chosen


def _iter_chunks(cat: Catalog, chosen: list[SessionInfo], fields: str, marks: bool = True) -> Iterator[Any]:
    """The chosen sessions' records in chunks, or as Arrow columns where the fast reader can read
    them (:func:`cirron.spool.stream.iter_chunks`), with a progress bar per session on a TTY."""
    from cirron.spool.stream import iter_chunks

    with _progress("Exporting", total=len(chosen)) as tick:
        last = None
        for chunk in iter_chunks(cat, chosen, fields, columnar=True, marks=marks):
            if last is not None and chunk.session is not last:
                tick()
            last = chunk.session
            yield chunk
            del chunk  # before the next one is read


def _iter_loaded(cat: Catalog, chosen: list[SessionInfo], fields: str = "full",
                 progress: bool = False) -> Iterator[Session]:
    """The chosen sessions rebuilt one at a time, with a progress bar per session on a TTY."""
    with _progress("Reading sessions", enabled=progress, total=len(chosen)) as tick:
        for sess in cat.iter_load(chosen, fields):
            yield sess
            tick()


def _iter_streamed(cat: Catalog, chosen: list[SessionInfo]) -> Iterator[Session | SessionInfo]:
    """Each chosen session as an exporter that streams takes it: the summary of one that can be
    read file by file (:meth:`Catalog.streamable`), else the session rebuilt; a progress bar per
    session on a TTY."""
    with _progress("Exporting", total=len(chosen)) as tick:
        for info in chosen:
            yield info if cat.streamable(info) else cat.load(info)
            tick()


def _select(cat: Catalog, prefix: str | None) -> list[SessionInfo]:
    if prefix is None:
        return list(cat.sessions)
    found = cat.find(prefix)
    if not found:
        fail(f"No session found matching {prefix}")
    return found


_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|μs|ms|s|m|h)?\s*$")
_DUR_UNITS = {None: 1, "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
              "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_duration_ns(text: str) -> int | None:
    """``500us`` → 500000; units ns, us/µs, ms, s, m, h (a bare number is ns). ``None`` if invalid."""
    m = _DUR_RE.match(text)
    if not m:
        return None
    return int(float(m.group(1)) * _DUR_UNITS[m.group(2)])


def parse_iso_date(text: str) -> int | None:
    """Unix ns of an ISO-8601 date or date-time (naive values are UTC); ``None`` if invalid."""
    t = text.strip()
    if not t:
        return None
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        value = dt.datetime.fromisoformat(t)
    except ValueError:
        try:
            value = dt.datetime.combine(dt.date.fromisoformat(t), dt.time())
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    try:
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1_000
    except (OverflowError, OSError, ValueError):
        return None


# ============================================================================ view

#: Styles of the parts of a view line (cirron._format.view_span_line / view_mark_line).
_VIEW_STYLES = {"label": "bold", "attrs": "dim", "mark": "cyan"}


def _mark_value(m: dict) -> Any:
    return m.get("value")


def _wall(span: dict) -> int | None:
    s, e = span.get("start_ns"), span.get("end_ns")
    return e - s if type(s) is int and type(e) is int else None


def _attr_text(span: dict, is_root: bool) -> str:
    attrs = span.get("attrs") if isinstance(span.get("attrs"), dict) else {}
    if is_root:
        parts = []
        for k in ("pid", "rank"):
            v = span.get(k)
            if v is None:
                v = attrs.get(k)
            if v is not None:
                parts.append(f"{k}={format_view_value(v)}")
        return " ".join(parts)
    return " ".join(f"{k}={format_view_value(v)}" for k, v in label_attrs(span).items())


def _name_matches(span: dict, text: str) -> bool:
    """``--name``: the span's name contains ``text``, or a request's endpoint does."""
    name = span.get("name")
    if isinstance(name, str) and text in name:
        return True
    attrs = span.get("attrs")
    endpoint = attrs.get("endpoint") if isinstance(attrs, dict) else None
    return isinstance(endpoint, str) and text in endpoint


class _SessionView:
    """The filtered, depth-limited pre-order of one session, as nodes for text or JSON."""

    def __init__(self, info: SessionInfo, session: Session, name: str | None, depth: int | None,
                 min_wall: int | None) -> None:
        self.info = info
        self.session = session
        top, children = session.tree()
        marks = session.marks_by_span()
        by_id = {s["id"]: s for s in session.spans}
        root_id = session.root["id"] if session.root else None

        matched: set[str] | None = None
        keep: set[str] | None = None
        if name is not None:
            matched = {sid for sid, s in by_id.items() if _name_matches(s, name)}
            keep = set()
            for sid in matched:
                cur: Any = sid
                while isinstance(cur, str) and cur in by_id and cur not in keep:
                    keep.add(cur)
                    cur = by_id[cur].get("parent_id")
            if root_id:
                keep.add(root_id)

        def visible(s: dict) -> bool:
            if s["id"] == root_id:
                return True
            if keep is not None and s["id"] not in keep:
                return False
            if min_wall is not None:
                w = _wall(s)
                if w is not None and w < min_wall:
                    return False
            return True

        def show_marks(sid: str) -> bool:
            return matched is None or sid in matched

        def kids(sid: str) -> list[dict]:
            return [c for c in children.get(sid, ()) if visible(c)]

        base = 0
        self.nodes: list[dict] = []
        if session.root is None:
            self.nodes.append({"type": "header", "depth": 0, "name": session.id})
            base = 1
            # marks of spans that were never written (no root to hang them under): under the header
            self.nodes.extend({"type": "mark", "depth": 1, "mark": m} for m in marks.get(ROOT_SENTINEL, ())
                              if matched is None)
        stack: list[tuple[str, Any, int]] = [("span", s, base) for s in reversed(top) if visible(s)]
        while stack:
            kind, item, d = stack.pop()
            if kind == "mark":
                self.nodes.append({"type": "mark", "depth": d, "mark": item})
                continue
            span = item
            sid = span["id"]
            self.nodes.append({"type": "span", "depth": d, "span": span, "root": sid == root_id})
            child_spans = kids(sid)
            child_marks = marks.get(sid, []) if show_marks(sid) else []
            if depth is not None and d >= depth:
                if child_spans:
                    count = 0
                    walk = list(child_spans)
                    while walk:
                        x = walk.pop()
                        count += 1
                        walk.extend(kids(x["id"]))
                    total = sum(w for w in (_wall(c) for c in child_spans) if w is not None)
                    self.nodes.append({"type": "collapsed", "depth": d + 1, "spans": count, "duration_ns": total})
                continue
            merged: list[tuple[int, int, str, Any]] = []
            for i, c in enumerate(child_spans):
                st = c.get("start_ns")
                merged.append((st if type(st) is int else 0, i, "span", c))
            for j, m in enumerate(child_marks):
                ts = m.get("ts_ns")
                merged.append((ts if type(ts) is int else 0, len(child_spans) + j, "mark", m))
            merged.sort(key=lambda t: (t[0], t[1]))
            for _, _, k, x in reversed(merged):
                stack.append((k, x, d + 1))

    def lines(self, color: bool) -> Iterator[str]:
        for node in self.nodes:
            yield _node_line(node, self.info, color)

    def to_json(self) -> dict:
        return {**_session_summary(self.info), "nodes": [j for node in self.nodes if (j := _node_json(node))]}


def _node_json(node: dict) -> dict | None:
    """One node of ``view --json`` (``None``: a header, which JSON leaves out)."""
    t = node["type"]
    if t == "span":
        sp = node["span"]
        return {
            "type": "span", "depth": node["depth"], "id": sp["id"], "parent_id": sp.get("parent_id"),
            "name": sp.get("name"), "index": sp.get("index"), "start_ns": render.json_ns(sp.get("start_ns")),
            "end_ns": render.json_ns(sp.get("end_ns")), "duration_ns": render.json_ns(_wall(sp)),
            "attrs": _limit_depth(sp.get("attrs") or {}, 32),
        }
    if t == "mark":
        m = node["mark"]
        v = m.get("value")
        return {
            "type": "mark", "depth": node["depth"], "id": m["id"], "span_id": m.get("span_id"),
            "name": m.get("name"), "value": _json_scalar(v), "value_type": m.get("value_type"),
            "kind": m.get("kind"), "ts_ns": render.json_ns(m.get("ts_ns")),
        }
    if t == "collapsed":
        return {"type": "collapsed", "depth": node["depth"], "spans": node["spans"],
                "duration_ns": str(node["duration_ns"])}
    return None


#: What a node of ``view --json`` is indented by inside its session's object.
_JSON_NODE_INDENT = b"    "


def _node_json_text(node: dict) -> str:
    """One node of ``view --json`` as the whole session's ``orjson.dumps(..., OPT_INDENT_2)`` writes
    it inside the ``"nodes"`` list."""
    text = orjson.dumps(_node_json(node), option=orjson.OPT_INDENT_2)
    return (_JSON_NODE_INDENT + text.replace(b"\n", b"\n" + _JSON_NODE_INDENT)).decode()


def _session_json_text(info: SessionInfo, nodes: Iterator[str]) -> Iterator[str]:
    """A session of ``view --json`` with ``nodes`` (:func:`_node_json_text`), in the bytes the whole
    session's ``orjson.dumps({...summary, "nodes": [...]}, OPT_INDENT_2)`` writes."""
    head = orjson.dumps(_session_summary(info), option=orjson.OPT_INDENT_2).decode()
    yield head[:-2] + ',\n  "nodes": ['
    first = True
    for text in nodes:
        yield ("\n" if first else ",\n") + text
        first = False
    yield "]\n}" if first else "\n  ]\n}"


def _export_name_matches(text: str) -> Callable[[Any], bool]:
    """``--name``'s test (:func:`_name_matches`) on a span read with ``fields="export"`` (its attrs
    as raw JSON text, decoded only where an ``endpoint`` key can be)."""
    from cirron.spool.reader import _decode_attrs

    def match(span: Any) -> bool:
        name = span.name
        if isinstance(name, str) and text in name:
            return True
        raw = bytes(span.attrs)
        if b"ndpoint" not in raw and b"\\" not in raw:  # the key, or an escape that could spell it
            return False
        attrs = _decode_attrs(span.attrs)
        endpoint = attrs.get("endpoint") if isinstance(attrs, dict) else None
        return isinstance(endpoint, str) and text in endpoint

    return match


def _node_line(node: dict, info: SessionInfo, color: bool) -> str:
    """One printed line of ``view``: a header, span, mark or collapsed node of ``info``'s session."""
    def paint(text: str, role: str) -> str:  # the duration comes styled by its state
        styles = _VIEW_STYLES.get(role)
        return style(text, styles, color=color) if styles else text

    indent = "  " * node["depth"]
    t = node["type"]
    if t == "header":
        return indent + style(node["name"], "bold", color=color)
    if t == "span":
        span = node["span"]
        w = _wall(span)
        if w is None:
            open_text = f"({info.status})" if info.status != "ended" else "(open)"
            dur = style(open_text, "green" if info.live else "red", color=color)
        else:
            dur = style(format_duration_ns(w), "yellow", color=color)
        return view_span_line(node["depth"], label_of(span), dur, _attr_text(span, node["root"]), paint)
    if t == "mark":
        m = node["mark"]
        return view_mark_line(node["depth"], m.get("name"), format_view_value(_mark_value(m)),
                              m.get("kind") == "summary", paint)
    return indent + style(
        f"… {format_duration_ns(node['duration_ns'])} ({render.plural(node['spans'], 'span')}, collapsed)",
        "dim", color=color,
    )


def _streamed_view_lines(info: SessionInfo, depth: int | None, min_wall: int | None, name: str | None,
                         render_node: Callable[[dict], str]) -> Iterator[str] | None:
    """The nodes of ``view`` for a session read file by file (:func:`cirron.spool.outline.view_outline`),
    each as ``render_node`` writes it (a line, or ``--json``'s text): the records of the printed nodes
    are rendered as the files are read, kept in a temporary file, and given back in tree order.
    ``None`` when the session cannot be read that way."""
    import tempfile

    import numpy as np

    from cirron.spool import outline as ol
    from cirron.spool.reader import read_batch

    plan = ol.view_outline(info, depth, min_wall, None if name is None else _export_name_matches(name))
    if plan is None:
        return None
    n = len(plan.kind)
    off = np.zeros(n, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    spill = tempfile.TemporaryFile(prefix="cirron-view-")

    def positions(kind: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.flatnonzero(plan.kind == kind)
        order = np.argsort(plan.ref[pos], kind="stable")
        return pos[order], plan.ref[pos][order]

    span_pos, span_refs = positions(ol.NODE_SPAN)
    mark_pos, mark_refs = positions(ol.NODE_MARK)
    for fi, bf in enumerate(plan.files):
        s0, s1 = int(plan.span_start[fi]), int(plan.span_start[fi + 1])
        m0, m1 = int(plan.mark_start[fi]), int(plan.mark_start[fi + 1])
        sa, sb = np.searchsorted(span_refs, [s0, s1])
        ma, mb = np.searchsorted(mark_refs, [m0, m1])
        if sa == sb and ma == mb:
            continue
        batch = read_batch(bf, lambda _m: None, "full")
        if batch is None:
            continue
        for pos, ref in zip(span_pos[sa:sb].tolist(), span_refs[sa:sb].tolist()):
            node = {"type": "span", "depth": int(plan.depth[pos]), "span": batch["spans"][ref - s0],
                    "root": ref == plan.root_row}
            _spill_line(spill, off, length, pos, render_node(node))
        for pos, ref in zip(mark_pos[ma:mb].tolist(), mark_refs[ma:mb].tolist()):
            node = {"type": "mark", "depth": int(plan.depth[pos]), "mark": batch["marks"][ref - m0]}
            _spill_line(spill, off, length, pos, render_node(node))
        del batch

    def lines() -> Iterator[str]:
        with spill:
            for pos in range(n):
                if plan.kind[pos] == ol.NODE_COLLAPSED:
                    c = int(plan.ref[pos])
                    node = {"type": "collapsed", "depth": int(plan.depth[pos]),
                            "spans": int(plan.collapsed_spans[c]), "duration_ns": int(plan.collapsed_ns[c])}
                    yield render_node(node)
                elif length[pos]:
                    spill.seek(int(off[pos]))
                    yield spill.read(int(length[pos])).decode("utf-8")

    return lines()


def _spill_line(spill: Any, off: Any, length: Any, pos: int, line: str) -> None:
    data = line.encode("utf-8", "surrogatepass")
    spill.seek(0, os.SEEK_END)
    off[pos] = spill.tell()
    length[pos] = len(data)
    spill.write(data)


def _json_scalar(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return _limit_depth(v, 32)
    return json_scalar(v)


def _session_summary(s: SessionInfo) -> dict:
    return {
        "id": s.id,
        "started_ns": render.json_ns(s.started_ns),
        "ended_ns": render.json_ns(s.ended_ns),
        "live": s.live,
        "crashed": s.crashed,
        "spans": s.spans,
        "marks": s.marks,
        "snapshots": s.snapshots,
        "bytes": s.bytes,
        "sdk_version": s.sdk_version,
        "spool": str(s.spool.resolve()),
        "run_id": s.run_id,
        "rank": s.rank,
        "world_size": s.world_size,
        "local_rank": s.local_rank,
        "writer": s.writer,
        "unfinished": s.unfinished,
    }


def _dump_json(obj: Any) -> None:
    try:
        text = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
    except (TypeError, orjson.JSONEncodeError):  # ints beyond int64 from another writer, very deep values
        text = orjson.dumps(_limit_depth(obj, 1000), option=orjson.OPT_INDENT_2, default=str)
    typer.echo(text.decode())


@traces_app.command("view")
def view(
    last: Optional[int] = typer.Option(None, "--last", help="Show the N newest sessions (default: 1)."),
    name: Optional[str] = typer.Option(None, "--name", help="Keep spans whose name contains this (ancestors kept)."),
    session: Optional[str] = typer.Option(None, "--session", help="Show the session(s) whose id starts with this."),
    run: Optional[str] = typer.Option(None, "--run", help="Show every rank of the run whose id starts with this."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Collapse the tree below depth N."),
    min_wall: Optional[str] = typer.Option(
        None, "--min-wall", help="Hide spans shorter than this (ns, us, ms, s, m, h)."
    ),
    spool: list[str] = SpoolOpt,
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
) -> None:
    """Render sessions as an indented scope tree (a text flamegraph)."""
    if last is not None and last < 1:
        fail(f"Invalid --last: {last} (expected a positive number)", EXIT_USAGE)
    if depth is not None and depth < 0:
        fail(f"Invalid --depth: {depth} (expected 0 or more)", EXIT_USAGE)
    min_ns = None
    if min_wall is not None:
        min_ns = parse_duration_ns(min_wall)
        if min_ns is None:
            fail(f"Invalid --min-wall duration: {min_wall} (expected e.g. 500us, 1ms, 2s)", EXIT_USAGE)
    if run is not None and (session is not None or last is not None):
        fail("--run cannot be combined with --session or --last", EXIT_USAGE)
    if run is not None:
        cat = open_spools(spool)
        chosen = list(_pick_run(cat, run).sessions)
    else:
        n_last = last if last is not None else (1 if session is None else None)
        cat, chosen = _pick_sessions(spool, session, n_last)
    if not chosen:
        if json_out:
            typer.echo("[]")
        else:
            render.no_traces()
        return
    color = use_color(no_color)
    out = sys.stdout
    if json_out:
        out.write("[")
    for i, info in enumerate(chosen):
        streamed = None
        if cat.streamable(info):
            render_node = _node_json_text if json_out else functools.partial(_node_line, info=info, color=color)
            streamed = _streamed_view_lines(info, depth, min_ns, name, render_node)
        if json_out:
            out.write("," if i else "")
            if streamed is not None:
                for text in _session_json_text(info, streamed):
                    out.write(text)
            else:
                v = _SessionView(info, cat.load(info), name, depth, min_ns)
                out.write(orjson.dumps(v.to_json(), option=orjson.OPT_INDENT_2).decode())
            continue
        if streamed is None:
            v = _SessionView(info, cat.load(info), name, depth, min_ns)
        if i:
            out.write("\n")
        if run is not None:
            out.write(style(_rank_header(info), "bold", "magenta", color=color) + "\n")
        for line in streamed if streamed is not None else v.lines(color):
            out.write(line + "\n")
    if json_out:
        out.write("]\n")
    out.flush()


def _rank_header(info: SessionInfo) -> str:
    rank = "?" if info.rank is None else str(info.rank)
    world = f"/{info.world_size}" if info.world_size is not None else ""
    host = f" · host {info.host}" if info.host else ""
    return f"── rank {rank}{world} · session {render.short_id(info.id)}{host} ──"


def _pick_run(cat: Catalog, prefix: str) -> Any:
    runs = cat.find_run(prefix)
    if not runs:
        fail(f"No run found matching {prefix}")
    if len(runs) > 1:
        fail(f"Run id {prefix} is ambiguous: it matches {len(runs)} runs ({', '.join(r.id for r in runs[:5])})")
    return runs[0]


# ============================================================================ list


@traces_app.command("list")
def list_sessions(
    spool: list[str] = SpoolOpt,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Table of the sessions in the spool(s), newest first, and the runs their ranks belong to."""
    cat = open_spools(spool)
    sessions = list(reversed(cat.sessions))
    dirs = [str(d.resolve()) for d in cat.spools]
    abs_dir = dirs[0] if dirs else str(Path(spool[0]).resolve())
    runs = cat.runs()
    # A run id alone is common (a single process makes one up): the run columns and table are
    # for runs of several ranks.
    multi_rank = [r for r in runs if len(r.sessions) > 1 or any((s.world_size or 1) > 1 for s in r.sessions)]
    if json_out:
        # Same shape with or without sessions (an empty spool has an empty "sessions" list), so
        # scripts can always read ["sessions"].
        _dump_json({"dir": abs_dir, "dirs": dirs, "sessions": [_session_summary(s) for s in sessions],
                    "runs": [_run_summary(r) for r in reversed(runs)]})
        return
    if not sessions:
        render.no_traces()
        return
    durations = [_duration_text(s) for s in sessions]
    width = max(len("DURATION"), *(len(d) for d in durations))
    with_runs = bool(multi_rank)
    many = len(cat.spools) > 1
    headers = ["SESSION", "STARTED", "DURATION", "SPANS", "MARKS", "SNAPSHOTS", "SIZE"]
    right = [2, 3, 4, 5, 6]
    if with_runs:
        headers += ["RUN", "RANK"]
        right.append(8)
    if many:
        headers.append("SPOOL")
    rows = []
    for s, d in zip(sessions, durations):
        cell = d.center(width) if d.startswith("(") else d
        row: list[object] = [render.short_id(s.id), render.format_iso_ns(s.started_ns), cell, s.spans, s.marks,
                             s.snapshots, format_bytes(s.bytes)]
        if with_runs:
            row += [render.short_id(s.run_id, 12) if s.run_id else "-", "-" if s.rank is None else s.rank]
        if many:
            row.append(_short_path(s.spool))
        rows.append(row)
    where = f"Spool: {abs_dir}" if not many else f"Spools: {len(dirs)} directories"
    typer.echo(f"{where}  ({render.plural(len(sessions), 'session')})")
    typer.echo(render.aligned_table(headers, rows, right=right))
    if multi_rank:
        typer.echo("")
        typer.echo(f"Runs ({len(multi_rank)}):")
        run_rows = []
        for r in reversed(multi_rank):
            ranks = sorted(x for x in r.ranks if x is not None)
            worlds = {s.world_size for s in r.sessions if s.world_size is not None}
            statuses = [s.status for s in r.sessions]
            state = ", ".join(f"{statuses.count(k)} {k}" for k in ("ended", "live", "crashed") if statuses.count(k))
            run_rows.append((r.id, render.format_iso_ns(r.started_ns), len(r.sessions), _rank_ranges(ranks),
                             "/".join(map(str, sorted(worlds))) or "?", state, sum(s.spans for s in r.sessions)))
        typer.echo(render.aligned_table(["RUN", "STARTED", "SESSIONS", "RANKS", "WORLD", "STATUS", "SPANS"],
                                        run_rows, right=(2, 4, 6)))


def _duration_text(s: SessionInfo) -> str:
    if s.status != "ended":
        return f"({s.status})"
    e, st = s.ended_ns, s.started_ns
    return format_duration_ns(e - st) if e is not None and st is not None else "?"


def _run_summary(r: Any) -> dict:
    return {"id": r.id, "started_ns": render.json_ns(r.started_ns), "ranks": r.ranks,
            "sessions": [s.id for s in r.sessions]}


def _rank_ranges(ranks: list[int]) -> str:
    """``0-3,5`` for [0, 1, 2, 3, 5]; ``-`` when empty."""
    if not ranks:
        return "-"
    parts = []
    lo = prev = ranks[0]
    for x in ranks[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(str(lo) if lo == prev else f"{lo}-{prev}")
        if x is not None:
            lo = prev = x
    return ",".join(parts)


def _short_path(p: Path) -> str:
    """A spool path relative to the working directory when it is below it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# ============================================================================ export

_EXTS = {"otel": ".otlp.json", "otlp": ".otlp.json", "csv": ".csv", "json": ".json", "perfetto": ".perfetto.json"}


def _file_target(output: str | None, fmt: str) -> Path:
    """The file an export writes: ``--output`` (inside it when it is a real directory), refused
    when it is a symlink, device, FIFO or socket (:func:`cirron.export._common.check_output`)."""
    from cirron.export import DEFAULT_OUTPUTS
    from cirron.export._common import OutputRefused, check_output

    path = Path(output) if output else Path(DEFAULT_OUTPUTS[fmt])
    if path.is_dir() and not path.is_symlink():
        path = path / ("cirron-traces" + _EXTS[fmt])
    try:
        check_output(path)
    except OutputRefused as exc:
        fail(str(exc))
    parent = path.parent
    if not parent.is_dir():
        fail(f"Cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        fail(f"Cannot write {path}: permission denied")
    return path


@contextlib.contextmanager
def _stdout_target() -> Iterator[Path]:
    """A private temporary file an export writes; its content then goes to standard output."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cirron-export-") as d:
        path = Path(d) / "out"
        yield path
        with open(path, "rb") as fh:
            out = sys.stdout.buffer
            shutil.copyfileobj(fh, out, 1 << 20)
            out.flush()


def _parse_headers(values: list[str]) -> dict[str, str]:
    out = {}
    for h in values:
        if "=" not in h or not h.split("=", 1)[0].strip():
            fail(f"Invalid --header: {h} (expected KEY=VALUE)", EXIT_USAGE)
        k, v = h.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class ExportFormat(str, enum.Enum):
    parquet = "parquet"
    otel = "otel"
    otlp = "otlp"
    csv = "csv"
    json = "json"
    perfetto = "perfetto"


class OtlpProtocol(str, enum.Enum):
    protobuf = "http/protobuf"
    json = "http/json"


class Compression(str, enum.Enum):
    gzip = "gzip"
    none = "none"


@traces_app.command("export")
def export(
    fmt: Optional[ExportFormat] = typer.Option(None, "--format", case_sensitive=False,
                                               help="Output format (otlp is another name for otel)."),
    output: Optional[str] = typer.Option(None, "--output", help="Output file (a directory for parquet)."),
    session: Optional[str] = typer.Option(None, "--session", help="Export the session(s) whose id starts with this."),
    spool: list[str] = SpoolOpt,
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", metavar="URL",
        help="otel: POST to this OTLP/HTTP receiver instead ('env': OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)."),
    protocol: Optional[OtlpProtocol] = typer.Option(
        None, "--protocol",
        help="otel --endpoint: body encoding (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)."),
    header: list[str] = typer.Option([], "--header", metavar="KEY=VALUE",
                                     help="otel --endpoint: HTTP header, added to OTEL_EXPORTER_OTLP_HEADERS "
                                          "(repeatable)."),
    compression: Optional[Compression] = typer.Option(
        None, "--compression",
        help="otel --endpoint: body compression (default: OTEL_EXPORTER_OTLP_COMPRESSION, else none)."),
    timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS",
                                  help="otel --endpoint: deadline of each request, retries included."),
    partition_by: Optional[str] = typer.Option(
        None, "--partition-by", metavar="session|rank|run",
        help="parquet: write a hive-partitioned dataset (one directory per session, rank or run)."),
) -> None:
    """Convert traces to Parquet, OTLP/JSON, CSV, JSON or Perfetto, or send them to an OTLP receiver.

    With --endpoint the standard OTEL_EXPORTER_OTLP_* variables apply (headers, protocol, compression,
    timeout per attempt, CERTIFICATE, CLIENT_KEY, CLIENT_CERTIFICATE); the flags win over them.
    """
    from cirron.export import FORMATS

    if fmt is None:
        fail(f"Missing option --format (one of {', '.join(FORMATS)})", EXIT_USAGE)
    fmt = fmt.value
    if endpoint is not None and fmt not in ("otel", "otlp"):
        fail("--endpoint works with --format otel only", EXIT_USAGE)
    settings = None
    if endpoint is not None:
        settings = _otlp_settings(endpoint, protocol, _parse_headers(header), compression)
    if partition_by is not None and fmt != "parquet":
        fail("--partition-by works with --format parquet only", EXIT_USAGE)
    if partition_by is not None and partition_by not in ("session", "rank", "run"):
        fail(f"Invalid --partition-by: {partition_by} (expected session, rank or run)", EXIT_USAGE)
    fields = "export" if fmt in ("parquet", "csv") else "full"
    if fmt in ("csv", "json"):
        # their encoders free and allocate multi-MB buffers slice after slice: reused from the heap,
        # not mapped afresh each time (1M spans: json 3.1 -> 1.4 s of system time at 254 MB against
        # 246; csv 1.7 -> 0.7 s at 252 MB against 219; parquet would peak at 297 MB: it keeps the pin)
        from cirron._memory import reuse_heap

        reuse_heap()
    cat, chosen = _pick_sessions(spool, session, None)
    if not chosen:
        render.no_traces(err=True)
        raise typer.Exit(1)
    from cirron.spool import prefetch

    prefetch.start(chosen, with_marks=fmt != "csv")  # parsed while pyarrow is imported
    n_spans = sum(s.spans for s in chosen)
    what = f"{render.plural(n_spans, 'span')} from {render.plural(len(chosen), 'session')}"
    if fmt == "perfetto":
        from cirron._memory import reuse_heap
        from cirron.spool.columnar import can_read

        # its slices of encoded events likewise, when every session is encoded from columns (1M spans:
        # 1.5 -> 1.1 s of system time at 269 MB against 258); a session too big for that keeps the pin
        # (one of 2.5M spans: 286 MB with it, 318 without)
        if all(can_read(s) for s in chosen):
            reuse_heap()

    if settings is not None:
        _send(_iter_streamed(cat, chosen), settings, timeout, n_spans, len(chosen))
        if output is None:
            return

    from cirron import export as ex
    from cirron._arrow_setup import skip_pandas_check
    from cirron._errors import CirronDependencyError

    skip_pandas_check()
    to_stdout = output == ex.STDOUT
    target: Path | str = ex.STDOUT
    try:
        if fmt == "parquet":
            if to_stdout:
                fail("--output - (standard output) works with the single-file formats, not parquet", EXIT_USAGE)
            target = Path(output) if output else Path(ex.DEFAULT_OUTPUTS[fmt])
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                ex.check_output(target, directory=True)
                fail(f"Cannot write {target}: not a directory (parquet export writes three files into a directory)")
            ex.write_parquet(_iter_chunks(cat, chosen, fields), target, partition_by=partition_by)
        else:
            with contextlib.ExitStack() as stack:
                path = stack.enter_context(_stdout_target()) if to_stdout else _file_target(output, fmt)
                target = ex.STDOUT if to_stdout else path
                if fmt == "csv":
                    rows = ex.write_csv(_iter_chunks(cat, chosen, fields, marks=False), path)
                    what = render.plural(rows, "span")
                elif fmt == "json":
                    ex.write_json(_iter_chunks(cat, chosen, fields), path)
                elif fmt == "perfetto":
                    starts = [s.started_ns for s in chosen if s.started_ns is not None]
                    ex.write_perfetto(_iter_streamed(cat, chosen), path, base_ns=min(starts) if starts else None)
                else:
                    ex.write_otlp_json(_iter_streamed(cat, chosen), path)
    except CirronDependencyError as exc:
        fail(str(exc))
    except ex.OutputRefused as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"Cannot write {target}: {exc.strerror or exc}")
    prefetch.stop()
    # the data itself may be on standard output: the summary then goes to stderr
    typer.echo(f"Exported {what} to {'standard output' if to_stdout else target}", err=to_stdout)


def _otlp_settings(endpoint: str, protocol: OtlpProtocol | None, headers: dict[str, str],
                   compression: Compression | None) -> Any:
    """The ``OTEL_EXPORTER_OTLP_*`` settings with the command's flags over them (one-line errors)."""
    from cirron._errors import CirronConfigError
    from cirron.export.otlp_http import OtlpSettings

    if endpoint != "env" and not re.match(r"^https?://[^/\s]+", endpoint):
        fail(f"Invalid --endpoint: {endpoint} (expected an http:// or https:// URL, or env)", EXIT_USAGE)
    try:
        settings = OtlpSettings.from_env()
        settings.ssl_context()  # a bad TLS file: say so before reading the spool
    except CirronConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    return settings.override(endpoint=None if endpoint == "env" else endpoint,
                             protocol=protocol.value if protocol else None, headers=headers,
                             compression=compression.value if compression else None)


def _send(chosen: Iterable[Session | SessionInfo], settings: Any, timeout: float, n_spans: int,
          n_sessions: int) -> None:
    """POST the chosen sessions' spans in requests of a receiver's size (:func:`iter_otlp_requests`),
    one after another; stops at the first that fails, saying how much went before it."""
    from cirron._errors import CirronDependencyError
    from cirron.export import iter_otlp_requests
    from cirron.export.otlp_http import OTLPStreamError

    try:
        res = settings.send_stream(iter_otlp_requests(chosen), deadline=timeout,
                                   timeout=min(settings.timeout, timeout), on_warning=warn)
    except CirronDependencyError as exc:
        fail(str(exc))
    except OTLPStreamError as exc:
        fail(f"{exc} ({exc.sent.spans:,} of {render.plural(n_spans, 'span')} sent in "
             f"{render.plural(exc.sent.requests, 'request')} before it)")
    what = f"{render.plural(res.spans, 'span')} from {render.plural(n_sessions, 'session')}"
    answer = f"HTTP {res.status}, " if res.status is not None else ""
    typer.echo(f"Sent {what} to {settings.endpoint} ({render.plural(res.requests, 'request')}, {answer}"
               f"{render.plural(res.attempts, 'attempt')})")


# ============================================================================ clear


class _Interrupt:
    """Turn SIGINT into a flag checked between atomic steps (restored on exit)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handler(self, _signum: int, _frame: Any) -> None:
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _Deleter:
    """Deletes groups of paths atomically: every path of a group is renamed into a trash dir
    first, then removed; a group whose renames fail halfway is put back. Each ``.cirron/``
    directory gets its own trash dir (a rename never crosses file systems)."""

    def __init__(self) -> None:
        self.trash: dict[Path, Path] = {}
        self.files = 0
        self.dirs = 0

    def _trash_dir(self, base: Path) -> Path:
        trash = self.trash.get(base)
        if trash is None:
            import secrets

            trash = self.trash[base] = base / f".cirron-trash-{os.getpid()}-{secrets.token_hex(4)}"
            trash.mkdir()
        return trash

    def delete_group(self, base: Path, files: list[Path], dirs: list[Path]) -> None:
        trash = self._trash_dir(base)
        moved: list[tuple[Path, Path]] = []
        try:
            for i, p in enumerate([*files, *dirs]):
                dst = trash / f"{i}-{p.name}"
                os.replace(p, dst)
                moved.append((p, dst))
        except FileNotFoundError:
            pass  # already gone: nothing to undo for this one
        except OSError:
            for src, dst in reversed(moved):
                with contextlib.suppress(OSError):
                    os.replace(dst, src)
            raise
        for _src, dst in moved:
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst, ignore_errors=True)
                self.dirs += 1
            else:
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
                self.files += 1

    def close(self) -> None:
        for trash in self.trash.values():
            shutil.rmtree(trash, ignore_errors=True)


def _delete_groups(groups: list[DeleteGroup], intr: _Interrupt) -> tuple[_Deleter, bool]:
    d = _Deleter()
    try:
        with _progress("Deleting", enabled=len(groups) > 1, total=len(groups)) as tick:
            for base, files, dirs in groups:
                if intr.hit:
                    return d, True
                d.delete_group(base, files, dirs)
                tick()
        return d, intr.hit
    finally:
        d.close()


def _confirm(question: str) -> bool:
    typer.echo(f"? {question} (y/N) ", nl=False)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    if not answer.endswith("\n"):
        typer.echo("")
    return answer.strip().lower() in ("y", "yes")


@traces_app.command("clear")
def clear(
    before: Optional[str] = typer.Option(None, "--before", help="Only sessions started before this ISO-8601 date."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Retain the N most recent finished sessions."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Skip the confirmation prompt."),
    no_prune_orphans: bool = typer.Option(
        False, "--no-prune-orphans", help="Keep snapshot dirs no session references."
    ),
    spool: list[str] = SpoolOpt,
) -> None:
    """Delete sessions (batch files and snapshot dirs); live sessions are never touched."""
    if keep is not None and keep < 0:
        fail(f"Invalid --keep: {keep} (expected 0 or more)", EXIT_USAGE)
    cutoff = None
    if before is not None:
        cutoff = parse_iso_date(before)
        if cutoff is None:
            fail(f"Invalid --before date: {before} (expected ISO-8601)", EXIT_USAGE)
    try:
        _clear(cutoff, keep, yes, not no_prune_orphans, spool)
    except KeyboardInterrupt:
        typer.echo("\nInterrupted: nothing was deleted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _clear(cutoff: int | None, keep: int | None, yes: bool, prune: bool, spool: list[str]) -> None:
    from cirron.spool.retention import plan_spool_clear

    cat = open_spools(spool)
    sources = [(d, cat.clear_source(d)) for d in cat.spools]
    _run_clear(plan_spool_clear(sources, cutoff, keep, prune), yes)


def _run_clear(plan: SpoolClearPlan, yes: bool) -> None:
    for s in plan.live:
        typer.echo(f"Keeping live session {render.short_id(s.id)} (its writer still holds the lock)", err=True)
    for s in plan.unfinished:
        typer.echo(f"Keeping unfinished session {render.short_id(s.id)} (no closed root and no liveness lock: "
                   "its writer may still be writing)", err=True)
    if not plan.eligible and not plan.orphan_dirs:
        typer.echo("Nothing to delete.")
        return
    question = (f"Delete {render.plural(len(plan.eligible), 'session')} ({plan.n_spans:,} spans, "
                f"{format_bytes(plan.n_bytes)}, {plan.n_dirs:,} snapshot dirs)?")
    if not yes and not _confirm(question):
        typer.echo("Aborted.", err=True)
        raise typer.Exit(1)
    groups: list[DeleteGroup] = [*plan.groups, *((base, [], [d]) for base, d in plan.orphan_dirs)]
    with _Interrupt() as intr:
        try:
            deleter, interrupted = _delete_groups(groups, intr)
        except OSError as exc:
            fail(f"Could not delete: {exc.strerror or exc} ({getattr(exc, 'filename', '')})")
    summary = f"{render.plural(deleter.files, 'file')} and {render.plural(deleter.dirs, 'snapshot dir')}"
    if interrupted:
        typer.echo(f"Interrupted: deleted {summary} before stopping.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo(f"Deleted {render.plural(len(plan.eligible), 'session')} ({summary}).")


__all__ = ["parse_duration_ns", "parse_iso_date", "traces_app"]
