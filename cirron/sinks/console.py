"""``output="log"`` / ``output="stdout"``: one line per closed span and per mark, in the order
they happened, each carrying its path so a line reads on its own as the run goes::

    epoch[0]/batch[3]: ci.mark loss=0.52
    epoch[0]/batch[3]/forward — 1.2ms
    epoch[0]/batch[3] — 4.0ms data_load_ns=1200
    request chat — 9.5ms route=/chat

The lines are the view's (:mod:`cirron._format`), with the path in place of the indent. The
session root is left out of paths (it is every line's ancestor); its own line comes when it
closes. A path is built from every span the sink has seen, open ones included (a flush writes a
span that is still open as such), so a batch line names its epoch while the epoch runs.
"""

from __future__ import annotations

import logging
import sys

from cirron._flush.batch import Batch
from cirron._format import format_duration_ns, format_view_value, label_attrs, label_of, path_mark_line, path_span_line
from cirron._redact import install_log_filter
from cirron._schema import ROOT_SENTINEL, decode_mark_value
from cirron.sinks import Sink

logger: logging.Logger = install_log_filter(logging.getLogger("cirron"))
#: Spans remembered for paths; a closed span is forgotten once its batch is printed.
_MAX_TRACKED = 100_000
_MAX_DEPTH = 256


class ConsoleSink(Sink):
    """``output="log"``/``"stdout"``: each span and mark as a line, with its path, as it is written."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        #: span id → (label, parent id) of the spans that may still appear in a path.
        self._nodes: dict[str, tuple[str, str | None]] = {}

    def _emit(self, line: str) -> None:
        if self.name == "log":
            logger.info(line)
        else:
            sys.stdout.write(line + "\n")

    def path_of(self, span_id: str | None) -> str:
        """``epoch[0]/batch[3]/forward`` for a span; ``""`` for the session root or an unknown id."""
        parts: list[str] = []
        node = span_id
        while node is not None and len(parts) < _MAX_DEPTH:
            entry = self._nodes.get(node)
            if entry is None or entry[1] is None:  # unknown, or the session root
                break
            parts.append(entry[0])
            node = entry[1]
        return "/".join(reversed(parts))

    def write_sync(self, batch: Batch) -> None:
        nodes = self._nodes
        if len(nodes) > _MAX_TRACKED:
            nodes.clear()
        for span in batch.spans:
            nodes[span["id"]] = (label_of(span), span["parent_id"])
        lines: list[tuple[int, int, str]] = []
        for span in batch.spans:
            end = span["end_ns"]
            if end is None:
                continue
            path = self.path_of(span["id"]) or label_of(span)
            attrs = " ".join(f"{k}={format_view_value(v)}" for k, v in label_attrs(span).items())
            lines.append((end, 1, path_span_line(path, format_duration_ns(end - span["start_ns"]), attrs)))
        for mark in batch.marks:
            sid = mark["span_id"]
            path = "" if sid == ROOT_SENTINEL else self.path_of(sid)
            value = format_view_value(decode_mark_value(mark["value"], mark["value_type"]))
            ts = mark["ts_ns"] if type(mark["ts_ns"]) is int else 0
            lines.append((ts, 0, path_mark_line(path, mark["name"], value, mark["kind"] == "summary")))
        lines.sort(key=lambda x: (x[0], x[1]))  # in time order; a mark before a span ending with it
        for _ts, _kind, line in lines:
            self._emit(line)
        if self.name == "stdout":
            sys.stdout.flush()
        for span in batch.spans:  # closed spans have closed children: nothing will name them again
            if span["end_ns"] is not None and span["parent_id"] is not None:
                nodes.pop(span["id"], None)
        self.count_written(batch)
