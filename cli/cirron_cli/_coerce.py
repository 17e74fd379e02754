"""Option values without pydantic when nothing needs converting.

typer (0.2x) checks every option value through a pydantic ``TypeAdapter``; importing pydantic and
building those adapters is ~0.1 s of every command's start, more than reading a warm spool index.
Nearly every value a cirron command gets is already what the adapter would return (a default, a
string for a ``str`` option, plain digits for an ``int``, a choice's name); those are accepted
here as they are. Anything else (an out-of-range number, a bad choice, a path, a boolean from an
environment variable) goes to typer's own adapter, built on first need, so its result and its
error messages are unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import Enum
from functools import cached_property
from typing import Any

MISS: Any = object()
_INT_RE = re.compile(r"-?[0-9]{1,18}")
_FLOAT_RE = re.compile(r"-?[0-9]{1,15}\.[0-9]{1,15}")
_installed = False


def passthrough_value(value: Any, annotation: Any, parameter_info: Any, ctx: Any = None) -> Any:
    """The value typer's adapter would return for ``value``, or ``MISS`` when only the adapter
    can tell (a conversion that may fail, a path, a custom parser)."""
    if parameter_info.parser is not None or getattr(parameter_info, "click_type", None) is not None:
        return MISS
    if getattr(annotation, "__origin__", None) is list:
        if not isinstance(value, (list, tuple)):
            return MISS
        (item_type,) = annotation.__args__
        items = [passthrough_value(item, item_type, parameter_info, ctx) for item in value]
        return MISS if any(item is MISS for item in items) else items
    if annotation is str:
        return value if type(value) is str else MISS
    if annotation is int or annotation is float:
        number = _number(value, annotation)
        if number is MISS or not _in_range(number, parameter_info):
            return MISS
        return number
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(value, annotation, parameter_info, ctx)
    return MISS


def _number(value: Any, annotation: type) -> Any:
    if type(value) is annotation:
        return value
    if annotation is float and type(value) is int:
        return float(value)
    if type(value) is str:
        if _INT_RE.fullmatch(value):
            return annotation(value)
        if annotation is float and _FLOAT_RE.fullmatch(value):
            return float(value)
    return MISS


def _in_range(number: Any, parameter_info: Any) -> bool:
    low, high = parameter_info.min, parameter_info.max
    return (low is None or number >= low) and (high is None or number <= high)


def _choice(value: Any, annotation: type[Enum], parameter_info: Any, ctx: Any) -> Any:
    from typer._param_types import coerce_cli_choice  # the function typer's choice adapter calls

    try:
        return coerce_cli_choice(value, choices=tuple(annotation), case_sensitive=parameter_info.case_sensitive,
                                 ctx=ctx)
    except ValueError:
        return MISS  # the adapter words the error


def install() -> None:
    """Make every typer option and argument of this process try ``passthrough_value`` before
    typer's adapter (idempotent; a typer without adapters is left alone)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from typer import _coercion, core
    except ImportError:  # pragma: no cover
        return
    base: Any = getattr(_coercion, "RuntimeParam", None)
    build: Any = getattr(_coercion, "build_runtime_param", None)
    parameter: Any = getattr(core, "_TyperParameter", None)
    known = base is not None and [f.name for f in fields(base)] == ["parameter_info", "annotation"]
    if not known or build is None or not hasattr(parameter, "get_runtime_param"):
        return  # pragma: no cover - another typer: its own coercion runs unchanged

    @dataclass(frozen=True)
    class PassthroughParam(base):  # type: ignore[misc]
        descriptor: Any

        @cached_property
        def adapter(self) -> Any:
            return build(self.descriptor)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            result = passthrough_value(value, self.annotation, self.parameter_info, ctx)
            if result is MISS:
                return self.adapter._coerce_value(value, param=param, ctx=ctx)
            return result

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            desc = self.type_descriptor
            self._runtime_param = PassthroughParam(parameter_info=desc.parameter_info, annotation=desc.annotation,
                                                   descriptor=desc)
        return self._runtime_param

    parameter.get_runtime_param = get_runtime_param
