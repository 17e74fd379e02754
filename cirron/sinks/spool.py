"""``output="spool"`` (the default): one strict-JSON batch file per flush under ``.cirron/spool/``."""

from __future__ import annotations

from collections import deque
from typing import Any

from cirron._flush.batch import Batch
from cirron.sinks import Sink
from cirron.spool.writer import SpoolFullError, SpoolWriter

#: Records kept in memory for a retry while the disk refuses writes; beyond this, oldest dropped.
MAX_RETAINED_RECORDS = 500_000


class SpoolSink(Sink):
    """``output="spool"``: each batch as one JSON file under ``.cirron/spool/`` (cirron.spool.writer)."""

    name = "spool"

    def __init__(self, owner: Any) -> None:
        super().__init__()
        cfg = owner._config
        self.writer: SpoolWriter = SpoolWriter(cfg.spool_dir, owner.session_id, cfg.max_spool_bytes)
        self._failed: deque[Batch] = deque()
        self._retained = 0
        self._last_reason = "write_error"
        self.opened: bool = False

    def open(self) -> None:
        self.writer.open()
        self.opened = True

    def write_sync(self, batch: Batch) -> None:
        if not self.opened:
            try:
                self.open()
            except OSError as exc:
                self.note_error(exc)
                self._retain(batch, "write_error")
                return
        while self._failed:
            if not self._write_one(self._failed[0]):
                self._retain(batch, self._last_reason)
                return
            old = self._failed.popleft()
            self._retained -= old.span_count + old.mark_count
        if not self._write_one(batch):
            self._retain(batch, self._last_reason)

    def _write_one(self, batch: Batch) -> bool:
        try:
            self.writer.write_batch(batch.created_ns, batch.batch_id, batch.json_chunks())
        except SpoolFullError as exc:
            self._last_reason = "disk_cap"
            self.note_error(exc)
            return False
        except OSError as exc:
            self._last_reason = "write_error"
            self.note_error(exc)
            return False
        self.count_written(batch)
        return True

    def _retain(self, batch: Batch, reason: str) -> None:
        batch.kept = True
        self._failed.append(batch)
        self._retained += batch.span_count + batch.mark_count
        while self._retained > MAX_RETAINED_RECORDS and len(self._failed) > 1:
            old = self._failed.popleft()
            self._retained -= old.span_count + old.mark_count
            self.count_dropped(reason, old)

    def drop_retained(self) -> None:
        """At shutdown: what could not be written is counted as dropped."""
        while self._failed:
            old = self._failed.popleft()
            self.count_dropped(self._last_reason, old)
        self._retained = 0

    def pending(self) -> tuple[int, int]:
        return sum(b.closed_spans for b in self._failed), sum(b.mark_count for b in self._failed)

    def close(self) -> None:
        self.writer.close()

    def state(self) -> dict[str, Any]:
        st = super().state()
        w = self.writer
        st.update(
            dir=str(w.spool_dir),
            bytes_written=w.bytes_written,
            evicted_sessions=w.evicted_sessions,
            evicted_files=w.evicted_files,
            refused_writes=w.refused_writes,
        )
        return st
