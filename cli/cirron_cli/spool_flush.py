"""`cirron spool flush`: upload the batch files the platform does not have yet.

Resumable and idempotent: each accepted batch gets a marker under ``<spool>/.uploaded/`` (shared
with the live ``platform`` sink) and every request carries ``Idempotency-Key: <batch_id>``, so an
interrupted or repeated flush sends each batch at most once more, never loses one.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from cirron._safeopen import open_regular
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

    from cirron.export.otlp_http import OTLPExportError
    from cirron.sinks.upload import UploadState, batches_url, upload_file_sync
    from cirron.spool.reader import list_batch_files

    p = _check_dir(spool)
    api_endpoint, api_key, workspace_id = _resolve_platform(endpoint, workspace)
    if not re.match(r"^https?://[^/\s]+", api_endpoint):
        fail(f"Invalid platform endpoint: {api_endpoint} (expected an http:// or https:// URL)")
    files = list_batch_files(p, warn) if p.is_dir() else []
    state = UploadState(p)
    done = state.uploaded_ids()
    pending = [bf for bf in files if bf.batch_id not in done]
    url = batches_url(api_endpoint)
    summary = {"endpoint": url, "spool": str(p.resolve()), "batch_files": len(files),
               "already_uploaded": len(files) - len(pending), "pending": len(pending), "uploaded": 0,
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

    import httpx

    show_bar = sys.stderr.isatty() and not json_out
    last_error = ""
    last_status: int | None = None
    interrupted = False
    with httpx.Client(timeout=timeout) as client:
        progress = None
        task = None
        if show_bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(TextColumn("Uploading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            progress.start()
            task = progress.add_task("upload", total=len(pending))
        try:
            for bf in pending:
                try:
                    with open_regular(bf.path, follow_symlinks=False) as fh:
                        body = fh.read()
                except FileNotFoundError:  # cleared or evicted meanwhile
                    summary["skipped"] += 1
                    continue
                except OSError as exc:
                    warn(f"Skipping {bf.name}: {exc.strerror or exc}")
                    summary["skipped"] += 1
                    continue
                try:
                    orjson.loads(body)
                except orjson.JSONDecodeError:
                    warn(f"Skipping {bf.name}: not a complete JSON batch file")
                    summary["skipped"] += 1
                    continue
                try:
                    upload_file_sync(client, url, api_key, workspace_id, bf.batch_id, body, timeout=timeout)
                except OTLPExportError as exc:
                    summary["failed"] += 1
                    last_error = str(exc)
                    last_status = exc.status
                    if exc.status in (401, 403):
                        break  # every other file would be refused the same way
                    continue
                state.mark_uploaded(bf.batch_id)
                summary["uploaded"] += 1
                summary["bytes_uploaded"] += len(body)
                if progress is not None:
                    progress.advance(task)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if progress is not None:
                progress.stop()
    not_sent = len(pending) - summary["uploaded"] - summary["skipped"]
    refused = last_status in (401, 403)
    if json_out:
        summary["error"] = last_error or None
        report()
    elif summary["uploaded"] or not not_sent:
        typer.echo(f"Uploaded {render.plural(summary['uploaded'], 'batch file')} "
                   f"({format_bytes(summary['bytes_uploaded'])}) to {url}"
                   + (f"; {summary['already_uploaded']} already there" if summary["already_uploaded"] else ""))
    if interrupted:
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

