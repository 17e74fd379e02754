"""`cirron auth login | logout`: the API key (and endpoint, workspace) in ``~/.cirron/config.toml``.

The file is edited, not regenerated: only the top-level ``api_key`` / ``api_endpoint`` /
``workspace_id`` lines change, so other keys, tables and comments stay as they were. It is
written atomically (temporary file in the same directory, fsync, rename) with mode 0600, and the
result is parsed back before it replaces the old file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from cirron_cli.render import fail

auth_app = typer.Typer(help="Store or remove the platform API key (~/.cirron/config.toml).", no_args_is_help=True)

_TABLE_RE = re.compile(r"^\s*\[")


def _key_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    from cirron._config import read_config_file
    from cirron._errors import CirronConfigError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", {}
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"Cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        return text, read_config_file(path)
    except CirronConfigError as exc:
        fail(f"{exc} (fix or remove it first)")


def edit_toml(text: str, set_keys: dict[str, str], remove_keys: tuple[str, ...] = ()) -> str:
    """``text`` with top-level string keys set or removed; everything else kept verbatim."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    first_table = next((i for i, ln in enumerate(lines) if _TABLE_RE.match(ln)), len(lines))
    top, rest = lines[:first_table], lines[first_table:]
    pending = dict(set_keys)
    out = []
    for ln in top:
        key = next((k for k in (*pending, *remove_keys) if _key_re(k).match(ln)), None)
        if key is None:
            out.append(ln)
        elif key in pending:
            out.append(f"{key} = {_toml_string(pending.pop(key))}\n")
        # a removed key's line is dropped
    new = [f"{k} = {_toml_string(v)}\n" for k, v in pending.items()]
    if new:
        # New keys go after the existing top-level lines, before the first table.
        while out and not out[-1].strip():
            rest.insert(0, out.pop())
        out += new
        if rest and rest[0].strip():
            out.append("\n")
    return "".join(out + rest)


def write_config_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a 0600 temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _check_roundtrip(new_text: str, before: dict[str, Any], set_keys: dict[str, str], removed: tuple[str, ...]) -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        after = tomllib.loads(new_text)
    except Exception as exc:  # noqa: BLE001
        fail(f"Refusing to write the config file: the edit would not be valid TOML ({exc})")
    expected = {k: v for k, v in before.items() if k not in removed}
    expected.update(set_keys)
    if after != expected:
        fail("Refusing to write the config file: a multi-line value is in the way; edit it by hand")


def _save(path: Path, set_keys: dict[str, str], remove: tuple[str, ...] = ()) -> None:
    text, before = _load(path)
    new_text = edit_toml(text, set_keys, remove)
    _check_roundtrip(new_text, before, set_keys, remove)
    try:
        write_config_atomic(path, new_text)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}")


@auth_app.command("login")
def login(
    api_key: Optional[str] = typer.Option(None, "--api-key", help="The API key; '-' reads it from stdin."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Platform API endpoint to store too."),
    workspace: Optional[str] = typer.Option(None, "--workspace", help="Workspace id to store too."),
) -> None:
    """Store the API key (mode 0600), keeping every other setting of the file."""
    from cirron._config import config_file_path

    if api_key == "-":
        api_key = sys.stdin.readline().strip()
    elif api_key is None:
        if not sys.stdin.isatty():
            fail("Missing --api-key (or pass --api-key - to read it from stdin)")
        api_key = typer.prompt("API key", hide_input=True).strip()
    if not api_key or any(c.isspace() for c in api_key) or not api_key.isprintable():
        fail("Invalid --api-key: expected a non-empty key without spaces")
    values = {"api_key": api_key}
    if endpoint is not None:
        if not re.match(r"^https?://[^/\s]+\S*$", endpoint):
            fail(f"Invalid --endpoint: {endpoint} (expected an http:// or https:// URL)")
        values["api_endpoint"] = endpoint.rstrip("/")
    if workspace is not None:
        if not workspace.strip() or not workspace.isprintable():
            fail(f"Invalid --workspace: {workspace!r}")
        values["workspace_id"] = workspace.strip()
    path = config_file_path()
    _save(path, values)
    masked = api_key[:4] + "…" + api_key[-4:] if len(api_key) > 12 else "****"
    typer.echo(f"Saved API key {masked} to {path}")
    if os.environ.get("CIRRON_API_KEY"):
        typer.echo("Note: CIRRON_API_KEY is set in this environment and takes precedence over the file.", err=True)


@auth_app.command("logout")
def logout() -> None:
    """Remove the API key from the config file (other settings stay)."""
    from cirron._config import config_file_path

    path = config_file_path()
    _text, before = _load(path)
    if "api_key" not in before:
        typer.echo(f"Not logged in: no api_key in {path}")
        return
    _save(path, {}, ("api_key",))
    typer.echo(f"Removed the API key from {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(auth_app, name="auth")
