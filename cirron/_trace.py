"""``ci.trace()``: the in-process views (tree, dict, json, DataFrame) of what was recorded."""

from __future__ import annotations

import html
import json
import sys
from typing import Any

from cirron._errors import CirronConfigError, CirronDependencyError
from cirron._format import span_label, trace_line
from cirron._ids import hex_id
from cirron._schema import SESSION_SPAN_NAME, strict_json
from cirron.spool.reconstruct import children_index

FORMATS = ("tree", "dict", "json", "df")


def build_nodes(spans: list[tuple[Any, ...]], marks: dict[int, list[Any]], name: str | None,
                last: int | None) -> dict[str, Any]:
    """The ``format="dict"`` structure: ``{"roots": [...], "span_count": n}``.

    ``spans`` are closed-span tuples (``_record.span.CLOSED_FIELDS``; open spans with end None).
    """
    session_ids = {s[0] for s in spans if s[2] == SESSION_SPAN_NAME}
    wanted = [s for s in spans if s[0] not in session_ids]
    by_id = {s[0]: s for s in wanted}
    wanted.sort(key=lambda s: (s[4], s[0]))

    def node(s: tuple[Any, ...]) -> dict[str, Any]:
        wall = s[5] - s[4] if s[5] is not None else None
        return {
            "id": hex_id(s[0]),
            "name": s[2],
            "index": s[3],
            "wall_us": wall / 1_000 if wall is not None else None,
            "cpu_ns": s[6],
            "gpu_ns": s[7],
            "memory_peak_bytes": s[8],
            "attrs": strict_json(s[10]) if s[10] else {},
            "marks": [{"name": m[1], "value": m[2], "kind": m[3], "ts_ns": m[4]} for m in marks.get(s[0], ())],
            "children": [],
        }

    if last is not None:
        closed = sorted((s for s in wanted if s[5] is not None), key=lambda s: s[5])
        picked = closed[-last:] if last > 0 else []
        return {"roots": [node(s) for s in picked], "span_count": len(picked)}

    recs = {s[0]: {"id": s[0], "parent_id": s[1], "start_ns": s[4], "rec": s} for s in wanted}
    top, children = children_index(recs.values())
    count = 0

    def build(r: dict[str, Any]) -> dict[str, Any]:
        nonlocal count
        count += 1
        root = node(r["rec"])
        stack = [(root, r)]
        while stack:
            n, sp = stack.pop()
            for child in children.get(sp["id"], ()):
                count += 1
                cn = node(child["rec"])
                n["children"].append(cn)
                stack.append((cn, child))
        return root

    if name is None:
        return {"roots": [build(r) for r in top], "span_count": count}
    tops = []
    for s in wanted:  # a match nested in another match is already in that one's subtree
        if s[2] != name:
            continue
        p, nested = s[1], False
        while p in by_id:
            if by_id[p][2] == name:
                nested = True
                break
            p = by_id[p][1]
        if not nested:
            tops.append(recs[s[0]])
    return {"roots": [build(r) for r in tops], "span_count": count}


def render_tree(data: dict[str, Any]) -> str:
    lines: list[str] = []
    stack = [(n, 0) for n in reversed(data["roots"])]
    while stack:
        n, depth = stack.pop()
        wall = None if n["wall_us"] is None else int(n["wall_us"] * 1_000)
        latest = {m["name"]: m["value"] for m in n["marks"]}
        lines.append(trace_line(depth, span_label(n["name"], n["index"]), wall, n["attrs"], latest))
        for child in reversed(n["children"]):
            stack.append((child, depth + 1))
    if not lines:
        return "(no spans recorded)"
    return "\n".join(lines)


def to_dataframe(data: dict[str, Any]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise CirronDependencyError("pandas", 'ci.trace(format="df")', extra="pandas") from None
    rows = []
    stack = [(n, None, 0) for n in reversed(data["roots"])]
    while stack:
        n, parent_id, depth = stack.pop()
        rows.append({
            "id": n["id"], "parent_id": parent_id, "name": n["name"], "index": n["index"],
            "wall_us": n["wall_us"], "cpu_ns": n["cpu_ns"], "gpu_ns": n["gpu_ns"],
            "memory_peak_bytes": n["memory_peak_bytes"], "mark_count": len(n["marks"]), "depth": depth,
        })
        for child in reversed(n["children"]):
            stack.append((child, n["id"], depth + 1))
    columns = ["id", "parent_id", "name", "index", "wall_us", "cpu_ns", "gpu_ns", "memory_peak_bytes",
               "mark_count", "depth"]
    return pd.DataFrame(rows, columns=columns)


class TraceTreeRepr:
    """What ``ci.trace()`` returns in a Jupyter kernel: renders itself in the cell."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)

    def _repr_html_(self) -> str:
        return f"<pre class='cirron-trace'>{html.escape(self.text)}</pre>"


def in_notebook() -> bool:
    ipython_mod = sys.modules.get("IPython")
    if ipython_mod is None:
        return False
    try:
        shell = ipython_mod.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def render(spans: list[tuple[Any, ...]], marks: dict[int, list[Any]], format: str, name: str | None,
           last: int | None) -> Any:
    if format not in FORMATS:
        raise CirronConfigError(f"ci.trace() format must be one of {', '.join(FORMATS)}, not {format!r}")
    if last is not None and (not isinstance(last, int) or last < 0):
        raise CirronConfigError(f"ci.trace() last must be a non-negative int, not {last!r}")
    data = build_nodes(spans, marks, name, last)
    if format == "dict":
        return data
    if format == "json":
        return json.dumps(strict_json(data))
    if format == "df":
        return to_dataframe(data)
    text = render_tree(data)
    if in_notebook():
        return TraceTreeRepr(text)
    print(text)
    return None
