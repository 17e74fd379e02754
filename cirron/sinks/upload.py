"""``output="platform"``: spool batches uploaded to the Cirron platform, the spool staying the source of truth.

Each batch is POSTed as the spool's own JSON to ``{api_endpoint}/v1/batches`` with
``Authorization: Bearer <api_key>``, ``X-Cirron-Workspace: <workspace_id>`` (when set) and
``Idempotency-Key: <batch_id>``, so sending a batch twice is harmless on the platform side.

Upload state lives beside the spool: an empty marker file ``<spool>/.uploaded/<batch_id>`` is
created once the platform has accepted a batch (2xx, or 409 = it already had it). The live sink
and ``cirron spool flush`` share that state, so a batch is uploaded once by whichever gets to it
first, and a batch the platform did not take (platform down, no API key yet, retries exhausted)
simply has no marker: ``cirron spool flush`` picks it up later. After such a failure the live
sink leaves new batches to the spool for :data:`LIVE_COOLDOWN` seconds instead of retrying each
one. Nothing is lost as long as the batch file is in the spool, which is why
``output="platform"`` always runs the spool sink too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cirron._flush.batch import Batch
from cirron._redact import install_log_filter
from cirron.sinks import Sink

_log = install_log_filter(logging.getLogger("cirron.upload"))

UPLOADED_DIR_NAME = ".uploaded"
WORKSPACE_HEADER = "X-Cirron-Workspace"
#: Answers that mean "the platform has this batch".
ACCEPTED_STATUS = frozenset({409})
#: The live sink tries briefly (the spool keeps the batch); ``cirron spool flush`` tries harder.
LIVE_MAX_ATTEMPTS = 3
LIVE_DEADLINE = 10.0
#: After a failed live upload, later batches are left to the spool without trying for this long.
LIVE_COOLDOWN = 30.0
FLUSH_MAX_ATTEMPTS = 6
FLUSH_DEADLINE = 60.0
DEFAULT_TIMEOUT = 10.0


def batches_url(api_endpoint: str) -> str:
    return api_endpoint.rstrip("/") + "/v1/batches"


def upload_headers(api_key: str, workspace_id: str | None, batch_id: str) -> dict[str, str]:
    from cirron._version import __version__

    headers = {
        "Authorization": f"Bearer {api_key}",
        "Idempotency-Key": batch_id,
        "Content-Type": "application/json",
        "User-Agent": f"cirron/{__version__}",
    }
    if workspace_id:
        headers[WORKSPACE_HEADER] = workspace_id
    return headers


class UploadState:
    """Which batches the platform already has: marker files under ``<spool>/.uploaded/``."""

    def __init__(self, spool_dir: str | os.PathLike[str]) -> None:
        self.spool_dir: Path = Path(spool_dir)
        self.dir: Path = self.spool_dir / UPLOADED_DIR_NAME

    def is_uploaded(self, batch_id: str) -> bool:
        return (self.dir / batch_id).exists()

    def uploaded_ids(self) -> set[str]:
        try:
            return {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}
        except FileNotFoundError:
            return set()

    def mark_uploaded(self, batch_id: str) -> None:
        if not batch_id or "/" in batch_id or batch_id.startswith("."):
            raise ValueError(f"invalid batch id {batch_id!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / batch_id, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)

    def prune(self, existing_ids: Iterable[str]) -> int:
        """Remove markers of batches no longer in the spool (cleared or evicted); returns how many."""
        keep = set(existing_ids)
        n = 0
        for bid in self.uploaded_ids() - keep:
            try:
                (self.dir / bid).unlink()
                n += 1
            except OSError:
                pass
        return n


def upload_policy(live: bool, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Keyword arguments for the shared retry loops of :mod:`cirron.export.otlp_http`."""
    return {
        "timeout": timeout,
        "deadline": LIVE_DEADLINE if live else FLUSH_DEADLINE,
        "max_attempts": LIVE_MAX_ATTEMPTS if live else FLUSH_MAX_ATTEMPTS,
        "base_backoff": 0.5,
        "max_backoff": 8.0,
        "otlp": False,
        "accept": ACCEPTED_STATUS,
        "what": "upload",
    }


def upload_file_sync(client: Any, url: str, api_key: str, workspace_id: str | None, batch_id: str, body: bytes,
                     **policy: Any) -> Any:
    """Upload one batch file's bytes (used by ``cirron spool flush``); raises ``OTLPExportError``."""
    from cirron.export.otlp_http import post_with_retries

    kw = upload_policy(live=False)
    kw.update(policy)
    return post_with_retries(client, url, body, upload_headers(api_key, workspace_id, batch_id), **kw)


class PlatformSink(Sink):
    name = "platform"
    is_async = True

    def __init__(self, owner: Any) -> None:
        super().__init__()
        cfg = owner._config if getattr(owner, "_config", None) is not None else owner.config
        self.api_key: str | None = cfg.api_key
        self.workspace_id: str | None = cfg.workspace_id
        self.url: str = batches_url(cfg.api_endpoint)
        self.state_store: UploadState = UploadState(cfg.spool_dir)
        self._client: Any = None
        self._warned = False
        self._cooldown_until = 0.0
        #: Batches (and their records) the platform has not taken yet; they wait in the spool.
        self.batches_deferred: int = 0
        self.spans_deferred: int = 0
        self.marks_deferred: int = 0

    async def start(self) -> None:
        import httpx

        if not self.api_key:
            self._warn_once("no API key is configured (run `cirron auth login --api-key …` or set CIRRON_API_KEY); "
                            "batches stay in the spool, upload them later with `cirron spool flush`")
            return
        self._client = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            import anyio

            with anyio.move_on_after(0.5):
                await client.aclose()

    async def write(self, batch: Batch) -> None:
        import anyio

        from cirron.export.otlp_http import OTLPExportError, apost_with_retries

        if self._client is None or time.monotonic() < self._cooldown_until:
            self._defer(batch)
            return
        body = await anyio.to_thread.run_sync(batch.to_json)
        headers = upload_headers(self.api_key or "", self.workspace_id, batch.batch_id)
        try:
            await apost_with_retries(self._client, self.url, body, headers, **upload_policy(live=True))
        except OTLPExportError as exc:
            self.note_error(exc)
            self._defer(batch)
            self._cooldown_until = time.monotonic() + LIVE_COOLDOWN
            if exc.status in (401, 403):
                self._warn_once(f"the platform refused the API key ({exc}); batches stay in the spool")
            return
        try:
            await anyio.to_thread.run_sync(self.state_store.mark_uploaded, batch.batch_id)
        except OSError as exc:  # uploaded but not recorded: a later flush re-sends it, idempotently
            self.note_error(exc)
        self.count_written(batch)

    def _defer(self, batch: Batch) -> None:
        self.batches_deferred += 1
        self.spans_deferred += batch.closed_spans
        self.marks_deferred += batch.mark_count

    def _warn_once(self, message: str) -> None:
        self.last_error: str | None = self.last_error or message
        if not self._warned:
            self._warned = True
            _log.warning("cirron platform upload: %s", message)

    def state(self) -> dict[str, Any]:
        st = super().state()
        st.update(endpoint=self.url, batches_deferred=self.batches_deferred, spans_deferred=self.spans_deferred,
                  marks_deferred=self.marks_deferred)
        return st
