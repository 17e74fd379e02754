"""Zero-code PyTorch: spans for a plain training loop, through torch's global hooks.

* ``forward``: the top-level module call only (a module called while no other module's forward
  is running), with attr ``module=<ClassName>``. Submodules are not spans; loss modules
  (``nn.*Loss``) are not spans either: their scalar output becomes a ``loss`` mark instead,
  except inside ``ci.batches``, where the user marks the loss by hand.
* ``backward``: from the moment gradients reach a top-level module's output until the autograd
  engine has finished the pass. ``optimizer_step``: ``Optimizer.step`` of any optimizer.
* ``DataLoader`` iteration: each batch fetched is a ``data_load`` span (attr ``data_load_ns``)
  inside an implicit ``step[i]`` that ends when the optimizer step after it ends (or when the
  next batch is fetched). The first DataLoader iterated is the training loader: each new pass
  over it opens an implicit ``epoch[i]`` (closed by the next pass or by ``shutdown()``), with
  epoch-end snapshots of the models registered with ``ci.watch``/``ci.wrap``.
* Inside ``ci.epochs``/``ci.batches`` (or a trainer integration's epoch/step), no implicit
  epoch/step is made: the spans nest under the user's. Modules instrumented with ``ci.wrap``
  keep their own spans and are not counted twice.

Forward and optimizer hooks are ``torch.nn.modules.module.register_module_forward_*_hook`` and
``torch.optim.optimizer.register_optimizer_step_*_hook``; ``DataLoader.__iter__`` is replaced on
the class (once for all sessions). ``uninstall()`` removes every hook handle, and the last
session to leave puts ``DataLoader.__iter__`` back.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from typing import Any

import torch
from torch.utils.data import DataLoader

from cirron._wrap import _TORCH_WRAPPED, _TorchHooks, is_hooked
from cirron.integrations import SharedPatch, close_span, epoch_end_snapshots, open_span

#: User spans under which no implicit span of that kind is made.
_EPOCH_NAMES = ("epoch",)
_STEP_NAMES = ("batch", "step")


class TorchIntegration(_TorchHooks):
    """Global hooks for one :class:`cirron.Cirron` session (reuses ``ci.wrap``'s span logic)."""

    def __init__(self, c: Any, installed: Any) -> None:
        super().__init__(c, torch.nn.Module())
        self.installed = installed
        self._depth = threading.local()
        self._wrap_owned: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._on_cuda = False
        self._train_loader: weakref.ref[Any] | None = None
        self._epoch: Any = None
        self._epoch_index = 0
        self._epoch_trained = False
        self._step: Any = None
        self._step_index = 0
        self._loss_pending: list[Any] = []
        self._iter_patch: Any = None

    # -- install / uninstall ------------------------------------------------------------------

    def install(self) -> TorchIntegration:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self.handles.append(register_module_forward_pre_hook(self._global_pre))
        self.handles.append(register_module_forward_hook(self._global_post, always_call=True))
        self._hook_all_optimizers()
        self.installed.on_claim.append(self._yield_to_trainer)
        self._iter_patch = SharedPatch.join(DataLoader, "__iter__", _timed_iter, self)
        return self

    def uninstall(self) -> None:
        self.remove()
        self._iter_patch.leave(self)
        self._flush_loss()
        self._close_step()
        self._close_epoch()

    # -- forward (global hooks) -------------------------------------------------------------------

    def _depth_now(self) -> int:
        return getattr(self._depth, "n", 0)

    def _global_pre(self, module: Any, args: Any) -> None:
        n = self._depth_now()
        self._depth.n = n + 1
        if n or is_hooked(self.c, module):
            return
        if isinstance(module, torch.nn.modules.loss._Loss):
            self._stack().append(None)
            return
        self._on_cuda = _on_cuda(module)
        self._fwd_pre(module, args)
        scope = self._stack()[-1][0] if self._stack() else None
        if scope is not None and scope.span is not None:
            scope.span.set_attr("module", type(module).__name__)

    def _global_post(self, module: Any, args: Any, output: Any) -> None:
        n = self._depth_now() - 1
        self._depth.n = max(n, 0)
        if n or is_hooked(self.c, module):
            return
        stack = self._stack()
        if stack and stack[-1] is None:
            stack.pop()
            self._note_loss(output)
            return
        self._fwd_post(module, args, output)

    def _cuda(self) -> bool:
        return self._on_cuda

    # -- optimizer ----------------------------------------------------------------------------------

    def _owns(self, opt: Any) -> bool:
        """Every optimizer, except one that a ``ci.wrap``'ed module's hooks time already."""
        hit = self._wrap_owned.get(opt)
        if hit is None:
            hit = not any(hooks[id(self.c)]._owns(opt) for hooks in list(_TORCH_WRAPPED.values())
                          if id(self.c) in hooks)
            try:
                self._wrap_owned[opt] = hit
            except TypeError:
                pass
        return hit

    def _opt_pre(self, opt: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        self._on_cuda = _on_cuda_opt(opt)
        return super()._opt_pre(opt, args, kwargs)

    def _opt_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        super()._opt_post(opt, args, kwargs)
        self._epoch_trained = True
        self._flush_loss()
        self._close_step()

    # -- loss ---------------------------------------------------------------------------------------

    def _note_loss(self, output: Any) -> None:
        if self._inside(("batch",)):  # ci.batches: its owner marks the loss; a second series would double it
            return
        try:
            if isinstance(output, torch.Tensor) and output.numel() == 1:
                if output.is_cuda:  # reading it now would wait for the GPU: read it at the step's end
                    self._loss_pending.append(output.detach())
                else:
                    self.c.mark("loss", float(output.detach()))
        except Exception as exc:  # noqa: BLE001
            self.c._rec.note_internal_error(exc)

    def _flush_loss(self) -> None:
        pending, self._loss_pending = self._loss_pending, []
        for t in pending:
            try:
                self.c.mark("loss", float(t))
            except Exception as exc:  # noqa: BLE001
                self.c._rec.note_internal_error(exc)

    # -- DataLoader: implicit epochs and steps ------------------------------------------------------

    def _iterate(self, loader: Any, it: Any) -> Any:
        try:
            if self._train_loader is None or self._train_loader() is None:
                self._train_loader = weakref.ref(loader)
            if self._train_loader() is loader and not self._inside(_EPOCH_NAMES, "epoch"):
                self._flush_loss()
                self._close_step()
                self._close_epoch()
                self._epoch = self._open("epoch", self._epoch_index)
                self._epoch_index += 1
                self._epoch_trained = False
                self._step_index = 0
        except Exception as exc:  # noqa: BLE001
            self.c._rec.note_internal_error(exc)
        return _LoaderIter(self, it)

    def _inside(self, names: tuple[str, ...], claim: str | None = None) -> bool:
        """Whether a trainer claims ``claim`` now, or a user span of one of ``names`` is open."""
        if claim is not None and self.installed.claimed(claim):
            return True
        mine = (self._epoch, self._step)
        span = self.c._rec.current.get()
        while span is not None:
            if span.name in names and not any(span is m for m in mine):
                return True
            span = span.parent
        return False

    def _fetched(self, t0: int, t1: int, c0: int, c1: int) -> None:
        """A batch came out of the loader: an implicit step (unless the user has one) + data_load."""
        rec = self.c._rec
        parent = None
        if not self._inside(_STEP_NAMES, "step"):
            self._flush_loss()
            self._close_step()
            self._step = self._open("step", self._step_index)
            self._step_index += 1
            if self._step is not None:
                self._step.start_ns = t0
                parent = self._step
        if parent is None:
            parent = rec.current.get() or rec.root
        rec.record_closed("data_load", parent, t0, t1, c1 - c0, {"data_load_ns": t1 - t0})

    def _open(self, name: str, index: int) -> Any:
        return open_span(self.c, name, index)

    def _close_step(self) -> None:
        step, self._step = self._step, None
        if step is not None:
            close_span(self.c, step)

    def _yield_to_trainer(self) -> None:
        """A trainer starts a run and opens epochs and steps itself: end the implicit ones. Where
        nothing was trained in them (Keras reads a batch and builds the model before its callbacks
        run), they were the trainer's setup, not an epoch and a step."""
        self._flush_loss()
        if not self._epoch_trained:
            for scope, name in ((self._epoch, "setup"), (self._step, "setup_batch")):
                if scope is not None and scope.span is not None:
                    scope.span.name, scope.span.index = name, None
            if self._epoch is not None:
                self._epoch_index -= 1
        self._close_step()
        epoch, self._epoch = self._epoch, None
        close_span(self.c, epoch)

    def _close_epoch(self) -> None:
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        epoch_end_snapshots(self.c, epoch)
        close_span(self.c, epoch)


def _timed_iter(original: Any, integrations: list[TorchIntegration]) -> Any:
    """``DataLoader.__iter__`` while integrations run: each times the fetches for its session."""

    @functools.wraps(original)
    def __iter__(loader: Any) -> Any:
        it = original(loader)
        for integration in list(integrations):
            it = integration._iterate(loader, it)
        return it

    return __iter__


class _LoaderIter:
    """The iterator ``DataLoader.__iter__`` returns while the integration runs: times each fetch."""

    def __init__(self, integration: TorchIntegration, it: Any) -> None:
        self._integration = weakref.ref(integration)
        self._it = it
        #: Set by ``ci.batches``, which records the fetches itself.
        self.cirron_quiet = False

    def __iter__(self) -> _LoaderIter:
        return self

    def __next__(self) -> Any:
        t0, c0 = time.time_ns(), time.thread_time_ns()
        try:
            item = next(self._it)
        except StopIteration:
            me = self._integration()
            if me is not None and not self.cirron_quiet:
                me._flush_loss()
                me._close_step()
            raise
        if not self.cirron_quiet:
            me = self._integration()
            if me is not None:
                try:
                    me._fetched(t0, time.time_ns(), c0, time.thread_time_ns())
                except Exception as exc:  # noqa: BLE001
                    me.c._rec.note_internal_error(exc)
        return item

    def __len__(self) -> int:
        return len(self._it)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._it, name)


def _on_cuda(module: Any) -> bool:
    for p in module.parameters():
        return bool(p.is_cuda)
    return False


def _on_cuda_opt(opt: Any) -> bool:
    for group in opt.param_groups:
        for p in group["params"]:
            return bool(p.is_cuda)
    return False


def install(c: Any, installed: Any) -> TorchIntegration:
    return TorchIntegration(c, installed).install()
