"""Lightning (``lightning.pytorch.Trainer``): epochs, steps, validation and logged metrics.

``ci.profile(frameworks=["lightning"])`` (or autodetected once ``lightning`` is imported) adds
:class:`CirronCallback` to every ``Trainer`` built afterwards; by hand:
``Trainer(callbacks=[CirronCallback()])``. Each training batch is a ``step`` with the ``loss`` its
``training_step`` returned as a mark; validation runs are ``evaluate`` spans; what the module
logged (``trainer.callback_metrics``) becomes summary marks at each epoch and validation end.
"""

from __future__ import annotations

import functools
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

from cirron.integrations import SharedPatch
from cirron.integrations._trainer import TrainerSpans


class CirronCallback(Callback):
    """A Lightning ``Callback`` recording into ``cirron`` (the default instance unless given)."""

    def __init__(self, cirron: Any = None) -> None:
        if cirron is None:
            import cirron as ci

            cirron = ci.default()
        self.spans: TrainerSpans = TrainerSpans(cirron, "lightning")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.spans.train_begin(pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.spans.train_end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.spans.train_end(error=f"{type(exception).__name__}: {exception}")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.spans.epoch_begin(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.spans.epoch_end(dict(trainer.callback_metrics))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.spans.step_begin(batch_idx)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.spans.step_end({"loss": loss} if loss is not None else None)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.spans.eval_begin(sanity_check=bool(trainer.sanity_checking))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = {k: v for k, v in trainer.callback_metrics.items() if not trainer.sanity_checking}
        self.spans.eval_end(metrics)


def _with_callbacks(original: Any, sessions: list[Any]) -> Any:
    @functools.wraps(original)
    def __init__(trainer: Any, *args: Any, **kwargs: Any) -> None:
        original(trainer, *args, **kwargs)
        for c in list(sessions):
            if not any(isinstance(cb, CirronCallback) and cb.spans.c is c for cb in trainer.callbacks):
                trainer.callbacks.append(CirronCallback(c))

    return __init__


class _Installed:
    def __init__(self, c: Any) -> None:
        self.c = c
        self.patch: SharedPatch = SharedPatch.join(Trainer, "__init__", _with_callbacks, c)

    def uninstall(self) -> None:
        self.patch.leave(self.c)


def install(c: Any, installed: Any) -> _Installed:
    return _Installed(c)
