"""pyarrow without its pandas check: a command that hands pyarrow no pandas objects skips the
pandas import (0.25 s quiet, a second on a loaded machine) that pyarrow's first conversion does
to ask whether its input is one."""

from __future__ import annotations

import sys

__all__ = ["skip_pandas_check"]


def skip_pandas_check() -> None:
    """Have pyarrow settle, without importing pandas, that it converts no pandas objects. A later
    use that needs pandas (``Table.to_pandas()``) still imports it then; nothing changes when
    pandas is imported already, or without pyarrow."""
    if "pandas" in sys.modules:
        return
    try:
        import pyarrow as pa
    except ImportError:
        return

    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)  # its import fails at once...
    try:
        pa.array([])  # ...in the check this conversion makes, which pyarrow does only once
    finally:
        sys.meta_path.remove(blocker)


class _NoPandas:
    """An import finder that refuses pandas."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is not needed here")
