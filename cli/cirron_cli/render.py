"""Formatting shared by every command: durations, sizes, box tables, colour and error lines."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn, TextIO

import typer

_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")


def format_duration_ns(ns: int | float | None) -> str:
    """``973ns``, ``974.0us``, ``42.1ms``, ``1.5s``, as the tree view shows durations."""
    if ns is None:
        return "?"
    ns = float(ns)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{sign}{ns / 1_000:.1f}us"
    if ns < 1_000_000_000:
        return f"{sign}{ns / 1_000_000:.1f}ms"
    return f"{sign}{ns / 1_000_000_000:.1f}s"


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


def box_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    right: Iterable[int] = (),
    center: Iterable[int] = (),
) -> str:
    """A box-drawn table in the style of the seed's examples. ``right``/``center`` are column indexes."""
    right, center = set(right), set(center)
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str], header: bool = False) -> str:
        out = []
        for i, v in enumerate(values):
            w = widths[i]
            if header:
                out.append(f" {v.ljust(w)} ")
            elif i in center:
                out.append(f" {v.center(w)} ")
            elif i in right:
                out.append(f" {v.rjust(w)} ")
            else:
                out.append(f" {v.ljust(w)} ")
        return "│" + "│".join(out) + "│"

    def rule(left: str, mid: str, rgt: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + rgt

    lines = [rule("┌", "┬", "┐"), line(headers, header=True), rule("├", "┼", "┤")]
    lines += [line(r) for r in cells]
    lines.append(rule("└", "┴", "┘"))
    return "\n".join(lines)


def use_color(no_color: bool = False, stream: TextIO | None = None) -> bool:
    """Colour only on a TTY, and never with ``--no-color`` or a non-empty ``NO_COLOR``."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: <message>`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"Warning: {message}", err=True)
