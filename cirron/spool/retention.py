"""Which sessions ``cirron traces clear`` may delete: the one place the rule is written.

* a **live** session (its writer holds the liveness lock) is never deleted;
* an **unfinished** session (:attr:`~cirron.spool.reconstruct.Session.unfinished`: no closed
  root, and its writer has no lock protocol, so nothing shows whether it is still writing) is
  treated as the seed treats a live session: plain ``clear`` and ``--keep`` keep it, ``--before``
  deletes it only when it started before the cutoff;
* a **crashed** session (open root, lock released) is kept by ``--keep`` and deleted by plain
  ``clear`` and by ``--before``;
* ``--keep N`` keeps the N newest ended sessions; ``--before`` keeps what started at or after
  the cutoff (or has no start time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["ClearPlan", "plan_clear"]

T = TypeVar("T")


@dataclass
class ClearPlan(Generic[T]):
    #: Entries to delete, in the order given (oldest first).
    eligible: list[T] = field(default_factory=list)
    #: Live sessions (kept whatever the options).
    live: list[T] = field(default_factory=list)
    #: Unfinished sessions kept because they may still be writing.
    unfinished: list[T] = field(default_factory=list)


def _identity(x: Any) -> Any:
    return x


def plan_clear(entries: Sequence[T], cutoff_ns: int | None = None, keep: int | None = None,
               session: Callable[[T], Any] = _identity) -> ClearPlan[T]:
    """What ``clear`` deletes among ``entries`` (oldest first), and what it protects.

    ``session(entry)`` gives the session of an entry (anything with ``live``, ``crashed``,
    ``unfinished`` and ``started_ns``; e.g. ``(spool_dir, session)`` pairs with
    ``session=lambda e: e[1]``).
    """
    plan: ClearPlan[T] = ClearPlan(live=[e for e in entries if session(e).live])
    candidates = [e for e in entries if not session(e).live]
    if cutoff_ns is None:
        eligible = [e for e in candidates if not session(e).unfinished]
    else:
        eligible = [e for e in candidates
                    if session(e).started_ns is not None and session(e).started_ns < cutoff_ns]
    plan.unfinished = [e for e in candidates if session(e).unfinished and not any(e is x for x in eligible)]
    if keep is not None:
        finished = [e for e in reversed(candidates) if not session(e).crashed and not session(e).unfinished]
        kept = {id(e) for e in finished[:keep]} | {id(e) for e in candidates
                                                   if session(e).crashed or session(e).unfinished}
        plan.unfinished = [e for e in candidates if session(e).unfinished]
        eligible = [e for e in eligible if id(e) not in kept]
    plan.eligible = eligible
    return plan
