"""Root ``cirron`` command: ``--version`` and the command groups."""

from __future__ import annotations

import sys

import typer

from cirron._version import __version__

app = typer.Typer(
    name="cirron",
    help="Read, export and manage the traces cirron records on your disk.",
    no_args_is_help=True,
    add_completion=False,
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
    from cirron_cli import snapshots, spool_cmd, traces

    snapshots.register(traces.traces_app)
    app.add_typer(traces.traces_app, name="traces")
    app.add_typer(spool_cmd.spool_app, name="spool")
    from cirron_cli import auth, spool_flush, status

    spool_flush.register(spool_cmd.spool_app)
    status.register(app)
    auth.register(app)


_register_commands()


def main() -> None:
    """Console-script entry point: every error is one ``Error: …`` line, never a traceback."""
    try:  # typer >= 0.20 vendors its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    # Vendored click (typer >= 0.20) has no Abort: there, ^C arrives as KeyboardInterrupt.
    abort = getattr(click_errors, "Abort", KeyboardInterrupt)
    try:
        rv = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click_errors.UsageError as exc:
        typer.echo(f"Error: {exc.format_message()}", err=True)
        hint = f"Try '{exc.ctx.command_path} --help' for help." if exc.ctx else ""
        if hint:
            typer.echo(hint, err=True)
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        typer.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
