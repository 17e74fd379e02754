"""Errors raised by cirron.

::

    CirronError
    ├── CirronConfigError (ValueError)      bad argument, bad env var, malformed cirron.yaml
    ├── CirronDependencyError (ImportError) an optional package the feature needs is missing
    ├── CirronSecretNotFound (KeyError)     ci.secret() found neither env var nor file mount
    ├── CirronSpoolError (OSError)          the spool or a snapshot blob cannot be read/written
    ├── CirronMarkTypeError (TypeError)     ci.mark() got a value that is not a scalar
    ├── CirronWrapError (TypeError)         ci.wrap() got an object it cannot instrument
    └── CirronStateError (RuntimeError)     a call that the session's state does not allow
"""

from __future__ import annotations

from typing import Any


class CirronError(Exception):
    """Base class of every error cirron raises."""


class CirronConfigError(CirronError, ValueError):
    """A configuration value or file is invalid."""


class CirronDependencyError(CirronError, ImportError):
    """An optional dependency is missing; the message carries the pip command that installs it."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        from cirron._version import DISTRIBUTION

        hint = f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs {package}, which is not installed. Install it with: {hint}")
        self.package = package
        self.feature = feature


class CirronSecretNotFound(CirronError, KeyError):
    """No value for a secret in the environment or under /etc/cirron/secrets."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CirronSpoolError(CirronError, OSError):
    """The spool or a snapshot blob could not be read or written."""


class CirronMarkTypeError(CirronError, TypeError):
    """ci.mark() was given a value that is not a scalar."""


class CirronWrapError(CirronError, TypeError):
    """ci.wrap() was given an object it does not know how to instrument."""


class CirronStateError(CirronError, RuntimeError):
    """The call is not allowed in the session's current state."""


def require(module: str, feature: str, extra: str | None = None) -> Any:
    """Import an optional dependency or raise :class:`CirronDependencyError` with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CirronDependencyError(module.split(".")[0], feature, extra) from exc
