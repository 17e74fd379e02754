"""`cirron status`: resolved configuration (with where each value came from), spool size, reachability.

Secrets are masked (``Config.masked()``, OTLP header values hidden). Reachability is one short
request each: ``GET {api_endpoint}`` for the platform (any HTTP answer means reachable) and an
empty OTLP export (``POST`` of an ``ExportTraceServiceRequest`` with no spans) for the collector,
which a real OTLP receiver answers with 2xx. ``--offline`` skips both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from cirron_cli import render
from cirron_cli.render import fail, format_bytes


def _spool_info(spool_dir: Path) -> dict[str, Any]:
    from cirron.sinks.upload import UploadState
    from cirron.spool.reader import list_batch_files

    files = list_batch_files(spool_dir, lambda _m: None)
    total = 0
    try:
        for root, _dirs, names in __import__("os").walk(spool_dir):
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


def _probe(method: str, url: str, timeout: float, **kw: Any) -> dict[str, Any]:
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


def _probe_collector(settings: Any, timeout: float) -> dict[str, Any]:
    if settings.protocol == "http/json":
        body, ctype = b"{}", "application/json"
    else:
        body, ctype = b"", "application/x-protobuf"  # an empty message is a valid, empty export
    headers = {"Content-Type": ctype, **dict(settings.headers or {})}
    return _probe("POST", settings.endpoint, timeout, content=body, headers=headers)


def status(
    spool: Optional[str] = typer.Option(None, "--spool", help="Spool directory (default: resolved spool_dir)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    offline: bool = typer.Option(False, "--offline", help="Skip the reachability checks."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds per reachability check.", min=0.1),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Resolved configuration, spool size, and platform / OTLP collector reachability."""
    import os

    from cirron._config import Config, config_file_path
    from cirron._errors import CirronConfigError
    from cirron._version import __version__
    from cirron.export.otlp_http import OtlpSettings

    project_file = project = None
    try:
        from cirron._project import find_project_file, load_project

        project_file = None if os.environ.get("CIRRON_NO_PROJECT_FILE") else find_project_file()
        project = load_project(project_file) if project_file else None
        cfg = Config.resolve({"spool_dir": spool}, project, project_file)
    except CirronConfigError as exc:
        fail(str(exc))
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
        "spool": _spool_info(Path(cfg.spool_dir)),
    }
    if otlp_error:
        doc["otlp"]["error"] = otlp_error
    if not offline:
        doc["platform"] = _probe("GET", cfg.api_endpoint, timeout)
        doc["collector"] = _probe_collector(otlp, timeout)
    if json_out:
        import orjson

        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    color = render.use_color(no_color)
    home = str(Path.home())

    def short(p: str) -> str:
        return "~" + p[len(home):] if home and p.startswith(home + os.sep) else p

    def show(v: Any) -> str:
        if v is None:
            return "(not set)"
        if isinstance(v, list):
            return ", ".join(map(str, v))
        if isinstance(v, dict):
            return ", ".join(f"{k}={x}" for k, x in v.items()) or "(none)"
        return str(v)

    typer.echo(f"cirron {__version__}")
    where = "" if doc["config_file"]["exists"] else " (not found)"
    typer.echo(f"Config file: {short(str(cfg_path))}{where}")
    if project_file:
        typer.echo(f"Project file: {short(str(project_file))}")
    rows = [(k, show(v["value"]), short(v["source"])) for k, v in doc["config"].items()]
    rows += [(f"otlp.{k}", show(v["value"]), v["source"]) for k, v in doc["otlp"].items() if k != "error"]
    typer.echo(render.box_table(["SETTING", "VALUE", "SOURCE"], rows))
    if otlp_error:
        typer.echo(render.style(f"OTLP settings: {otlp_error}", "yellow", color=color))
    sp = doc["spool"]
    if sp["exists"]:
        typer.echo(f"Spool: {sp['dir']}  {render.plural(sp['batch_files'], 'batch file')}, "
                   f"{format_bytes(sp['bytes'])}, {sp['not_uploaded']} not uploaded")
    else:
        typer.echo(f"Spool: {sp['dir']}  (does not exist yet)")
    for label, key in (("Platform", "platform"), ("Collector", "collector")):
        if key not in doc:
            continue
        r = doc[key]
        if r["reachable"]:
            good = r["ok"] or key == "platform"
            state = render.style("reachable", "green" if good else "yellow", color=color)
            typer.echo(f"{label}: {r['url']}  {state} (HTTP {r['status']}, {r['latency_ms']} ms)")
        else:
            state = render.style("unreachable", "red", color=color)
            typer.echo(f"{label}: {r['url']}  {state} ({r['error']})")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
