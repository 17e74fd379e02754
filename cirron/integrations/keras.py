"""Keras 3: epochs, steps, evaluation and logged metrics; on the torch backend also the
``forward``, ``backward`` and ``optimizer_step`` of each training step.

``ci.profile(frameworks=["keras"])`` (or autodetected once ``keras`` is imported) adds
:class:`CirronCallback` to every ``Model.fit``/``evaluate`` call; by hand:
``model.fit(..., callbacks=[CirronCallback()])``. With ``KERAS_BACKEND=torch`` (no TensorFlow
needed) Keras models are torch modules, so the torch integration (installed with this one)
times their forward and backward passes; the callback adds ``optimizer_step`` around Keras's own
optimizer update by wrapping that optimizer's ``apply`` for the length of ``fit``.
Keras logs the epoch's running mean as ``loss`` after each batch; those are the ``loss`` marks.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import keras

from cirron.integrations import SharedPatch, current_installed
from cirron.integrations._trainer import TrainerSpans


class CirronCallback(keras.callbacks.Callback):
    """A Keras ``Callback`` recording into ``cirron`` (the default instance unless given)."""

    def __init__(self, cirron: Any = None) -> None:
        super().__init__()
        if cirron is None:
            import cirron as ci

            cirron = ci.default()
        self.c = cirron
        self.spans: TrainerSpans = TrainerSpans(cirron, "keras")
        self._steps: _OptimizerSpans | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        self.spans.train_begin(self.model if _is_torch_module(self.model) else None)
        if keras.backend.backend() == "torch":
            self._steps = _OptimizerSpans.attach(self.c, self.model)

    def on_train_end(self, logs: Any = None) -> None:
        if self._steps is not None:
            self._steps.detach()
            self._steps = None
        self.spans.train_end()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.spans.epoch_begin(epoch)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.spans.epoch_end(logs)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.spans.step_begin(batch)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.spans.step_end(logs)

    def on_test_begin(self, logs: Any = None) -> None:
        self.spans.eval_begin()

    def on_test_end(self, logs: Any = None) -> None:
        self.spans.eval_end(logs)


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


class _OptimizerSpans:
    """``optimizer_step`` around Keras's ``optimizer.apply`` (not a torch optimizer, so torch's
    optimizer hooks do not see it) for the length of one ``fit``."""

    def __init__(self, c: Any, optimizer: Any) -> None:
        self.optimizer = optimizer
        original = optimizer.apply

        @functools.wraps(original)
        def apply(*args: Any, **kwargs: Any) -> Any:
            with c.scope("optimizer_step"):
                return original(*args, **kwargs)

        optimizer.apply = apply

    @classmethod
    def attach(cls, c: Any, model: Any) -> _OptimizerSpans | None:
        optimizer = getattr(model, "optimizer", None)
        return cls(c, optimizer) if callable(getattr(optimizer, "apply", None)) else None

    def detach(self) -> None:
        self.optimizer.__dict__.pop("apply", None)  # the class's method shows through again


class _Installed:
    """``fit``/``evaluate`` replaced on ``keras.Model`` itself (they live on a backend base class)."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.patches: list[SharedPatch] = [SharedPatch.join(keras.Model, name, _with_callback, c)
                                           for name in ("fit", "evaluate")]

    def uninstall(self) -> None:
        for patch in self.patches:
            patch.leave(self.c)


#: Where ``callbacks`` sits among the positional arguments after ``x``.
_CALLBACKS_AT = {"fit": 5, "evaluate": 6}


def _with_callback(original: Any, sessions: list[Any]) -> Any:
    at = _CALLBACKS_AT[original.__name__]

    @functools.wraps(original)
    def method(model: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = kwargs.get("callbacks")
        live = list(sessions)
        # positional callbacks, or fit's own CallbackList handed to evaluate: leave them alone
        if len(args) <= at and not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks or [])
            for c in live:
                if not any(isinstance(cb, CirronCallback) and cb.c is c for cb in callbacks):
                    callbacks.append(CirronCallback(c))
            kwargs["callbacks"] = callbacks
        claimed = [current_installed(c) for c in live]
        for installed in claimed:
            installed.claim("epoch", "step")  # fit peeks at a batch before any callback runs
        try:
            return original(model, *args, **kwargs)
        finally:
            for installed in claimed:
                installed.release("epoch", "step")
    return method


def install(c: Any, installed: Any) -> _Installed:
    return _Installed(c)

