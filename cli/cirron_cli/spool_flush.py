"""`cirron spool flush`: renders what :mod:`cirron.spool.upload` plans and does (resumable and
idempotent by batch id)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from cirron_cli import render
from cirron_cli.render import fail, format_bytes, warn
from cirron_cli.spool_cmd import SpoolOpt, _check_dir

EXIT_INTERRUPTED = 130


def _resolve_platform(endpoint: Optional[str], workspace: Optional[str]) -> tuple[str, str | None, str | None]:
    from cirron._config import Config
    from cirron._errors import CirronConfigError

    try:
        cfg = Config.resolve({"api_endpoint": endpoint, "workspace_id": workspace})
    except CirronConfigError as exc:
        fail(str(exc))
    return cfg.api_endpoint, cfg.api_key, cfg.workspace_id


def register(app: typer.Typer) -> None:
    app.command("flush")(flush)


def flush(
    spool: str = SpoolOpt,
    endpoint: Optional[str] = typer.Option(
        None, "--endpoint", help="Platform API endpoint (default: resolved config)."
    ),
    workspace: Optional[str] = typer.Option(None, "--workspace", help="Workspace id (default: resolved config)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded, send nothing."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per request.", min=0.1),
) -> None:
    """Upload batch files not yet on the platform (resumable, idempotent by batch id)."""
    import re

    import orjson

    from cirron.sinks.upload import batches_url
    from cirron.spool.upload import plan_upload, upload_pending

    p = _check_dir(spool)
    api_endpoint, api_key, workspace_id = _resolve_platform(endpoint, workspace)
    if not re.match(r"^https?://[^/\s]+", api_endpoint):
        fail(f"Invalid platform endpoint: {api_endpoint} (expected an http:// or https:// URL)")
    plan = plan_upload(p, warn)
    files, pending = plan.files, plan.pending
    url = batches_url(api_endpoint)
    summary = {"endpoint": url, "spool": str(p.resolve()), "batch_files": len(files),
               "already_uploaded": plan.already_uploaded, "pending": len(pending), "uploaded": 0,
               "skipped": 0, "failed": 0, "bytes_uploaded": 0, "dry_run": dry_run}

    def report() -> None:
        if json_out:
            typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())

    if not pending:
        if json_out:
            report()
        elif not files:
            typer.echo(f"No batch files in {summary['spool']}")
        else:
            typer.echo(f"Nothing to upload: {render.plural(len(files), 'batch file')} in the spool, "
                       "all already on the platform.")
        return
    if dry_run:
        if json_out:
            summary["files"] = [bf.name for bf in pending]
            report()
            return
        size = sum(bf.size for bf in pending)
        typer.echo(f"Would upload {render.plural(len(pending), 'batch file')} ({format_bytes(size)}) to {url}")
        for bf in pending:
            typer.echo(f"  {bf.name}")
        return
    if not api_key:
        fail("No API key configured. Run `cirron auth login --api-key <key>` or set CIRRON_API_KEY.")

    progress: Any = None
    if sys.stderr.isatty() and not json_out:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("Uploading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        progress.start()
        task = progress.add_task("upload", total=len(pending))
    try:
        result = upload_pending(plan, url, api_key, workspace_id, timeout, warn,
                                on_uploaded=(lambda _bf: progress.advance(task)) if progress is not None else None)
    finally:
        if progress is not None:
            progress.stop()
    summary.update(uploaded=result.uploaded, skipped=result.skipped, failed=result.failed,
                   bytes_uploaded=result.bytes_uploaded)
    last_error = result.error or ""
    not_sent = len(pending) - result.uploaded - result.skipped
    refused = result.status in (401, 403)
    if json_out:
        summary["error"] = result.error
        report()
    elif result.uploaded or not not_sent:
        typer.echo(f"Uploaded {render.plural(result.uploaded, 'batch file')} "
                   f"({format_bytes(result.bytes_uploaded)}) to {url}"
                   + (f"; {plan.already_uploaded} already there" if plan.already_uploaded else ""))
    if result.interrupted:
        typer.echo(f"Interrupted: {render.plural(not_sent, 'batch file')} left; run `cirron spool flush` again "
                   "to resume.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not_sent and refused:  # running again would be refused the same way
        fail(f"{render.plural(not_sent, 'batch file')} not uploaded: the platform refused the API key "
             f"({last_error}). Check it with `cirron status`, set a valid one with `cirron auth login "
             "--api-key …` (or CIRRON_API_KEY), then run `cirron spool flush` again.")
    if not_sent:
        fail(f"{render.plural(not_sent, 'batch file')} not uploaded ({last_error}). "
             "Run `cirron spool flush` again to resume.")
