"""Secret values never leave the process in text cirron writes.

Every value read through ``ci.secret()`` is remembered here (:func:`remember`); :func:`redact`
replaces each one with ``***`` in a text. cirron calls it wherever it writes text that could carry
one: a span's ``error`` attribute (an exception message that quotes a token), ``ci.health()``,
its log lines (:class:`RedactingFilter` on the ``cirron`` loggers), its one-line stderr notices and
the CLI's errors and warnings. A receiver's response body is cut to a short prefix and redacted
(:func:`body_snippet`) before it is shown anywhere.

Values shorter than :data:`MIN_SECRET_LENGTH` characters are not redacted (a one-letter "secret"
would turn every text into stars); no real credential is that short.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    import logging

__all__ = [
    "BODY_SNIPPET_CHARS",
    "MASK",
    "MIN_SECRET_LENGTH",
    "RedactingFilter",
    "body_snippet",
    "redact",
    "redact_tree",
    "remember",
]

MASK = "***"
MIN_SECRET_LENGTH = 4
#: How much of a response body an error line shows.
BODY_SNIPPET_CHARS = 200

_lock = threading.Lock()
_values: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def remember(value: str) -> None:
    """Redact ``value`` (and each of its lines) from now on in this process."""
    global _values, _pattern
    candidates = {value, value.strip(), *(line.strip() for line in value.splitlines())}
    new = {v for v in candidates if len(v) >= MIN_SECRET_LENGTH} - _values
    if not new:
        return
    with _lock:
        _values = _values | new
        # longest first, so a secret that contains another is masked whole
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def redact(text: Any) -> Any:
    """``text`` with every remembered secret value replaced by ``***`` (non-strings as they are)."""
    pattern = _pattern
    if pattern is None or type(text) is not str:
        return text
    return pattern.sub(MASK, text)


T = TypeVar("T")


def redact_tree(value: T) -> T:
    """A copy of a JSON-like value (``ci.health()``) with every string redacted."""
    if _pattern is None:
        return value
    out: Any = value
    if isinstance(value, str):
        out = redact(value)
    elif isinstance(value, dict):
        out = {k: redact_tree(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        out = type(value)(redact_tree(v) for v in value)
    return cast(T, out)


def body_snippet(text: str, limit: int = BODY_SNIPPET_CHARS) -> str:
    """A response body as an error line may show it: redacted, on one line, cut to ``limit``."""
    one_line = " ".join(redact(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


class RedactingFilter:
    """Redacts the formatted message of every record that passes (installed on cirron's loggers).
    A plain object with ``filter()``, which logging accepts: ``import cirron`` leaves logging out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
                return True
            record.msg, record.args = redact(message), None
        return True


_FILTER = RedactingFilter()


def install_log_filter(logger: logging.Logger) -> logging.Logger:
    """Add the redacting filter to ``logger`` (once) and return it: ``getLogger`` for cirron's modules."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
