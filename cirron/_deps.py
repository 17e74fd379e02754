"""``ci.deps()``: which optional integrations are importable here, with their versions.

Packages are found with ``importlib.util.find_spec`` and versioned from their installed metadata,
so nothing is imported: checking for torch at the top of a script costs no torch import.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata

from cirron._errors import CirronDependencyError
from cirron._version import DISTRIBUTION

#: import name → (distribution name, cirron extra that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "transformers": ("transformers", "llm"),
    "lightning": ("lightning", "lightning"),
    "keras": ("keras", "keras"),
    "sklearn": ("scikit-learn", "sklearn"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openai": ("openai", "llm"),
    "pandas": ("pandas", "pandas"),
    "fsspec": ("fsspec", "remote"),
    "s3fs": ("s3fs", "remote"),
    "gcsfs": ("gcsfs", "remote"),
    "adlfs": ("adlfs", "remote"),
    "fastapi": ("fastapi", "serving"),
    "flask": ("flask", "serving"),
    "opentelemetry.proto": ("opentelemetry-proto", "otlp"),
}
#: Other names for the same package (the vendor SDK's extras names included).
ALIASES = {"pytorch": "torch", "scikit-learn": "sklearn", "hf": "transformers", "s3": "s3fs",
           "gcs": "gcsfs", "azure": "adlfs", "onnx": "onnxruntime", "otlp": "opentelemetry.proto",
           "pytorch_lightning": "lightning"}


def version_of(import_name: str) -> str | None:
    """The installed version of ``import_name``, ``"unknown"`` without metadata, None if absent."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dist = OPTIONAL.get(import_name, (import_name.split(".")[0], ""))[0]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def deps(*names: str) -> dict[str, str | None]:
    """``{name: version or None}`` for every optional integration, or for ``names`` only; with
    ``names``, a :class:`CirronDependencyError` lists every missing one and how to install it."""
    if not names:
        return {name: version_of(name) for name in OPTIONAL}
    found: dict[str, str | None] = {}
    for raw in names:
        if not isinstance(raw, str) or not raw:
            raise TypeError(f"ci.deps() takes package names, not {raw!r}")
        found[raw] = version_of(ALIASES.get(raw, raw))
    missing = [n for n, v in found.items() if v is None]
    if missing:
        raise MissingDependencies(missing)
    return found


class MissingDependencies(CirronDependencyError):
    """:class:`CirronDependencyError` for several packages at once."""

    def __init__(self, missing: list[str]) -> None:
        extras = sorted({OPTIONAL[ALIASES.get(n, n)][1] for n in missing if ALIASES.get(n, n) in OPTIONAL})
        others = [n for n in missing if ALIASES.get(n, n) not in OPTIONAL]
        parts = []
        if extras:
            parts.append(f"pip install '{DISTRIBUTION}[{','.join(extras)}]'")
        if others:
            parts.append("pip install " + " ".join(others))
        Exception.__init__(self, f"missing optional dependencies: {', '.join(missing)}. Install with: "
                                 + " && ".join(parts))
        self.package = ", ".join(missing)
        self.feature = "ci.deps()"
        self.missing = missing
