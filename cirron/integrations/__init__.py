"""Zero-code framework integrations, installed by ``ci.profile(frameworks=[...])``.

================  ===========================================================================
name              what it records
================  ===========================================================================
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
from typing import Any

from cirron._errors import CirronConfigError

#: Integration name → the package it needs. Trainers first: they claim epoch/step before torch.
INTEGRATIONS: dict[str, str] = {
    "torch": "torch",
}
#: Other names users write for the same integration (the vendor SDK's names included).
ALIASES = {"pytorch": "torch"}


def resolve(frameworks: Any) -> list[str]:
    """The integrations to install, in install order; unknown names are a config error."""
    if frameworks is None:
        return [name for name, pkg in INTEGRATIONS.items() if pkg in sys.modules]
    wanted = set()
    for raw in frameworks:
        name = ALIASES.get(str(raw).lower(), str(raw).lower())
        if name not in INTEGRATIONS:
            known = ", ".join([*INTEGRATIONS, *ALIASES])
            raise CirronConfigError(f"frameworks: unknown integration {raw!r}; known: {known}")
        wanted.add(name)
    return [name for name in INTEGRATIONS if name in wanted]


class Installed:
    """The integrations one session installed, and what they share while they run."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.handles: dict[str, Any] = {}
        #: span name ("epoch", "step") → how many running trainers open it themselves
        self.claims: dict[str, int] = {}

    def claim(self, *names: str) -> None:
        for n in names:
            self.claims[n] = self.claims.get(n, 0) + 1

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
        print(line, file=sys.stderr)


def current_installed(c: Any) -> Installed:
    """The running session's integrations, or a detached set for callbacks attached by hand."""
    installed = getattr(c, "_integrations", None)
    return installed if installed is not None else Installed(c)
