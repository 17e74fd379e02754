"""`cirron status`: renders what :func:`cirron.status.resolve_status` computes (``--offline``
skips the reachability checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from cirron_cli import render
from cirron_cli.render import fail, format_bytes


def status(
    spool: Optional[str] = typer.Option(None, "--spool", help="Spool directory (default: resolved spool_dir)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    offline: bool = typer.Option(False, "--offline", help="Skip the reachability checks."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds per reachability check.", min=0.1),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Resolved configuration, spool size, and platform / OTLP collector reachability."""
    import os

    from cirron._errors import CirronConfigError
    from cirron.status import resolve_status

    try:
        doc = resolve_status(spool, offline=offline, timeout=timeout)
    except CirronConfigError as exc:
        fail(str(exc))
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

    typer.echo(f"cirron {doc['version']}")
    where = "" if doc["config_file"]["exists"] else " (not found)"
    typer.echo(f"Config file: {short(doc['config_file']['path'])}{where}")
    if doc["project_file"]:
        typer.echo(f"Project file: {short(doc['project_file'])}")
    rows = [(k, show(v["value"]), short(v["source"])) for k, v in doc["config"].items()]
    rows += [(f"otlp.{k}", show(v["value"]), v["source"]) for k, v in doc["otlp"].items() if k != "error"]
    typer.echo(render.box_table(["SETTING", "VALUE", "SOURCE"], rows))
    if doc["otlp"].get("error"):
        typer.echo(render.style(f"OTLP settings: {doc['otlp']['error']}", "yellow", color=color))
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
