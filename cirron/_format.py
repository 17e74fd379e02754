"""Human-readable durations, shared by ``ci.trace()``, the log sinks and the CLI."""

from __future__ import annotations


def format_duration_ns(ns: int | float | None) -> str:
    """``973ns``, ``974.0us``, ``42.1ms``, ``1.5s``."""
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


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_attrs(attrs: dict[str, object] | None) -> str:
    if not attrs:
        return ""
    return " ".join(f"{k}={format_value(v)}" for k, v in attrs.items())
