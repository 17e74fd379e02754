"""`cirron ui`: start the local web viewer (the work is in :mod:`cirron.ui`)."""

from __future__ import annotations

import importlib.util

import typer

from cirron.spool import paths
from cirron_cli.render import fail, warn


def ui(
    spool: list[str] | None = typer.Option(
        None, "--spool", help="Spool directory to read (repeat for several; globs accepted).",
        show_default=str(paths.DEFAULT_SPOOL_DIR)),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8050, "--port", help="Port to listen on (0: any free port)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the viewer in the default browser."),
) -> None:
    """Browse the spool in a local web viewer: timelines, step breakdown, mark charts, snapshots."""
    from cirron.ui import INSTALL_HINT, UI_PACKAGES

    missing = [p for p in UI_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        fail(f"cirron ui needs {', '.join(missing)}: {INSTALL_HINT}")
    if not 0 <= port <= 65535:
        fail(f"Invalid --port: {port} (expected 0-65535)", 2)
    from cirron.ui.server import ListenError, serve

    notes: list[str] = []
    dirs = paths.resolve_spools(spool or [str(paths.DEFAULT_SPOOL_DIR)], notes.append)
    if not dirs:
        fail(f"No spool directory matches {' '.join(spool or [])}")
    for note in notes:
        warn(note)
    for d in dirs:
        if d.exists() and not d.is_dir():
            fail(f"Spool path {d} is not a directory")
        if not d.exists() and d == paths.DEFAULT_SPOOL_DIR:  # resolve_spools names any other missing one
            warn(f"no spool at {d} yet; sessions will appear once a run writes there")
    try:
        serve(dirs, host, port, open_browser, echo=typer.echo, warn=warn)
    except ListenError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
