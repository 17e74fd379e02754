"""Root ``cirron`` command: ``--version`` and the command groups."""

from __future__ import annotations

import sys

import typer

from cirron._version import __version__
from cirron_cli import _help

_help.install()

app = typer.Typer(
    name="cirron",
    help="Read, export and manage the traces cirron records on your disk.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cirron {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """cirron: local-first profiling and tracing for ML code."""


def _register_commands() -> None:
    # Each command group lives in its own module; this is the one place that wires them up.
    from cirron_cli import ranks, snapshots, spool_cmd, traces

    snapshots.register(traces.traces_app)
    ranks.register(traces.traces_app)
    app.add_typer(traces.traces_app, name="traces")
    app.add_typer(spool_cmd.spool_app, name="spool")
    from cirron_cli import auth, completion, spool_flush, status, ui

    spool_flush.register(spool_cmd.spool_app)
    status.register(app)
    auth.register(app)
    completion.register(app)
    ui.register(app)


_register_commands()


#: glibc's ``mallopt`` parameter for the size above which a block is mapped on its own.
_M_MMAP_THRESHOLD = -3


def _large_blocks_from_the_system() -> None:
    """Have glibc map every block of 256 KiB or more on its own, so each goes back to the system
    when freed. By default the threshold rises to the largest block freed so far, after which the
    big numpy columns of a session are carved from the heap, whose freed middle is kept: a read of
    one big session then peaks 10-15 % higher. Other C libraries: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 256 << 10)
    except (OSError, AttributeError):  # musl and others: no glibc
        pass


def main() -> None:
    """Console-script entry point: every error is one ``Error: …`` line, never a traceback."""
    # Arrow's own allocator keeps freed memory for reuse; a command that reads one session after
    # another peaks lower when freed buffers go back to the system (an explicit setting wins).
    import os

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    _large_blocks_from_the_system()
    try:
        rv = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's public base of every usage and click error
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()
        if ctx is not None and exc.exit_code == 2 and (not message or message.startswith("Usage:")):
            # A group called without a subcommand: its help (rich has printed it already).
            if message:
                typer.echo(message)
            sys.exit(0)
        typer.echo(f"Error: {message}", err=True)
        if ctx is not None and exc.exit_code == 2:  # a usage error
            typer.echo(f"Try '{ctx.command_path} --help' for help.", err=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
