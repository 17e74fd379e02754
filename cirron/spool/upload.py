"""Uploading a spool's batch files to the platform after the fact (``cirron spool flush``).

Resumable and idempotent: each accepted batch gets a marker under ``<spool>/.uploaded/`` (shared
with the live ``platform`` sink, :class:`cirron.sinks.upload.UploadState`) and every request
carries ``Idempotency-Key: <batch_id>``, so an interrupted or repeated upload sends each batch at
most once more and never loses one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirron.spool.reader import BatchFile, WarningCallback

__all__ = ["UploadPlan", "UploadResult", "plan_upload", "upload_pending"]


@dataclass
class UploadPlan:
    """The spool's batch files and those the platform does not have yet."""

    spool_dir: Path
    files: list[BatchFile]
    pending: list[BatchFile]

    @property
    def already_uploaded(self) -> int:
        return len(self.files) - len(self.pending)


@dataclass
class UploadResult:
    uploaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_uploaded: int = 0
    #: The last refusal or transport error, if any, and its HTTP status (None for a transport error).
    error: str | None = None
    status: int | None = None
    #: The upload stopped on KeyboardInterrupt; what is left goes on the next run.
    interrupted: bool = False


def plan_upload(spool_dir: str | os.PathLike[str], on_warning: WarningCallback | None = None) -> UploadPlan:
    from cirron.sinks.upload import UploadState
    from cirron.spool.reader import list_batch_files

    p = Path(spool_dir)
    files = list_batch_files(p, on_warning) if p.is_dir() else []
    done = UploadState(p).uploaded_ids()
    return UploadPlan(p, files, [bf for bf in files if bf.batch_id not in done])


def upload_pending(plan: UploadPlan, url: str, api_key: str, workspace_id: str | None, timeout: float,
                   on_warning: WarningCallback | None = None,
                   on_uploaded: Callable[[BatchFile], Any] | None = None) -> UploadResult:
    """Send ``plan.pending`` one file at a time, marking each accepted one as uploaded. A file
    that vanished, cannot be read or is not a complete JSON batch is skipped (with a warning);
    a refused one counts as failed, and a 401/403 stops the run (every file would be refused)."""
    import httpx
    import orjson

    from cirron._safeopen import open_regular
    from cirron.export.otlp_http import OTLPExportError
    from cirron.sinks.upload import UploadState, upload_file_sync

    warn = on_warning or (lambda _m: None)
    state = UploadState(plan.spool_dir)
    result = UploadResult()
    with httpx.Client(timeout=timeout) as client:
        try:
            for bf in plan.pending:
                try:
                    with open_regular(bf.path, follow_symlinks=False) as fh:
                        body = fh.read()
                except FileNotFoundError:  # cleared or evicted meanwhile
                    result.skipped += 1
                    continue
                except OSError as exc:
                    warn(f"Skipping {bf.name}: {exc.strerror or exc}")
                    result.skipped += 1
                    continue
                try:
                    orjson.loads(body)
                except orjson.JSONDecodeError:
                    warn(f"Skipping {bf.name}: not a complete JSON batch file")
                    result.skipped += 1
                    continue
                try:
                    upload_file_sync(client, url, api_key, workspace_id, bf.batch_id, body, timeout=timeout)
                except OTLPExportError as exc:
                    result.failed += 1
                    result.error = str(exc)
                    result.status = exc.status
                    if exc.status in (401, 403):
                        break
                    continue
                state.mark_uploaded(bf.batch_id)
                result.uploaded += 1
                result.bytes_uploaded += len(body)
                if on_uploaded is not None:
                    on_uploaded(bf)
        except KeyboardInterrupt:
            result.interrupted = True
    return result
