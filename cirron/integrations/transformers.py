"""Hugging Face ``transformers.Trainer``: epochs, steps, evaluation and logged metrics.

``ci.profile(frameworks=["transformers"])`` (or autodetected once ``transformers.trainer`` is
imported) adds :class:`CirronCallback` to every ``Trainer`` built afterwards; by hand:
``Trainer(..., callbacks=[CirronCallback()])``. Either way the callback puts that trainer's
``evaluate`` in an ``evaluate`` span (no callback hook runs before an evaluation starts).
Logged numbers (``loss``, ``learning_rate``, ``grad_norm``, ``eval_*``) become marks, the model
is registered for epoch-end snapshots.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import transformers.trainer as hf_trainer
from transformers import TrainerCallback

from cirron.integrations._trainer import TrainerSpans


class CirronCallback(TrainerCallback):
    """A ``TrainerCallback`` recording into ``cirron`` (the default instance unless given)."""

    #: The instance to record into when none is given (set on the per-session subclass).
    bound: Any = None

    def __init__(self, cirron: Any = None) -> None:
        cirron = cirron or type(self).bound
        if cirron is None:
            import cirron as ci

            cirron = ci.default()
        self.spans: TrainerSpans = TrainerSpans(cirron, "transformers")

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._time_evaluate()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._time_evaluate()  # a callback added after the Trainer was built saw no on_init_end
        self.spans.train_begin(model)

    def _time_evaluate(self) -> None:
        """Put the calling ``Trainer``'s ``evaluate`` in an ``evaluate`` span, once per trainer.
        Callback hooks are not given the trainer: it is the ``self`` of a frame a few calls up."""
        try:
            trainer = _calling_trainer()
            if trainer is not None and getattr(trainer.evaluate, "_cirron_spans", None) is not self.spans:
                trainer.evaluate = _in_evaluate_span(trainer.evaluate, self.spans)
        except Exception as exc:  # noqa: BLE001 - a callback never breaks the user's training
            self.spans.c._rec.note_internal_error(exc)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.spans.train_end()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.spans.epoch_begin(int(state.epoch or 0))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.spans.epoch_end()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.spans.step_begin(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.spans.step_end()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self.spans.eval_end(metrics)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and not any(k.startswith("eval_") for k in logs):  # eval metrics came with on_evaluate
            self.spans.log(logs, step=state.global_step)


def _calling_trainer() -> Any:
    frame: Any = sys._getframe(2)
    for _ in range(8):  # the callback's hook ← CallbackHandler.call_event ← on_* ← the Trainer
        if frame is None:
            return None
        me = frame.f_locals.get("self")
        if isinstance(me, hf_trainer.Trainer):
            return me
        frame = frame.f_back
    return None


def _in_evaluate_span(original: Any, spans: TrainerSpans) -> Any:
    @functools.wraps(original)
    def evaluate(*args: Any, **kwargs: Any) -> Any:
        spans.eval_begin()
        try:
            return original(*args, **kwargs)
        finally:
            spans.eval_end()  # nothing left to do when on_evaluate closed it
    evaluate._cirron_spans = spans  # type: ignore[attr-defined]
    return evaluate


class _Installed:
    def __init__(self, c: Any) -> None:
        self.c = c
        # The Trainer instantiates the classes it finds in this list: a subclass bound to ``c``.
        self.callback: type[Any] = type("CirronCallback", (CirronCallback,), {"bound": c})
        defaults: list[Any] = hf_trainer.DEFAULT_CALLBACKS
        defaults.append(self.callback)

    def uninstall(self) -> None:
        if self.callback in hf_trainer.DEFAULT_CALLBACKS:
            hf_trainer.DEFAULT_CALLBACKS.remove(self.callback)


def install(c: Any, installed: Any) -> _Installed:
    return _Installed(c)
