"""What ``cirron status`` reports, computed: the resolved configuration (each value with where it
came from), the spool's size and upload backlog, and whether the platform and the OTLP collector
answer.

Secrets are masked (``Config.masked()``, OTLP header values hidden). Reachability is one short
request each: ``GET {api_endpoint}`` for the platform (any HTTP answer means reachable) and an
empty OTLP export (``POST`` of an ``ExportTraceServiceRequest`` with no spans) for the collector,
which a real OTLP receiver answers with 2xx.

::

    from cirron.status import resolve_status
    doc = resolve_status(offline=True)
    print(doc["config"]["spool_dir"], doc["spool"]["batch_files"])
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["probe", "probe_collector", "resolve_status", "spool_info"]


def spool_info(spool_dir: Path) -> dict[str, Any]:
    """``dir``, ``exists``, ``batch_files``, ``bytes`` (everything under the directory) and
    ``not_uploaded`` (batch files the platform upload has not confirmed)."""
    from cirron.sinks.upload import UploadState
    from cirron.spool.reader import list_batch_files

    files = list_batch_files(spool_dir, lambda _m: None)
    total = 0
    try:
        for root, _dirs, names in os.walk(spool_dir):
            for n in names:
                try:
                    total += (Path(root) / n).lstat().st_size
                except OSError:
                    pass
    except OSError:
        pass
    uploaded = UploadState(spool_dir).uploaded_ids()
    return {
        "dir": str(spool_dir.resolve()),
        "exists": spool_dir.is_dir(),
        "batch_files": len(files),
        "bytes": total,
        "not_uploaded": sum(1 for bf in files if bf.batch_id not in uploaded),
    }


def probe(method: str, url: str, timeout: float, **kw: Any) -> dict[str, Any]:
    """One request: ``reachable``, ``status``, ``ok`` (2xx) and ``latency_ms``, or the ``error``."""
    import httpx

    t0 = time.monotonic()
    try:
        with httpx.Client(timeout=timeout) as client:
            resp = client.request(method, url, **kw)
    except (httpx.HTTPError, OSError) as exc:
        msg = str(exc)
        return {"url": url, "reachable": False, "status": None,
                "error": f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__}
    ms = round((time.monotonic() - t0) * 1000, 1)
    return {"url": url, "reachable": True, "status": resp.status_code, "ok": 200 <= resp.status_code < 300,
            "latency_ms": ms}


def probe_collector(settings: Any, timeout: float) -> dict[str, Any]:
    """An empty OTLP export to ``settings.endpoint`` in its protocol."""
    if settings.protocol == "http/json":
        body, ctype = b"{}", "application/json"
    else:
        body, ctype = b"", "application/x-protobuf"  # an empty message is a valid, empty export
    headers = {"Content-Type": ctype, **dict(settings.headers or {})}
    return probe("POST", settings.endpoint, timeout, content=body, headers=headers)


def resolve_status(spool: str | None = None, *, offline: bool = False, timeout: float = 3.0) -> dict[str, Any]:
    """The whole report as a JSON-able dict (what ``cirron status --json`` prints). Raises
    :class:`cirron.CirronConfigError` when the configuration cannot be resolved; an OTLP
    setting that does not parse is reported in ``otlp.error`` instead."""
    from cirron._config import Config, config_file_path
    from cirron._errors import CirronConfigError
    from cirron._project import find_project_file, load_project
    from cirron._version import __version__
    from cirron.export.otlp_http import OtlpSettings

    project_file = None if os.environ.get("CIRRON_NO_PROJECT_FILE") else find_project_file()
    project = load_project(project_file) if project_file else None
    cfg = Config.resolve({"spool_dir": spool}, project, project_file)
    otlp_error = None
    try:
        otlp = OtlpSettings.from_env()
    except CirronConfigError as exc:
        otlp, otlp_error = OtlpSettings(headers={}, sources={}), str(exc)
    cfg_path = config_file_path()
    doc: dict[str, Any] = {
        "version": __version__,
        "config_file": {"path": str(cfg_path), "exists": cfg_path.is_file()},
        "project_file": str(project_file) if project_file else None,
        "config": cfg.masked(),
        "otlp": otlp.masked(),
        "spool": spool_info(Path(cfg.spool_dir)),
    }
    if otlp_error:
        doc["otlp"]["error"] = otlp_error
    if not offline:
        doc["platform"] = probe("GET", cfg.api_endpoint, timeout)
        doc["collector"] = probe_collector(otlp, timeout)
    return doc
