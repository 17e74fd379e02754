"""Root ``cirron`` command: ``--version`` and the command groups."""

from __future__ import annotations

import signal
import sys
from typing import Any, NoReturn

import typer

from cirron._memory import map_big_blocks
from cirron._version import __version__
from cirron_cli import _coerce, _help

_help.install()
_coerce.install()

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


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a job scheduler) end the command the way Ctrl-C does:
    the stack unwinds, so a half-written export's temporary file and the viewer's temporary files
    are removed, where the default action would leave them behind. A SIGTERM the parent chose to
    ignore stays ignored."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point: every error is one ``Error: …`` line, never a traceback."""
    exit_on_sigterm()
    # Arrow's own allocator (mimalloc) keeps freed memory for reuse: a command that reads one
    # session after another, or a long-running `cirron ui`, would stay at the peak of its biggest
    # read (306 MB against 253 MB for a 250,000-span session in the viewer, at the same speed).
    # Freed buffers go back to the system instead; an explicit setting wins.
    import os

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # Big blocks go back to the system when freed: a read of one big session peaks 10-15% lower.
    map_big_blocks()
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


def run() -> NoReturn:
    """The ``cirron`` program: :func:`main`, then :func:`leave` with its exit status."""
    try:
        main()
    except SystemExit as exc:
        leave(exc.code)
    leave(0)


def leave(code: str | int | None) -> NoReturn:
    """End the process with ``code`` as a normal exit would, without the interpreter's teardown
    (freeing every module and object one by one: ~40 ms of CPU after an export has loaded pyarrow)
    when nothing else needs it: no other thread is running, standard output and error flush, and
    the ``atexit`` handlers have run. Otherwise (or for a message as the code) a normal exit."""
    import atexit
    import os
    import threading

    if code is None:
        code = 0
    if type(code) is not int or threading.active_count() > 1 or not _flushed():
        sys.exit(code)
    atexit._run_exitfuncs()
    if threading.active_count() > 1 or not _flushed():  # a handler started a thread or wrote
        sys.exit(code)
    os._exit(code & 0xFF)


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the normal exit reports it
        return False
    return True


if __name__ == "__main__":
    run()
