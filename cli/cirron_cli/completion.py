"""``cirron completion bash|zsh|fish``: print the shell's completion script.

Completion itself is typer's: the script calls ``cirron`` back with ``_CIRRON_COMPLETE`` set,
and typer answers with the commands, options and choices (``--format``, ``--protocol``, ...)
that fit. ``cirron --install-completion`` installs the script for the shell it runs in; this
command prints it for any of the three, e.g. to ship it in an image.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os

import typer

COMPLETE_VAR = "_CIRRON_COMPLETE"


class Shell(str, enum.Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion_script(app: typer.Typer, shell: str) -> str:
    """The script typer generates for ``shell`` (through its documented environment protocol)."""
    command = typer.main.get_command(app)
    out = io.StringIO()
    old = os.environ.get(COMPLETE_VAR)
    os.environ[COMPLETE_VAR] = f"source_{shell}"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            command.main(args=[], prog_name="cirron", standalone_mode=False)
    finally:
        if old is None:
            del os.environ[COMPLETE_VAR]
        else:
            os.environ[COMPLETE_VAR] = old
    return out.getvalue()


def register(app: typer.Typer) -> None:
    @app.command("completion")
    def completion(shell: Shell = typer.Argument(..., help="The shell to complete in.")) -> None:
        """Print the completion script for bash, zsh or fish.

        bash: cirron completion bash > ~/.local/share/bash-completion/completions/cirron ·
        zsh: cirron completion zsh > "${fpath[1]}/_cirron" ·
        fish: cirron completion fish > ~/.config/fish/completions/cirron.fish
        """
        script = completion_script(app, shell.value)
        if not script.strip():
            from cirron_cli.render import fail

            fail(f"typer could not generate a {shell.value} completion script")
        typer.echo(script.rstrip("\n"))
