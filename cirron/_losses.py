"""What a session could not keep, said in one line on stderr when it ends.

Every record that was dropped (a full buffer, the disk cap, an unwritable spool, a dead receiver,
a worker process that died before it could write) is already counted in ``health()``; this is
the line that makes sure the user hears about it without looking: once per session, never a
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cirron._redact import redact


@dataclass
class Loss:
    """Records one place (a sink, the buffers, the workers) did not keep, and why."""

    where: str
    spans: int = 0
    marks: int = 0
    reasons: list[str] = field(default_factory=list)
    last_error: str | None = None

    def add(self, key: str, count: int) -> None:
        """Count ``count`` records under a drop key such as ``spans_write_error``."""
        if not count:
            return
        kind, _, reason = key.partition("_")
        if kind == "spans":
            self.spans += count
        elif kind == "marks":
            self.marks += count
        else:
            return
        if reason and reason not in self.reasons:
            self.reasons.append(reason)

    def __bool__(self) -> bool:
        return bool(self.spans or self.marks)


def sink_loss(state: Mapping[str, Any]) -> Loss:
    """What a sink lost by the end of its session: its drops and whatever it still held."""
    loss = Loss(str(state.get("name", "sink")), last_error=state.get("last_error"))
    for key, count in (state.get("dropped") or {}).items():
        loss.add(key, count)
    loss.add("spans_not_written", state.get("spans_pending") or 0)
    loss.add("marks_not_written", state.get("marks_pending") or 0)
    return loss


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def loss_line(session_id: str | None, losses: Iterable[Loss], lost_workers: Iterable[Any] = ()) -> str | None:
    """The one warning line for ``losses`` and the worker processes that died before writing
    what they recorded (:class:`cirron._workers.LostWorker`), or None when nothing was lost."""
    parts = []
    workers = list(lost_workers)
    if workers:
        which = ", ".join(str(w.pid) for w in workers)
        part = (f"{_plural(len(workers), 'worker process').replace('processs', 'processes')} (pid {which}) "
                "ended before writing what it recorded since its last flush (killed?)")
        reported = [w for w in workers if w.spans is not None]
        spans, marks = sum(w.spans for w in reported), sum(w.marks for w in reported)
        if spans or marks:
            what = " and ".join(_plural(n, w) for n, w in ((spans, "span"), (marks, "mark")) if n)
            part += f": {what} by {'their' if len(workers) > 1 else 'its'} last report"
        parts.append(part)
    for loss in losses:
        if not loss:
            continue
        what = " and ".join(_plural(n, w) for n, w in ((loss.spans, "span"), (loss.marks, "mark")) if n)
        why = ", ".join(loss.reasons)
        if loss.last_error:
            why = f"{why}; last error: {loss.last_error}" if why else loss.last_error
        parts.append(f"{loss.where}: {what} ({why})" if why else f"{loss.where}: {what}")
    if not parts:
        return None
    session = f" of session {session_id[:8]}" if session_id else ""
    return f"cirron: records{session} were not kept — {'; '.join(parts)}. See ci.health() for the counts."


def warn(line: str) -> None:
    """Write ``line`` to stderr; a closed or broken stderr is not our failure to report."""
    try:
        sys.stderr.write(redact(line).replace("\n", " ") + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
