"""Zero-code framework integrations, installed by ``ci.profile(frameworks=[...])``.

================  ===========================================================================
name              what it records
================  ===========================================================================
``transformers``  ``Trainer``: epochs, steps, evaluation, logged metrics as marks, the model
                  registered for snapshots (:mod:`cirron.integrations.transformers`)
``lightning``     ``lightning.pytorch.Trainer``, the same (:mod:`cirron.integrations.lightning`)
``keras``         Keras 3 ``Model.fit``/``evaluate``, the same; on the torch backend also forward,
                  backward and optimizer step (:mod:`cirron.integrations.keras`)
``torch``         top-level module ``forward``, ``backward``, ``optimizer_step``; implicit
                  ``epoch``/``step`` spans and ``data_load`` from ``DataLoader`` iteration;
                  ``loss`` marks from loss modules (see :mod:`cirron.integrations.torch`)
================  ===========================================================================

``frameworks=None`` installs the integrations whose package is imported when the session starts.
Trainer integrations go first and claim the ``epoch``/``step`` spans while a run is going, so
the torch integration does not make a second pair under them. ``shutdown()`` uninstalls all of
them and leaves every patched object exactly as it was.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, ClassVar

from cirron._errors import CirronConfigError
from cirron._redact import redact

#: Integration name → the package it needs. Trainers first: they claim epoch/step before torch.
INTEGRATIONS: dict[str, str] = {
    "transformers": "transformers",
    "lightning": "lightning",
    "keras": "keras",
    "torch": "torch",
}
#: The module whose presence in ``sys.modules`` autodetects an integration (importing
#: ``transformers`` alone, e.g. for a tokenizer, does not mean a Trainer runs).
AUTODETECT: dict[str, str] = {"transformers": "transformers.trainer", "lightning": "lightning.pytorch",
                              "keras": "keras", "torch": "torch"}
#: Other names users write for the same integration (the vendor SDK's names included).
ALIASES = {"pytorch": "torch", "hf": "transformers", "huggingface": "transformers",
           "pytorch_lightning": "lightning", "tensorflow": "keras", "tf": "keras"}


def resolve(frameworks: Any) -> list[str]:
    """The integrations to install, in install order; unknown names are a config error."""
    if frameworks is None:
        return [name for name, module in AUTODETECT.items() if module in sys.modules]
    wanted = set()
    for raw in frameworks:
        name = ALIASES.get(str(raw).lower(), str(raw).lower())
        if name not in INTEGRATIONS:
            known = ", ".join([*INTEGRATIONS, *ALIASES])
            raise CirronConfigError(f"frameworks: unknown integration {raw!r}; known: {known}")
        wanted.add(name)
    if wanted & {"transformers", "lightning"} or ("keras" in wanted and _keras_on_torch()):
        wanted.add("torch")  # their forward/backward/optimizer spans are the torch integration's
    return [name for name in INTEGRATIONS if name in wanted]


def _keras_on_torch() -> bool:
    import os

    module = sys.modules.get("keras")
    if module is not None:
        try:
            return bool(module.backend.backend() == "torch")
        except Exception:  # noqa: BLE001
            return False
    return os.environ.get("KERAS_BACKEND", "") == "torch"


class Installed:
    """The integrations one session installed, and what they share while they run."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.handles: dict[str, Any] = {}
        #: span name ("epoch", "step") → how many running trainers open it themselves
        self.claims: dict[str, int] = {}
        #: Called when a trainer claims spans: the torch integration closes its implicit ones.
        self.on_claim: list[Any] = []

    def claim(self, *names: str) -> None:
        for n in names:
            self.claims[n] = self.claims.get(n, 0) + 1
        for listener in self.on_claim:
            listener()

    def release(self, *names: str) -> None:
        for n in names:
            if self.claims.get(n):
                self.claims[n] -= 1

    def claimed(self, name: str) -> bool:
        return bool(self.claims.get(name))

    def uninstall(self) -> None:
        for name in reversed(list(self.handles)):
            try:
                self.handles.pop(name).uninstall()
            except Exception as exc:  # noqa: BLE001 - the rest must still be undone
                self.c._rec.note_internal_error(exc)


def install(c: Any, frameworks: Any) -> Installed:
    """Install the chosen integrations into ``c``'s session. A named integration whose package is
    missing is skipped, counted and said once on stderr; it never stops the session."""
    installed = Installed(c)
    for name in resolve(frameworks):
        try:
            importlib.import_module(INTEGRATIONS[name])
        except ImportError:
            _say_once(f"cirron: frameworks={name!r} skipped: {INTEGRATIONS[name]} is not installed")
            continue
        module = importlib.import_module(f"cirron.integrations.{name}")
        try:
            installed.handles[name] = module.install(c, installed)
        except Exception as exc:  # noqa: BLE001
            c._rec.note_internal_error(exc)
            _say_once(f"cirron: the {name} integration could not be installed: {type(exc).__name__}: {exc}")
    return installed


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        print(redact(line), file=sys.stderr)


def current_installed(c: Any) -> Installed:
    """The running session's integrations, or a detached set for callbacks attached by hand."""
    installed = getattr(c, "_integrations", None)
    return installed if installed is not None else Installed(c)


# -- spans opened and closed by hooks rather than by a ``with`` block -----------------------------


def open_span(c: Any, name: str, index: int | None = None, **attrs: Any) -> Any:
    """Open ``name[index]`` as the current span of the caller's context, or None when not recording."""
    scope = c.scope(name, index=index, **attrs)
    scope.__enter__()
    return scope if scope.span is not None else None


def close_span(c: Any, scope: Any, error: str | None = None) -> None:
    """Close a span :func:`open_span` opened: put the context back only if it is still the
    current span (a hook may run after the user opened spans of their own), else just end it."""
    if scope is None:
        return
    try:
        if error is not None and scope.span is not None:
            scope.span.set_attr("error", redact(error))
        if c._rec.current.get() is scope:
            scope.__exit__(None, None, None)
        else:
            scope._token = None
            scope.finish()
    except Exception as exc:  # noqa: BLE001
        c._rec.note_internal_error(exc)


def epoch_end_snapshots(c: Any, epoch: Any) -> None:
    """Snapshot the registered models into the still-open ``epoch`` span, as ``ci.epochs`` does."""
    snaps = c._snapshots
    if snaps is not None and epoch is not None and epoch.span is not None:
        try:
            snaps.on_epoch_end(epoch.span)
        except Exception as exc:  # noqa: BLE001 - a snapshot failure never stops training
            c._rec.note_internal_error(exc)


class SharedPatch:
    """``owner.name`` replaced once for every session that asks, put back exactly when the last
    one leaves, whatever order sessions start and stop in. ``make(original, members)`` builds the
    replacement; ``members`` is the live list of what joined (sessions or their hooks)."""

    _active: ClassVar[dict[tuple[int, str], SharedPatch]] = {}

    @classmethod
    def join(cls, owner: Any, name: str, make: Any, member: Any) -> SharedPatch:
        patch = cls._active.get((id(owner), name))
        if patch is None:
            patch = cls._active[(id(owner), name)] = cls(owner, name, make)
        patch.members.append(member)
        return patch

    def __init__(self, owner: Any, name: str, make: Any) -> None:
        self.owner = owner
        self.name = name
        self.had_own: bool = name in owner.__dict__
        self.saved: Any = owner.__dict__.get(name)
        self.members: list[Any] = []
        self.replacement: Any = make(getattr(owner, name), self.members)
        setattr(owner, name, self.replacement)

    def leave(self, member: Any) -> None:
        if member in self.members:
            self.members.remove(member)
        if self.members:
            return
        SharedPatch._active.pop((id(self.owner), self.name), None)
        if self.owner.__dict__.get(self.name) is self.replacement:
            if self.had_own:
                setattr(self.owner, self.name, self.saved)
            else:
                delattr(self.owner, self.name)
