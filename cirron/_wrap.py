"""``ci.wrap(obj)``: instrument a model or a callable and return it.

What gets which spans:

* **torch ``nn.Module``**: ``forward`` (forward pre-hook / forward hook, ``always_call`` so a
  raising forward still closes its span), ``backward`` (a pre-hook on the output's ``grad_fn``
  opens it when gradients reach the model; an autograd-engine final callback closes it when the
  whole backward pass is done) and ``optimizer_step`` (step pre/post hooks on the optimizer passed
  as ``optimizer=``, or, without one, global optimizer hooks that pick any optimizer holding the
  model's parameters). Spans nest under whatever span is current when ``forward`` runs, typically
  ``batch[i]``. The module is registered for epoch-end snapshots. On CUDA, ``gpu_ns`` comes from
  CUDA events recorded around the work and resolved off the training thread, and
  ``memory_peak_bytes`` from the allocator (see :mod:`cirron._device`); on CPU both stay null.
* **scikit-learn estimators and pipelines**: ``fit``, ``predict``, ``transform``, ``fit_transform``,
  ``predict_proba``, ``score``, … each in a span with ``estimator=<ClassName>``; pipeline, union and
  column-transformer steps are instrumented too, so their calls nest under the pipeline's. A call
  that an estimator makes to its own methods (``fit_transform`` → ``fit``) is not a separate span.
  The instance's class is swapped for a same-named subclass whose methods are traced; it pickles
  as the original class, and ``hasattr`` answers exactly as before.
* **onnxruntime ``InferenceSession``**: ``run``.
* **a mapping of name → numpy array / torch tensor**: registered for snapshots, returned as is.
* **any other callable**: a wrapper that runs it inside a span named after it (``name=`` to choose).

``framework`` in cirron.yaml (or ``framework=`` here) narrows detection to that framework.
"""

from __future__ import annotations

import contextvars
import copyreg
import functools
import inspect
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from cirron._errors import CirronWrapError
from cirron._project import FRAMEWORKS

__all__ = ["wrap"]

_ROOTS = {"torch": "pytorch", "sklearn": "sklearn", "onnxruntime": "onnx", "tensorflow": "tensorflow",
          "keras": "tensorflow"}

SKLEARN_METHODS = (
    "fit", "partial_fit", "predict", "predict_proba", "predict_log_proba", "decision_function",
    "transform", "fit_transform", "fit_predict", "inverse_transform", "score", "score_samples",
)


def _framework_of(obj: Any) -> str | None:
    for klass in type(obj).__mro__:
        root = (getattr(klass, "__module__", "") or "").split(".")[0]
        if root in _ROOTS:
            return _ROOTS[root]
    return None


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_sklearn_estimator(obj: Any) -> bool:
    base = sys.modules.get("sklearn.base")
    return base is not None and isinstance(obj, base.BaseEstimator)


def _is_onnx_session(obj: Any) -> bool:
    ort = sys.modules.get("onnxruntime")
    cls = getattr(ort, "InferenceSession", None) if ort is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def _snapshots(c: Any) -> Any:
    from cirron.snapshots import manager

    return manager(c)


def _note(c: Any, exc: BaseException) -> None:
    rec = getattr(c, "_rec", None)
    if rec is not None:
        rec.note_internal_error(exc)


def wrap(c: Any, obj: Any, *, name: str | None = None, optimizer: Any = None, framework: str | None = None,
         snapshot: bool = True, **unknown: Any) -> Any:
    """See the module docstring. Raises :class:`CirronWrapError` for objects it cannot instrument."""
    if unknown:
        raise CirronWrapError(f"ci.wrap() got unknown option(s): {', '.join(sorted(unknown))}")
    cfg = getattr(c, "config", None) or c._config
    fw = framework or getattr(cfg, "framework", None)
    if fw is not None and fw not in FRAMEWORKS:
        raise CirronWrapError(f"unknown framework {fw!r}; expected one of {', '.join(FRAMEWORKS)}")
    obj_fw = _framework_of(obj)

    def allowed(kind: str) -> bool:
        return fw is None or fw == kind

    if allowed("pytorch") and _is_torch_module(obj):
        _TorchHooks.attach(c, obj, optimizer=optimizer)
        if snapshot:
            _snapshots(c).register(obj, name)
        return obj
    if allowed("sklearn") and _is_sklearn_estimator(obj):
        _instrument_sklearn(c, obj)
        return obj
    if allowed("onnx") and _is_onnx_session(obj):
        return _instrument_onnx(c, obj, name)
    if fw is not None and obj_fw is not None and obj_fw != fw:
        raise CirronWrapError(
            f"ci.wrap() got a {obj_fw} object ({type(obj).__name__}) but the framework is set to {fw!r} "
            f"(cirron.yaml 'framework' or framework=); pass framework={obj_fw!r} to instrument it"
        )
    if isinstance(obj, Mapping):
        _snapshots(c).register(obj, name)
        return obj
    if inspect.isclass(obj):
        raise CirronWrapError(
            f"ci.wrap() got the class {obj.__name__}, not an instance; wrap the object you built from it"
        )
    if callable(obj):
        span_name = name or getattr(obj, "__name__", None) or type(obj).__name__
        return c.scope(str(span_name))(obj)
    raise CirronWrapError(
        f"ci.wrap() cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: expected a torch "
        "nn.Module, a scikit-learn estimator or Pipeline, an onnxruntime InferenceSession, a dict of "
        "name -> numpy array (for snapshots) or a callable"
    )


# ============================================================================================ torch


def _device_begin(c: Any, on_device: bool) -> Any:
    """Start measuring a span on the device (CUDA only): ``(tracker, entry)``, else None."""
    if not on_device:
        return None
    from cirron._device import tracker_for

    tracker = tracker_for(c)
    return (tracker, tracker.begin()) if tracker is not None else None


def _close_scope(scope: Any, device: Any, exc: BaseException | None) -> None:
    """Close ``scope``; measured on the device, with its peak memory and (later) its GPU time."""
    if device is None:
        scope.__exit__(type(exc) if exc else None, exc, None)
        return
    tracker, entry = device
    tracker.end(scope, entry, exc)


_TORCH_WRAPPED: weakref.WeakKeyDictionary[Any, dict[int, _TorchHooks]] = weakref.WeakKeyDictionary()


def _first_tensor_with_grad_fn(out: Any, depth: int = 0) -> Any:
    torch = sys.modules["torch"]
    if isinstance(out, torch.Tensor):
        return out if out.grad_fn is not None else None
    if depth > 3:
        return None
    if isinstance(out, Mapping):
        items = list(out.values())
    elif isinstance(out, (list, tuple)):
        items = list(out)
    else:
        return None
    for v in items:
        t = _first_tensor_with_grad_fn(v, depth + 1)
        if t is not None:
            return t
    return None


def _graph_task_id(torch: Any) -> int | None:
    fn = getattr(torch._C, "_current_graph_task_id", None)
    try:
        return fn() if fn is not None else None
    except Exception:  # noqa: BLE001
        return None


class _TorchHooks:
    """The hooks one Cirron instance put on one module."""

    def __init__(self, c: Any, module: Any) -> None:
        self.c = c
        self._local = threading.local()
        self._first_param = next(iter(module.parameters()), None)
        self._param_ids = {id(p) for p in module.parameters()}
        self._bw: tuple[Any, contextvars.Context, Any] | None = None
        self._bw_lock = threading.Lock()
        self._bw_task: int | None = None
        self._opt_open: list[tuple[Any, Any]] = []
        self._opt_match: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self.handles: list[Any] = []

    @classmethod
    def attach(cls, c: Any, module: Any, optimizer: Any = None) -> _TorchHooks:
        per_module = _TORCH_WRAPPED.setdefault(module, {})
        hooks = per_module.get(id(c))
        if hooks is None:
            hooks = per_module[id(c)] = cls(c, module)
            hooks.handles.append(module.register_forward_pre_hook(hooks._fwd_pre))
            hooks.handles.append(module.register_forward_hook(hooks._fwd_post, always_call=True))
            if optimizer is None:
                hooks._hook_all_optimizers()
        if optimizer is not None:
            hooks._hook_optimizer(optimizer)
        return hooks

    def _cuda(self) -> bool:
        p = self._first_param
        return p is not None and p.is_cuda

    def _stack(self) -> list[Any]:
        try:
            return self._local.stack
        except AttributeError:
            self._local.stack = []
            return self._local.stack

    # -- forward ---------------------------------------------------------------------------------

    def _fwd_pre(self, module: Any, args: Any) -> None:
        try:
            # A forward pass reads the parameters and writes neither them nor their .grad, so
            # an in-place snapshot still being read need not be settled here: the backward and
            # optimizer-step hooks do it. The worker gets the whole forward pass to finish.
            _wait_snapshots(self.c, settle=False)
            scope = self.c.scope("forward")
            scope.__enter__()
            self._stack().append((scope, _device_begin(self.c, self._cuda())))
        except Exception as exc:  # noqa: BLE001 - never break the forward pass
            _note(self.c, exc)

    def _fwd_post(self, module: Any, args: Any, output: Any) -> None:
        try:
            stack = self._stack()
            if not stack:
                return
            scope, device = stack.pop()
            exc = sys.exc_info()[1]  # always_call: set when forward raised
            _close_scope(scope, device, exc)
            if exc is None and output is not None:
                torch = sys.modules["torch"]
                if torch.is_grad_enabled():
                    t = _first_tensor_with_grad_fn(output)
                    if t is not None:
                        ctx = contextvars.copy_context()
                        t.grad_fn.register_prehook(functools.partial(self._bw_start, ctx))
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)

    # -- backward --------------------------------------------------------------------------------

    def _bw_start(self, ctx: contextvars.Context, grad_outputs: Any) -> None:
        try:
            _wait_snapshots(self.c)
            torch = sys.modules["torch"]
            task = _graph_task_id(torch)
            stale = None
            with self._bw_lock:
                if self._bw is not None:
                    if self._bw_task == task:
                        return  # already timing this backward pass
                    # the previous pass never reached its final callback (it raised)
                    stale, self._bw = self._bw, None
            if stale is not None:
                scope, sctx, _ = stale
                if scope.span is not None:
                    scope.span.set_attr("error", "backward pass did not complete")
                sctx.run(scope.__exit__, None, None, None)
            with self._bw_lock:
                scope = self.c.scope("backward")
                ctx.run(scope.__enter__)
                self._bw = (scope, ctx, _device_begin(self.c, self._cuda()))
                self._bw_task = task
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._bw_end)
            except Exception:
                self._bw_end()
                raise
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)
        return

    def _bw_end(self) -> None:
        with self._bw_lock:
            open_, self._bw = self._bw, None
        if open_ is None:
            return
        scope, ctx, device = open_
        try:
            ctx.run(_close_scope, scope, device, None)
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)

    # -- optimizer -------------------------------------------------------------------------------

    def _hook_optimizer(self, optimizer: Any) -> None:
        if not hasattr(optimizer, "register_step_pre_hook"):
            raise CirronWrapError(f"optimizer= got {type(optimizer).__name__}, not a torch.optim.Optimizer")
        self._opt_match[optimizer] = True
        self.handles.append(optimizer.register_step_pre_hook(self._opt_pre))
        self.handles.append(optimizer.register_step_post_hook(self._opt_post))

    def _hook_all_optimizers(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        ref = weakref.ref(self)

        def pre(opt: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
            h = ref()
            if h is not None and h._owns(opt):
                return h._opt_pre(opt, args, kwargs)
            return None

        def post(opt: Any, args: Any, kwargs: Any) -> None:
            h = ref()
            if h is not None and h._owns(opt):
                h._opt_post(opt, args, kwargs)

        self.handles.append(register_optimizer_step_pre_hook(pre))
        self.handles.append(register_optimizer_step_post_hook(post))

    def _owns(self, opt: Any) -> bool:
        try:
            hit = self._opt_match.get(opt)
            if hit is None:
                hit = any(id(p) in self._param_ids for g in opt.param_groups for p in g["params"])
                self._opt_match[opt] = hit
            return hit
        except Exception:  # noqa: BLE001
            return False

    def _opt_pre(self, opt: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """Open ``optimizer_step``. A step given a closure (Lightning, LBFGS) runs the forward and
        backward passes inside ``step()``: the span then opens when the closure has returned, so
        those passes stay siblings of the update instead of children (the hook hands torch the
        timed closure in place of the original)."""
        try:
            _wait_snapshots(self.c)
            while self._opt_open:  # a previous step raised before its post hook ran
                scope, _ = self._opt_open.pop()
                if scope.span is not None:
                    scope.span.set_attr("error", "optimizer step raised")
                scope.__exit__(None, None, None)
            closure = kwargs.get("closure") if kwargs else None
            in_args = closure is None and bool(args) and callable(args[0])
            if in_args:
                closure = args[0]
            if closure is None:
                self._open_opt_span()
                return None

            def timed_closure(*a: Any, **k: Any) -> Any:
                result = closure(*a, **k)
                if not self._opt_open:  # LBFGS calls it several times: one span
                    self._open_opt_span()
                return result

            if in_args:
                return (timed_closure, *args[1:]), kwargs
            return args, dict(kwargs, closure=timed_closure)
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)
        return None

    def _open_opt_span(self) -> None:
        try:
            scope = self.c.scope("optimizer_step")
            scope.__enter__()
            self._opt_open.append((scope, _device_begin(self.c, self._cuda())))
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)

    def _opt_post(self, opt: Any, args: Any, kwargs: Any) -> None:
        try:
            if not self._opt_open:
                return
            scope, device = self._opt_open.pop()
            _close_scope(scope, device, None)
        except Exception as exc:  # noqa: BLE001
            _note(self.c, exc)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def is_hooked(c: Any, module: Any) -> bool:
    """Whether ``c``'s forward/backward/step hooks are on ``module``."""
    try:
        return id(c) in _TORCH_WRAPPED.get(module, {})
    except TypeError:
        return False


def _wait_snapshots(c: Any, settle: bool = True) -> None:
    snaps = c._snapshots
    if snaps is not None:
        if settle and snaps._guard is not None:
            snaps.wait_pending()
        if snaps._unwarmed:
            snaps.warm_up()


# ========================================================================================== sklearn

#: id of the estimator whose traced method is innermost in this context
_ACTIVE_ESTIMATOR: contextvars.ContextVar[int | None] = contextvars.ContextVar("cirron_sklearn_active", default=None)
_SK_CLASSES: dict[tuple[type, int], type] = {}
_SK_LOCK = threading.Lock()


def _sk_reduce_ex(self: Any, protocol: int) -> Any:
    base = type(self)._cirron_base
    state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__
    return (copyreg._reconstructor, (base, object, None), state)


class _TracedMethod:
    """A descriptor that looks the method up on the original class (so ``available_if`` still
    decides ``hasattr``) and runs it inside a span."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner = owner

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        sub = self.owner
        if obj is None:
            return getattr(super(sub, objtype), self.name)
        method = getattr(super(sub, obj), self.name)  # AttributeError → hasattr() is False, as before
        c = sub._cirron_instance
        name = self.name
        est_name = sub._cirron_base.__name__

        @functools.wraps(method)
        def traced(*args: Any, **kwargs: Any) -> Any:
            if _ACTIVE_ESTIMATOR.get() == id(obj):
                return method(*args, **kwargs)
            token = _ACTIVE_ESTIMATOR.set(id(obj))
            try:
                with c.scope(name, estimator=est_name):
                    return method(*args, **kwargs)
            finally:
                _ACTIVE_ESTIMATOR.reset(token)

        return traced


def _sk_subclass(c: Any, cls: type) -> type:
    key = (cls, id(c))
    with _SK_LOCK:
        sub = _SK_CLASSES.get(key)
        if sub is None:
            ns: dict[str, Any] = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "__reduce_ex__": _sk_reduce_ex,
                "_cirron_base": cls,
                "_cirron_instance": c,
            }
            for m in SKLEARN_METHODS:
                if hasattr(cls, m):
                    ns[m] = _TracedMethod(m)
            sub = type(cls.__name__, (cls,), ns)
            # __init_subclass__ hooks (sklearn's set_output wrapper) may have replaced our
            # descriptors on the new class; put them back, the parent's methods stay wrapped.
            for m in SKLEARN_METHODS:
                if m in ns:
                    desc = _TracedMethod(m)
                    desc.owner = sub
                    type.__setattr__(sub, m, desc)
            _SK_CLASSES[key] = sub
            _trace_in_workers(sub)
    return sub


#: The modules whose picklers carry objects to worker processes (and only there).
_WORKER_PICKLERS = ("multiprocessing.reduction", "joblib.externals.loky.backend.reduction", "loky.backend.reduction")


def _trace_in_workers(sub: type) -> None:
    """A traced estimator sent to a worker process (a GridSearchCV fit under joblib, a Pool task)
    is traced there too. Only the picklers of multiprocessing and loky learn this: a model saved
    with ``pickle``/``joblib.dump`` still pickles as its original class."""
    for name in _WORKER_PICKLERS:
        module = sys.modules.get(name)
        if module is None and name == "multiprocessing.reduction":
            import multiprocessing.reduction as module
        if module is None:
            continue
        try:
            if hasattr(module, "ForkingPickler"):
                module.ForkingPickler.register(sub, _sk_reduce_for_worker)
            else:
                module.register(sub, _sk_reduce_for_worker)
        except Exception:  # noqa: BLE001 - the estimator is still traced here
            pass


def _sk_reduce_for_worker(obj: Any) -> Any:
    sub = type(obj)
    base = sub._cirron_base
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else obj.__dict__
    import cirron

    if sub._cirron_instance is not cirron.default():
        return (copyreg._reconstructor, (base, object, None), state)
    return (_sk_rebuild_in_worker, (base, state))


def _sk_rebuild_in_worker(base: type, state: Any) -> Any:
    """In the worker: the estimator as it was, traced by this process's default instance (which
    records into the parent's session, see :mod:`cirron._workers`)."""
    import cirron

    obj = copyreg._reconstructor(base, object, None)
    if hasattr(obj, "__setstate__"):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    _instrument_sklearn(cirron.default(), obj)
    return obj


def _instrument_sklearn(c: Any, est: Any, _depth: int = 0) -> None:
    if _depth > 16 or not _is_sklearn_estimator(est):
        return
    cls = type(est)
    if getattr(cls, "_cirron_instance", None) is not c:
        base = getattr(cls, "_cirron_base", cls)
        est.__class__ = _sk_subclass(c, base)
    for attr in ("steps", "transformer_list", "transformers"):
        for entry in getattr(est, attr, None) or ():
            if isinstance(entry, tuple) and len(entry) >= 2:
                _instrument_sklearn(c, entry[1], _depth + 1)
    inner = est.__dict__.get("estimator")
    if inner is not None:
        _instrument_sklearn(c, inner, _depth + 1)


# ============================================================================================= onnx


def _instrument_onnx(c: Any, session: Any, name: str | None) -> Any:
    run = session.run
    if getattr(run, "_cirron_traced", False):
        return session
    attrs = {"model": name} if name else {}

    @functools.wraps(run)
    def traced_run(*args: Any, **kwargs: Any) -> Any:
        with c.scope("run", **attrs):
            return run(*args, **kwargs)

    traced_run._cirron_traced = True  # type: ignore[attr-defined]
    session.run = traced_run
    return session
