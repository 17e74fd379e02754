"""The optional compiled speed-ups (``_record/_cscope.c``, ``_flush/_cencode.c``).

Every one has a pure-Python twin that is the reference; the compiled one is used when the
build made it, ``CIRRON_PURE_PYTHON`` is not set and the interpreter has a GIL. The same variable, set while installing,
skips compiling them.
"""

from __future__ import annotations

import importlib
import os
import sysconfig
from types import ModuleType

#: Set to 1 to run (or build) without the compiled modules.
PURE_PYTHON_ENV = "CIRRON_PURE_PYTHON"


def pure_python_wanted() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def free_threaded() -> bool:
    """A build without the GIL: the compiled modules rely on it, so the pure-Python twins run."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def load(module: str) -> ModuleType | None:
    """The compiled module ``module`` (a full dotted name), or None when absent or not wanted."""
    if pure_python_wanted() or free_threaded():
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def compiled_speedups() -> dict[str, bool]:
    """Which compiled modules this process runs (``health()["compiled"]``)."""
    from cirron._flush import batch
    from cirron._record import span

    return {"scope": span.COMPILED, "encoder": batch._cencode is not None}
