"""cirron: local-first profiling and tracing for ML code.

``import cirron as ci`` and call the module functions; they are the methods of a process-wide
default :class:`Cirron`. Build your own ``Cirron(...)`` for an independent profiler.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from cirron._cirron import Cirron
from cirron._errors import (
    CirronConfigError,
    CirronDependencyError,
    CirronError,
    CirronMarkTypeError,
    CirronSecretNotFound,
    CirronSpoolError,
    CirronStateError,
    CirronWrapError,
)
from cirron._record.instrument import current_request_id
from cirron._version import __version__

_DEFAULT = Cirron(_lazy=True)
_DEFAULT._share_with_workers()  # in a worker process of a profiled parent: record into its session

aflush = _DEFAULT.aflush
ashutdown = _DEFAULT.ashutdown
batches = _DEFAULT.batches
deps = _DEFAULT.deps
env = _DEFAULT.env
epochs = _DEFAULT.epochs
flush = _DEFAULT.flush
health = _DEFAULT.health
load = _DEFAULT.load
mark = _DEFAULT.mark
profile = _DEFAULT.profile
profiling = _DEFAULT.profiling
scope = _DEFAULT.scope
secret = _DEFAULT.secret
shutdown = _DEFAULT.shutdown
snapshot = _DEFAULT.snapshot
trace = _DEFAULT.trace
watch = _DEFAULT.watch
wrap = _DEFAULT.wrap


if _TYPE_CHECKING:
    from cirron._record.instrument import InferenceDecorator

    inference: InferenceDecorator


def __getattr__(name: str) -> "InferenceDecorator":
    # `ci.inference` is built on first use so `import cirron` stays light.
    if name == "inference":
        return _DEFAULT.inference
    raise AttributeError(f"module 'cirron' has no attribute {name!r}")


def default() -> Cirron:
    """The process-wide instance the module functions use."""
    return _DEFAULT


__all__ = [
    "Cirron",
    "CirronConfigError",
    "CirronDependencyError",
    "CirronError",
    "CirronMarkTypeError",
    "CirronSecretNotFound",
    "CirronSpoolError",
    "CirronStateError",
    "CirronWrapError",
    "__version__",
    "aflush",
    "ashutdown",
    "batches",
    "current_request_id",
    "default",
    "deps",
    "env",
    "epochs",
    "flush",
    "health",
    "inference",
    "load",
    "mark",
    "profile",
    "profiling",
    "scope",
    "secret",
    "shutdown",
    "snapshot",
    "trace",
    "watch",
    "wrap",
]
