"""``output="log"`` / ``output="stdout"``: one line per closed span and per mark, indented by depth."""

from __future__ import annotations

import logging
import sys
from typing import Any

from cirron._flush.batch import Batch
from cirron._format import format_attrs, format_duration_ns, format_value
from cirron._schema import decode_mark_value
from cirron.sinks import Sink

logger = logging.getLogger("cirron")
_MAX_TRACKED = 100_000


class ConsoleSink(Sink):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._depth: dict[str, int] = {}

    def _emit(self, line: str) -> None:
        if self.name == "log":
            logger.info(line)
        else:
            sys.stdout.write(line + "\n")

    def write_sync(self, batch: Batch) -> None:
        if len(self._depth) > _MAX_TRACKED:
            self._depth.clear()
        depth = self._depth
        for span in batch.spans:
            parent = span["parent_id"]
            d = depth[parent] + 1 if parent in depth else 0
            depth[span["id"]] = d
        for span in batch.spans:
            if span["end_ns"] is None:
                continue
            label = span["name"] if span["index"] is None else f"{span['name']}[{span['index']}]"
            attrs = format_attrs(span["attrs"])
            dur = format_duration_ns(span["end_ns"] - span["start_ns"])
            self._emit(f"{'  ' * depth.get(span['id'], 0)}{label} — {dur}{' ' + attrs if attrs else ''}")
        for mark in batch.marks:
            d = depth.get(mark["span_id"], -1) + 1
            value = format_value(decode_mark_value(mark["value"], mark["value_type"]))
            suffix = " (summary)" if mark["kind"] == "summary" else ""
            self._emit(f"{'  ' * d}ci.mark {mark['name']}={value}{suffix}")
        if self.name == "stdout":
            sys.stdout.flush()
        self.count_written(batch)

    def state(self) -> dict[str, Any]:
        return super().state()
