"""What every trainer integration does, whatever the framework calls its hooks.

A run is ``epoch[i]`` → ``step[i]`` spans (attr ``framework``; plus ``evaluate`` spans where the
trainer validates), the trainer's logged numbers as marks, and the model registered for epoch-end
snapshots. While a run is going the integration claims ``epoch`` and ``step`` (see
:class:`cirron.integrations.Installed`), so the torch integration nests its forward/backward/
optimizer spans under these instead of making its own epochs and steps.
"""

from __future__ import annotations

from typing import Any

from cirron.integrations import close_span, current_installed, epoch_end_snapshots, open_span

#: Logged names that are counters, not measurements.
_NOT_MARKS = frozenset({"epoch", "step", "global_step", "total_flos"})


class TrainerSpans:
    """Spans and marks of one run; the framework callbacks call these methods."""

    def __init__(self, c: Any, framework: str) -> None:
        self.c = c
        self.framework = framework
        self._installed: Any = None
        self._epoch: Any = None
        self._step: Any = None
        self._eval: Any = None

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a callback never breaks the user's training
            self.c._rec.note_internal_error(exc)
            return None

    # -- the run ----------------------------------------------------------------------------------

    def train_begin(self, model: Any = None) -> None:
        self._guard(self._train_begin, model)

    def _train_begin(self, model: Any) -> None:
        self._installed = current_installed(self.c)
        self._installed.claim("epoch", "step")
        if model is not None and callable(getattr(model, "named_parameters", None)):
            self.c.watch(model)

    def train_end(self, error: str | None = None) -> None:
        self._guard(self._train_end, error)

    def _train_end(self, error: str | None) -> None:
        for attr in ("_eval", "_step"):
            close_span(self.c, getattr(self, attr), error)
            setattr(self, attr, None)
        if self._epoch is not None:
            self.epoch_end()
        if self._installed is not None:
            self._installed.release("epoch", "step")
            self._installed = None

    # -- epochs and steps -------------------------------------------------------------------------

    def epoch_begin(self, index: int) -> None:
        self._guard(self._epoch_begin, index)

    def _epoch_begin(self, index: int) -> None:
        if self._epoch is not None:
            self._epoch_end(None)
        self._epoch = open_span(self.c, "epoch", int(index), framework=self.framework)

    def epoch_end(self, metrics: dict[str, Any] | None = None) -> None:
        self._guard(self._epoch_end, metrics)

    def _epoch_end(self, metrics: dict[str, Any] | None) -> None:
        close_span(self.c, self._step)
        self._step = None
        if self._epoch is None:
            return
        self._marks(metrics, "summary")
        epoch_end_snapshots(self.c, self._epoch)
        close_span(self.c, self._epoch)
        self._epoch = None

    def step_begin(self, index: int) -> None:
        self._guard(self._step_begin, index)

    def _step_begin(self, index: int) -> None:
        close_span(self.c, self._step)
        self._step = open_span(self.c, "step", int(index))

    def step_end(self, metrics: dict[str, Any] | None = None) -> None:
        self._guard(self._step_end, metrics)

    def _step_end(self, metrics: dict[str, Any] | None) -> None:
        self._marks(metrics, "point")
        close_span(self.c, self._step)
        self._step = None

    # -- evaluation and logs ----------------------------------------------------------------------

    def eval_begin(self, **attrs: Any) -> None:
        self._guard(self._eval_begin, attrs)

    def _eval_begin(self, attrs: dict[str, Any]) -> None:
        if self._eval is None:
            self._eval = open_span(self.c, "evaluate", None, **attrs)

    def eval_end(self, metrics: dict[str, Any] | None = None) -> None:
        self._guard(self._eval_end, metrics)

    def _eval_end(self, metrics: dict[str, Any] | None) -> None:
        self._marks(metrics, "summary")
        close_span(self.c, self._eval)
        self._eval = None

    def log(self, metrics: dict[str, Any] | None, **attrs: Any) -> None:
        """Marks for what the trainer logged, in the innermost open span."""
        self._guard(self._marks, metrics, "point", attrs)

    def _marks(self, metrics: dict[str, Any] | None, kind: str, attrs: dict[str, Any] | None = None) -> None:
        for name, value in (metrics or {}).items():
            number = as_number(value)
            if number is not None and name not in _NOT_MARKS:
                self.c.mark(str(name), number, kind=kind, **(attrs or {}))


def as_number(value: Any) -> float | int | None:
    """A logged value as a plain number (tensors and numpy scalars included), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if item is not None and (shape is None or tuple(shape) in ((), (1,))):
        try:
            v = item()
        except Exception:  # noqa: BLE001
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None
