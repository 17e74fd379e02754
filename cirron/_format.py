"""How recorded things read as text: the one module for ``ci.trace()``, the console sinks and the CLI.

Labels (``epoch[0]``), durations, values and the two span line shapes are made here and nowhere
else. The shapes differ on purpose, each as its reference doc specifies (docs/recording.md says why):

* :func:`trace_line` (``ci.trace()``, seed 001) is a compact in-process summary, one line per span:
  ``epoch[0] - 142us lr=0.1 {loss=0.25}`` — attributes and the latest value of each mark inline.
* :func:`view_span_line` and :func:`view_mark_line` (``cirron traces view``, seed 000) show the
  whole record: ``epoch[0] — 42.1ms lr=0.1``, then every mark on a line of its own,
  ``ci.mark loss=0.25``.
* :func:`path_span_line` and :func:`path_mark_line` (the ``log``/``stdout`` sinks) are the view's
  lines with the span's path instead of an indent, so each reads on its own as the run goes:
  ``epoch[0]/batch[3]/forward — 1.2ms``, ``epoch[0]/batch[3]: ci.mark loss=0.25``.

A ``request`` span's label names its endpoint: ``request chat``.

Non-finite floats are named as the spool writes them (:func:`cirron._schema.encode_float`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cirron._schema import encode_float

#: ``paint(text, role)`` styles a part of a view line; roles: ``label``, ``duration``, ``attrs``, ``mark``.
Painter = Callable[[str, str], str]


def _plain(text: str, role: str) -> str:
    return text


_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_control(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, bells, carriage
    returns, line breaks...) from names and values become visible ``\\xNN`` escapes."""
    return _CONTROL_RE.sub(_escape_one, text)


#: The span ``@ci.inference`` opens per call; its label names the endpoint it serves.
REQUEST_SPAN = "request"


def span_label(name: object, index: object, attrs: object = None) -> str:
    """``name[index]`` for an indexed span (epochs, batches), ``request <endpoint>`` for a
    request span with an ``endpoint`` attr, else ``name``."""
    text = name if isinstance(name, str) else ("?" if name is None else str(name))
    if type(index) is int:
        return f"{text}[{index}]"
    if text == REQUEST_SPAN and isinstance(attrs, Mapping):
        endpoint = attrs.get("endpoint")
        if isinstance(endpoint, str) and endpoint:
            return f"{text} {endpoint}"
    return text


def label_of(span: Mapping[str, Any] | Any) -> str:
    """The label of a span record (a dict or a reader record struct)."""
    return span_label(span.get("name"), span.get("index"), span.get("attrs"))


def label_attrs(span: Mapping[str, Any] | Any) -> Mapping[str, object]:
    """The attrs a line shows after the label: all of them, less what the label says already."""
    attrs = span.get("attrs")
    if not isinstance(attrs, Mapping):
        return {}
    if span.get("name") == REQUEST_SPAN and "endpoint" in attrs and label_of(span) != REQUEST_SPAN:
        return {k: v for k, v in attrs.items() if k != "endpoint"}
    return attrs


#: (below this many ns, unit, ns per unit)
_UNITS = ((1_000, "ns", 1), (1_000_000, "us", 1_000), (1_000_000_000, "ms", 1_000_000), (None, "s", 1_000_000_000))


def _in_unit(ns: float) -> tuple[float, str]:
    """``ns`` (not negative) in the largest unit it reaches."""
    for limit, unit, per in _UNITS:
        if limit is None or ns < limit:
            return ns / per, unit
    raise AssertionError("unreachable")  # the last unit has no limit


def format_duration_ns(ns: float | None) -> str:
    """The view's durations: ``973ns``, ``974.0us``, ``42.1ms``, ``1.5s``; ``?`` when unknown."""
    if ns is None:
        return "?"
    value, unit = _in_unit(abs(float(ns)))
    return f"{'-' if ns < 0 else ''}{value:.{0 if unit == 'ns' else 1}f}{unit}"


def format_duration_short(ns: int | None) -> str:
    """``ci.trace()``'s durations: whole ``ns``/``us`` below a millisecond (``142us``), then ``42.1ms``,
    ``1.50s``; ``(open)`` for a span still running."""
    if ns is None:
        return "(open)"
    value, unit = _in_unit(ns)
    if unit in ("ns", "us"):
        return f"{int(value)}{unit}"
    return f"{value:.{1 if unit == 'ms' else 2}f}{unit}"


def format_float(x: float) -> str:
    """Six significant digits; ``NaN``, ``Infinity``, ``-Infinity`` as the spool writes them."""
    encoded = encode_float(x)
    return encoded if isinstance(encoded, str) else f"{x:.6g}"


def format_value(value: object) -> str:
    """An attribute or mark value inline: floats by :func:`format_float`, the rest as ``str``."""
    if isinstance(value, float):
        return format_float(value)
    return str(value)


_BARE_RE = re.compile(r'^[^\s"=\x00-\x1f]{1,80}$')


def format_view_value(value: object) -> str:
    """A value as the view shows it inline (``key=value``): JSON spellings (``true``, ``null``,
    quoted strings with spaces or quotes), floats by :func:`format_float`, cut at 80 characters."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return format_float(value)
    if type(value) is str and _BARE_RE.match(value):
        text = value
    elif value is None:
        text = "null"
    else:
        from cirron.spool.reader import safe_dumps

        text = safe_dumps(value).decode()
    return text if len(text) <= 80 else text[:79] + "…"


def format_attrs(attrs: Mapping[str, object] | None) -> str:
    """``k=v k2=v2`` in insertion order; empty for no attributes."""
    if not attrs:
        return ""
    return " ".join(f"{k}={format_value(v)}" for k, v in attrs.items())


def trace_line(depth: int, label: str, wall_ns: int | None, attrs: Mapping[str, object] | None,
               latest_marks: Mapping[str, object] | None) -> str:
    """One span of ``ci.trace()``: ``  epoch[0] - 142us lr=0.1 {loss=0.25}``."""
    parts = [f"{'  ' * depth}{escape_control(label)} - {format_duration_short(wall_ns)}"]
    if attrs:
        parts.append(escape_control(format_attrs(attrs)))
    if latest_marks:
        marks = ", ".join(f"{k}={format_value(v)}" for k, v in latest_marks.items())
        parts.append("{" + escape_control(marks) + "}")
    return " ".join(parts)


def view_span_line(depth: int, label: str, duration: str, attrs: str = "", paint: Painter = _plain) -> str:
    """One span of the view: ``  epoch[0] — 42.1ms lr=0.1``. ``duration`` is already text (a
    :func:`format_duration_ns` result, or the view's ``(live)``/``(crashed)`` for an open span)."""
    line = f"{'  ' * depth}{paint(escape_control(label), 'label')} — {paint(duration, 'duration')}"
    return f"{line} {paint(escape_control(attrs), 'attrs')}" if attrs else line


def path_span_line(path: str, duration: str, attrs: str = "") -> str:
    """One span of the ``log``/``stdout`` sinks: ``epoch[0]/batch[3]/forward — 1.2ms lr=0.1``."""
    return view_span_line(0, path, duration, attrs)


def path_mark_line(path: str, name: object, value: str, summary: bool = False) -> str:
    """One mark of the ``log``/``stdout`` sinks: ``epoch[0]/batch[3]: ci.mark loss=0.25``
    (a mark outside every scope has no path)."""
    line = view_mark_line(0, name, value, summary)
    return f"{path}: {line}" if path else line


def view_mark_line(depth: int, name: object, value: str, summary: bool = False, paint: Painter = _plain) -> str:
    """One mark of the view, on its own line below its span: ``    ci.mark loss=0.25 (summary)``."""
    text = escape_control(f"ci.mark {name}={value}") + (" (summary)" if summary else "")
    return f"{'  ' * depth}{paint(text, 'mark')}"
