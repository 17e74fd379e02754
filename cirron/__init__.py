"""cirron: local-first profiling and tracing for ML code.

``import cirron as ci`` and call the module functions; they are the methods of a process-wide
default :class:`Cirron`. Build your own ``Cirron(...)`` for an independent profiler.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Final as _Final

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

aflush: _Final = _DEFAULT.aflush
ashutdown: _Final = _DEFAULT.ashutdown
batches: _Final = _DEFAULT.batches
deps: _Final = _DEFAULT.deps
env: _Final = _DEFAULT.env
epochs: _Final = _DEFAULT.epochs
flush: _Final = _DEFAULT.flush
health: _Final = _DEFAULT.health
load: _Final = _DEFAULT.load
mark: _Final = _DEFAULT.mark
profile: _Final = _DEFAULT.profile
profiling: _Final = _DEFAULT.profiling
scope: _Final = _DEFAULT.scope
secret: _Final = _DEFAULT.secret
shutdown: _Final = _DEFAULT.shutdown
snapshot: _Final = _DEFAULT.snapshot
trace: _Final = _DEFAULT.trace
watch: _Final = _DEFAULT.watch
wrap: _Final = _DEFAULT.wrap


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
