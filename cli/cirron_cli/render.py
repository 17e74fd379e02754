"""Formatting shared by every command: durations, sizes, box tables, colour and error lines."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TextIO

import typer

from cirron._format import (
    escape_control,
    format_duration_ns,  # noqa: F401  (re-exported for the commands)
)
from cirron._redact import redact

_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")


def format_bytes(n: int | float) -> str:
    """``256 B``, ``4.45 KB``, ``142.3 KB`` (1024-based; two decimals below 10, one above)."""
    n = float(n)
    if n < 1024:
        return f"{n:.0f} B"
    for unit in _SIZE_UNITS:
        n /= 1024
        if n < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{n:.2f} {unit}" if n < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


#: A cell of printable ASCII (and ``…``) is one terminal column per character, so :func:`box_table`
#: draws it without rich (whose import is a third of a warm ``traces list``); anything else (wide
#: characters, combining marks, tabs, edge spaces that rich trims) is measured and drawn by rich.
_ONE_COLUMN = re.compile(r"(?:[!-~…](?:[ -~…]*[!-~…])?)?")


def box_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    right: Iterable[int] = (),
    center: Iterable[int] = (),
    *,
    headers_follow: bool = False,
) -> str:
    """A box-drawn table in the style of the seed's examples (rich's ``box.SQUARE``, so wide
    characters keep the columns aligned). ``right``/``center`` are column indexes; headers are
    left-aligned unless ``headers_follow`` aligns them like their column."""
    right, center = set(right), set(center)
    cells = [[escape_control(str(c)) for c in row] for row in rows]
    if all(len(row) == len(headers) and all(_ONE_COLUMN.fullmatch(c) for c in row) for row in [headers, *cells]):
        return _plain_box_table(headers, cells, right, center, headers_follow)
    return _rich_box_table(headers, cells, right, center, headers_follow)


def _justify(text: str, width: int, how: str) -> str:
    pad = width - len(text)
    if how == "right":
        return " " * pad + text
    if how == "center":
        return " " * (pad // 2) + text + " " * (pad - pad // 2)
    return text + " " * pad


def _plain_box_table(
    headers: Sequence[str], cells: list[list[str]], right: set[int], center: set[int], headers_follow: bool
) -> str:
    """What :func:`_rich_box_table` draws, for cells of one column per character."""
    if not headers:
        return ""
    hows = ["right" if i in right else "center" if i in center else "left" for i in range(len(headers))]
    widths = [max(len(c) for c in column) for column in zip(headers, *cells)]

    def line(left: str, mid: str, end: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + end

    def row(values: Sequence[str], aligns: Sequence[str]) -> str:
        return "│" + "│".join(f" {_justify(v, w, a)} " for v, w, a in zip(values, widths, aligns)) + "│"

    out = [line("┌", "┬", "┐"), row(headers, hows if headers_follow else ["left"] * len(headers)),
           line("├", "┼", "┤")]
    out += [row(r, hows) for r in cells]
    out.append(line("└", "┴", "┘"))
    return "\n".join(out)


def _rich_box_table(
    headers: Sequence[str], cells: list[list[str]], right: set[int], center: set[int], headers_follow: bool
) -> str:
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SQUARE, header_style="", pad_edge=True, padding=(0, 1))
    for i, h in enumerate(headers):
        justify: Any = "right" if i in right else "center" if i in center else "left"
        table.add_column(Text(h, justify=justify if headers_follow else "left"), justify=justify, no_wrap=True)
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    out = io.StringIO()
    Console(file=out, width=1_000_000, color_system=None, highlight=False, emoji=False, markup=False).print(table)
    return out.getvalue().rstrip("\n")


def use_color(no_color: bool = False, stream: TextIO | None = None) -> bool:
    """Colour only on a TTY, and never with ``--no-color`` or a non-empty ``NO_COLOR``."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: <message>`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {escape_control(redact(message))}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"Warning: {escape_control(redact(message))}", err=True)


# ---------------------------------------------------------------- added for traces/spool commands

_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
         "cyan": "36"}


def style(text: str, *styles: str, color: bool = True) -> str:
    """``text`` wrapped in ANSI codes when ``color`` is true (callers pass ``use_color(...)``)."""
    if not color or not styles:
        return text
    codes = ";".join(_ANSI[s] for s in styles)
    return f"\x1b[{codes}m{text}\x1b[0m"


def format_iso_ns(ns: int | None) -> str:
    """``2026-04-21T14:22:05.001Z`` (UTC, milliseconds) for a Unix-ns timestamp; ``?`` if unknown."""
    import datetime as _dt

    if not isinstance(ns, int):
        return "?"
    try:
        secs, rem = divmod(ns, 1_000_000_000)
        dt = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1_000_000:03d}Z"


def json_ns(v: object) -> str | None:
    """A nanosecond timestamp in ``--json`` output: a decimal string (int64 stays exact in every
    JSON reader), ``None`` when unknown. Every ``--json`` uses this."""
    return str(v) if type(v) is int else None


def short_id(session_id: str, n: int = 8) -> str:
    """The first ``n`` characters and ``…`` (ids that are not longer are shown whole)."""
    return session_id if len(session_id) <= n or session_id.startswith("(") else session_id[:n] + "…"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def no_traces(err: bool = False) -> None:
    """The line every command prints when the spool holds nothing to show."""
    typer.echo("No traces found. Run ci.profile() from Python to produce some.", err=err)


def aligned_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Iterable[int] = (), center: Iterable[int] = ()
) -> str:
    """:func:`box_table` with the headers of right-aligned columns right-aligned too (``│     SIZE │``)."""
    return box_table(headers, rows, right=right, center=center, headers_follow=True)
