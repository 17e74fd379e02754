"""``output="log"`` / ``output="stdout"``: one line per closed span and per mark, indented by depth."""

from __future__ import annotations

import logging
import sys

from cirron._flush.batch import Batch
from cirron._format import format_duration_ns, format_view_value, label_of, view_mark_line, view_span_line
from cirron._schema import decode_mark_value
from cirron.sinks import Sink

logger = logging.getLogger("cirron")
_MAX_TRACKED = 100_000


class ConsoleSink(Sink):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._parent: dict[str, str | None] = {}
        self._depth: dict[str, int] = {}

    def _emit(self, line: str) -> None:
        if self.name == "log":
            logger.info(line)
        else:
            sys.stdout.write(line + "\n")

    def depth_of(self, span_id: str | None) -> int:
        """Distance from the session root, walking parents seen so far (children close first)."""
        chain: list[str] = []
        node = span_id
        while node is not None and node not in self._depth and node in self._parent and len(chain) < 10_000:
            chain.append(node)
            node = self._parent[node]
        base = self._depth.get(node, -1) if node is not None else -1
        for i, n in enumerate(reversed(chain)):
            self._depth[n] = base + 1 + i
        return self._depth.get(span_id, 0) if span_id is not None else 0

    def write_sync(self, batch: Batch) -> None:
        if len(self._parent) > _MAX_TRACKED:
            self._parent.clear()
            self._depth.clear()
        for span in batch.spans:
            self._parent[span["id"]] = span["parent_id"]
        depth = {span["id"]: self.depth_of(span["id"]) for span in batch.spans}
        for span in batch.spans:
            if span["end_ns"] is None:
                continue
            attrs = " ".join(f"{k}={format_view_value(v)}" for k, v in (span["attrs"] or {}).items())
            dur = format_duration_ns(span["end_ns"] - span["start_ns"])
            self._emit(view_span_line(depth.get(span["id"], 0), label_of(span), dur, attrs))
        for mark in batch.marks:
            d = self.depth_of(mark["span_id"]) + 1 if mark["span_id"] in self._parent else 0
            value = format_view_value(decode_mark_value(mark["value"], mark["value_type"]))
            self._emit(view_mark_line(d, mark["name"], value, mark["kind"] == "summary"))
        if self.name == "stdout":
            sys.stdout.flush()
        self.count_written(batch)

