"""The curated public surface and the promise that `import cirron` stays light."""

from __future__ import annotations

import subprocess
import sys

import cirron


def test_all_is_sorted_and_complete() -> None:
    assert cirron.__all__ == sorted(cirron.__all__)
    for name in cirron.__all__:
        assert hasattr(cirron, name), name
    import types

    # Public subpackages (cirron.spool, cirron.sinks, ...) become attributes once imported.
    public = {n for n, v in vars(cirron).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public - set(cirron.__all__) == set()


def test_import_does_not_pull_heavy_libraries() -> None:
    heavy = ["pyarrow", "safetensors", "pydantic", "numpy", "httpx", "typer", "rich", "uvicorn", "torch",
             "pandas", "anyio", "yaml", "msgspec"]
    code = f"import sys, cirron; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_error_tree() -> None:
    assert issubclass(cirron.CirronConfigError, ValueError)
    assert issubclass(cirron.CirronDependencyError, ImportError)
    assert issubclass(cirron.CirronMarkTypeError, TypeError)
    for name in [n for n in cirron.__all__ if n.startswith("Cirron") and n != "Cirron"]:
        assert issubclass(getattr(cirron, name), cirron.CirronError)
