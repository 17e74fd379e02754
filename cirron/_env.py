"""``ci.env()`` and ``ci.secret()``: configuration and secrets from the process environment."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from cirron._errors import CirronConfigError, CirronSecretNotFound
from cirron._redact import remember
from cirron._safeopen import open_regular

SECRETS_MOUNT = Path("/etc/cirron/secrets")
ENV_SECRET_PREFIX = "CIRRON_SECRET_"

_dotenv_loaded = False
_dotenv_lock = threading.Lock()


def _load_dotenv_once() -> None:
    """Load ``./.env`` on first use when python-dotenv is installed; never override real env vars."""
    global _dotenv_loaded
    if _dotenv_loaded:
        return
    with _dotenv_lock:
        if _dotenv_loaded:
            return
        _dotenv_loaded = True
        try:
            from dotenv import load_dotenv
        except ImportError:
            return
        env_file = Path.cwd() / ".env"
        if env_file.is_file():
            load_dotenv(env_file, override=False)


def env(name: str, default: Any = None) -> Any:
    """The variable's value; values that start with ``{`` or ``[`` are parsed as JSON.

    Scalars stay strings (``"123"`` is not turned into an int). A value that looks like JSON
    but does not parse is returned as the raw string.
    """
    _load_dotenv_once()
    value = os.environ.get(name)
    if value is None:
        return default
    stripped = value.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


#: What a secret name may be: letters, digits, ``_``, ``-`` and ``.`` (not first), 1 to 128 long.
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def check_secret_name(name: object) -> str:
    """``name`` if it is a valid secret name (:data:`SECRET_NAME_RE`, no ``..``); else
    :class:`CirronConfigError`: a name never becomes a path outside the secrets mount."""
    if type(name) is not str or not SECRET_NAME_RE.fullmatch(name) or ".." in name:
        raise CirronConfigError(
            f"invalid secret name {str(name)[:80]!r}: use letters, digits, '_', '-' and '.' "
            "(not first, no '..'), at most 128 characters"
        )
    return name


def secret(name: str, mount: Path | None = None) -> str:
    """``CIRRON_SECRET_<NAME>`` (hyphens and dots → underscores, upper case), else the file
    ``/etc/cirron/secrets/<name>``. The value is redacted (``***``) from then on in everything
    cirron writes (:mod:`cirron._redact`)."""
    check_secret_name(name)
    var = ENV_SECRET_PREFIX + name.replace("-", "_").replace(".", "_").upper()
    value = os.environ.get(var)
    if value is not None:
        remember(value)
        return value
    path = (mount or SECRETS_MOUNT) / name
    try:
        with open_regular(path) as fh:
            value = fh.read().decode("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        pass
    else:
        remember(value)
        return value
    raise CirronSecretNotFound(
        f"secret {name!r} not found: set the environment variable {var} or mount it at {path} "
        "(on the platform, configure it in the workspace's Secrets settings)"
    )
