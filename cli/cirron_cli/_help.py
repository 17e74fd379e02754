"""``--help`` that reads like a man page: a flag shows no type, a value shows a name for it.

typer (0.20 and later) puts the Python type in angle brackets beside every option (``--json
<bool>``, ``--spool <str>``). Here, once for every command: a flag shows nothing, a choice
shows its values (``[gzip|none]``), any other option the metavar it declares or its own name in
capitals (``--spool SPOOL``, ``--last LAST``). Older typer versions never show the brackets and
are left alone.
"""

from __future__ import annotations

from typing import Any

_installed = False


def _display_type_rich(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:
        return str(self.metavar)
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None
    desc = getattr(self, "type_descriptor", None)
    choices = getattr(desc, "choices", None) if getattr(desc, "is_choice", False) else None
    if choices:
        values = [getattr(c, "value", c) for c in choices]
        label = "[" + "|".join(str(v) for v in values) + "]"
    else:
        label = (self.name or "value").upper()
    return label + "..." if self.nargs != 1 else label


def install() -> None:
    """Replace the bracketed type labels in every typer help screen of this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from typer import core
    except ImportError:  # pragma: no cover
        return
    for cls in (getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)):
        if cls is not None and hasattr(cls, "display_type_rich"):
            cls.display_type_rich = _display_type_rich
