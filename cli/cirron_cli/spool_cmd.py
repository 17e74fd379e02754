"""`cirron spool list | clear`: the file-level view of the spool's batch files.

``flush`` (upload to the platform) is registered on :data:`spool_app` by its own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cirron.spool import paths
from cirron.spool.catalog import open_catalog
from cirron.spool.index import list_batches
from cirron.spool.reader import list_batch_files
from cirron_cli import render
from cirron_cli.render import fail, format_bytes, warn

spool_app = typer.Typer(help="File-level view of the spool's batch files.", no_args_is_help=True)

SpoolOpt = typer.Option(str(paths.DEFAULT_SPOOL_DIR), "--spool", help="Spool directory.", show_default=True)


def _check_dir(spool: str) -> Path:
    p = Path(spool)
    if p.exists() and not p.is_dir():
        fail(f"Spool path {spool} is not a directory")
    return p


@spool_app.command("list")
def list_files(
    spool: str = SpoolOpt,
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON."),
    no_color: bool = typer.Option(False, "--no-color", help="Disable ANSI colour."),
) -> None:
    """Table of batch files, oldest first, with their record counts (from the spool's index for
    the files it knows as they are now)."""
    p = _check_dir(spool)
    listed, _warm = list_batches(p, warn)
    rows = [{
        "file": b.file.name,
        "bytes": b.file.size,
        "created_ns": str(b.file.created_ns),
        "batch_id": b.file.batch_id,
        "session_id": b.session_id,
        "readable": b.readable,
        "spans": b.spans,
        "marks": b.marks,
        "snapshots": b.snapshots,
    } for b in listed]
    abs_dir = str(p.resolve())
    if json_out:
        import orjson

        typer.echo(orjson.dumps({"dir": abs_dir, "files": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        typer.echo(f"No batch files in {abs_dir}")
        return
    total = sum(r["bytes"] for r in rows)
    typer.echo(f"Spool: {abs_dir}  ({render.plural(len(rows), 'batch file')}, {format_bytes(total)})")

    def cnt(v: int | None) -> str:
        return "?" if v is None else str(v)

    table = [(r["file"], format_bytes(r["bytes"]), render.format_iso_ns(int(r["created_ns"])), cnt(r["spans"]),
              cnt(r["marks"]), cnt(r["snapshots"])) for r in rows]
    typer.echo(render.aligned_table(["FILE", "SIZE", "CREATED", "SPANS", "MARKS", "SNAPSHOTS"], table,
                                    right=(1, 3, 4, 5)))


@spool_app.command("clear")
def clear_files(
    yes: bool = typer.Option(False, "--yes", "-y", help="Skip the confirmation prompt."),
    spool: str = SpoolOpt,
) -> None:
    """Delete every batch file (snapshot blobs stay; files of live or unfinished sessions are kept)."""
    from cirron.spool.retention import plan_clear
    from cirron_cli.traces import EXIT_INTERRUPTED, _confirm, _Interrupt

    p = _check_dir(spool)
    try:
        cat = open_catalog([p], warn)
        plan = plan_clear(cat.sessions)
        protected = {s.id for s in plan.live} | {s.id for s in plan.unfinished}
        keep = {path for path, owners in cat.file_sessions.items() if owners & protected}
        doomed = [bf for bf in list_batch_files(p, lambda _m: None) if bf.path not in keep]
        if keep:
            whose = [render.plural(len(group), kind) for group, kind in
                     ((plan.live, "live session"), (plan.unfinished, "unfinished session")) if group]
            typer.echo(f"Keeping {render.plural(len(keep), 'batch file')} of {' and '.join(whose)}", err=True)
        if not doomed:
            typer.echo("Nothing to delete.")
            return
        size = sum(bf.size for bf in doomed)
        if not yes and not _confirm(f"Delete {render.plural(len(doomed), 'batch file')} ({format_bytes(size)})?"):
            typer.echo("Aborted.", err=True)
            raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("\nInterrupted: nothing was deleted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    deleted = 0
    with _Interrupt() as intr:
        for bf in doomed:
            if intr.hit:
                break
            try:
                bf.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                fail(f"Could not delete {bf.path}: {exc.strerror or exc}")
            deleted += 1
    if intr.hit:
        typer.echo(f"Interrupted: deleted {render.plural(deleted, 'batch file')} before stopping.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo(f"Deleted {render.plural(deleted, 'batch file')} ({format_bytes(size)}).")


_ = Optional  # typing re-export kept for commands added later
