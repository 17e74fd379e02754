"""Hugging Face ``transformers.Trainer``: epochs, steps, evaluation and logged metrics.

``ci.profile(frameworks=["transformers"])`` (or autodetected once ``transformers.trainer`` is
imported) adds :class:`CirronCallback` to every ``Trainer`` built afterwards and puts
``Trainer.evaluate`` in an ``evaluate`` span; by hand: ``Trainer(..., callbacks=[CirronCallback()])``.
Logged numbers (``loss``, ``learning_rate``, ``grad_norm``, ``eval_*``) become marks, the model
is registered for epoch-end snapshots.
"""

from __future__ import annotations

import functools
from typing import Any

import transformers.trainer as hf_trainer
from transformers import TrainerCallback

from cirron.integrations import SharedPatch
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
        self.spans = TrainerSpans(cirron, "transformers")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.spans.train_begin(model)

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


def _in_evaluate_span(original: Any, sessions: list[Any]) -> Any:
    @functools.wraps(original)
    def evaluate(trainer: Any, *args: Any, **kwargs: Any) -> Any:
        mine = [cb for cb in trainer.callback_handler.callbacks
                if isinstance(cb, CirronCallback) and cb.spans.c in sessions]
        for cb in mine:
            cb.spans.eval_begin()
        try:
            return original(trainer, *args, **kwargs)
        finally:
            for cb in mine:
                cb.spans.eval_end()  # nothing left to do when on_evaluate closed it
    return evaluate


class _Installed:
    def __init__(self, c: Any) -> None:
        self.c = c
        # The Trainer instantiates the classes it finds in this list: a subclass bound to ``c``.
        self.callback = type("CirronCallback", (CirronCallback,), {"bound": c})
        defaults: list[Any] = hf_trainer.DEFAULT_CALLBACKS
        defaults.append(self.callback)
        self.patch = SharedPatch.join(hf_trainer.Trainer, "evaluate", _in_evaluate_span, c)

    def uninstall(self) -> None:
        if self.callback in hf_trainer.DEFAULT_CALLBACKS:
            hf_trainer.DEFAULT_CALLBACKS.remove(self.callback)
        self.patch.leave(self.c)


def install(c: Any, installed: Any) -> _Installed:
    return _Installed(c)
