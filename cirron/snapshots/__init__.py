"""Weight and gradient snapshots taken at epoch ends.

Flow (one epoch end)::

    training thread                          snapshot worker (one thread, "cirron-snapshot")
    ───────────────                          ───────────────────────────────────────────────
    on_epoch_end(span)
      ├─ stats-only epoch of a hooked   ──►  chunked reductions on the live tensors (stats.py)
      │  module: hand over live tensors      under a lock; the module's hooks call
      │  (no copy)                           wait_pending() before anything can change them
      └─ otherwise: copy each tensor    ──►  stats, then blobs →
         once into a reusable staging        .cirron/snapshots/<span_id>/{weights,gradients}.safetensors
         buffer
                                             records → Cirron._emit_snapshot() → next spool batch
    Cirron._offload(join)  ─────────────►   the flush that writes the next batch (and shutdown)
                                             waits for the worker first

Modes (``snapshots=`` / cirron.yaml ``profiling.snapshots``):

* ``stats``: inline stats only, every epoch.
* ``sampled``: stats every epoch; blobs on the first epoch and then every N-th one, where
  ``N = round(1 / sample_rate)`` for ``0 < sample_rate < 1`` and ``N = int(sample_rate)`` for
  ``sample_rate >= 1`` (``sample_rate <= 0``: the first epoch only). The epoch number is the epoch
  span's ``index``.
* ``full``: stats and blobs every epoch.
* ``off``: nothing.

Sources are torch modules (``named_parameters()``; ``<name>.grad`` with role ``gradient`` where a
gradient exists), objects with a ``named_parameters()`` method, and mappings of name → numpy array
(or torch tensor), read again at every epoch end so in-place updates are seen.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cirron._redact import install_log_filter
from cirron._schema import strict_json
from cirron.spool.paths import snapshot_span_dir

__all__ = ["SnapshotManager", "blob_every", "dtype_name", "manager", "snapshot"]

log: logging.Logger = install_log_filter(logging.getLogger("cirron"))

MODES = ("off", "stats", "sampled", "full")
WEIGHTS_FILE = "weights.safetensors"
GRADIENTS_FILE = "gradients.safetensors"
#: Snapshot jobs allowed to be pending at once; past this the next one runs on the caller's thread
#: (back-pressure instead of unbounded staging memory).
MAX_INFLIGHT = 2


def blob_every(mode: str, sample_rate: float | None) -> int | None:
    """Blob period in epochs for ``mode``: 1 for ``full``, N for ``sampled``, ``None`` for no blobs.

    ``0`` means "the first epoch only".
    """
    if mode == "full":
        return 1
    if mode != "sampled":
        return None
    rate = 0.0 if sample_rate is None else float(sample_rate)
    if rate != rate or rate <= 0:
        return 0
    if rate < 1:
        return max(1, round(1 / rate))
    return max(1, int(rate))


def wants_blob(mode: str, sample_rate: float | None, epoch: int) -> bool:
    every = blob_every(mode, sample_rate)
    if every is None:
        return False
    if every == 0:
        return epoch == 0
    return epoch % every == 0


# ----------------------------------------------------------------------------------------- dtypes

_TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}
_NUMPY_DTYPES = {
    ("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16",
    ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16", ("i", 1): "I8",
    ("u", 8): "U64", ("u", 4): "U32", ("u", 2): "U16", ("u", 1): "U8", ("b", 1): "BOOL",
}


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: Any) -> str | None:
    """The safetensors dtype of a numpy array or torch tensor, ``None`` if it has none."""
    if _is_torch_tensor(x):
        return _TORCH_DTYPES.get(str(x.dtype).removeprefix("torch."))
    dt = getattr(x, "dtype", None)
    if dt is None:
        return None
    name = getattr(dt, "name", "")
    if name == "bfloat16":  # ml_dtypes
        return "BF16"
    return _NUMPY_DTYPES.get((getattr(dt, "kind", ""), getattr(dt, "itemsize", 0)))


# ----------------------------------------------------------------------------------------- staging


@dataclass
class _Item:
    name: str
    role: str  # "weight" | "gradient"
    dtype: str
    shape: list[int]
    data: Any  # private copy: a torch view into a staging buffer, or a numpy array
    is_torch: bool
    #: ``data`` is the user's live tensor (in-place snapshot), not a copy
    live: bool = False
    finished: bool = False
    version: int = 0


class _InPlaceJob:
    """Shared state of a snapshot that reads live tensors (see ``SnapshotManager.wait_pending``)."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.releases: list[Callable[[], None]] = []


class _TorchStaging:
    """Reusable flat staging buffers, one per (dtype, device kind).

    Reusing them matters: copying into warm memory costs about one read pass over the weights,
    while a fresh allocation of the same size costs several times that in page faults.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[Any, bool], list[Any]] = {}
        self._lock = threading.Lock()

    def acquire(self, dtype: Any, numel: int, pinned: bool) -> Any:
        import torch

        key = (dtype, pinned)
        with self._lock:
            free = self._free.get(key, [])
            fits = [i for i, buf in enumerate(free) if buf.numel() >= numel]
            if fits:  # the smallest that fits, so a small one-off does not take the epoch buffer
                return free.pop(min(fits, key=lambda i: free[i].numel()))
        return torch.empty(numel, dtype=dtype, pin_memory=pinned)

    def prefault(self, dtype: Any, numel: int, pinned: bool) -> None:
        """Allocate and touch a buffer now (on the worker) so the first epoch end copies into warm
        memory instead of paying the page faults on the training thread."""
        buf = self.acquire(dtype, numel, pinned)
        buf.zero_()
        self.release(buf, pinned)

    def release(self, buf: Any, pinned: bool) -> None:
        with self._lock:
            free = self._free.setdefault((buf.dtype, pinned), [])
            free.append(buf)
            del free[:-2]  # keep at most two per kind

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def _copy_torch(
    entries: list[tuple[str, str, Any]], staging: _TorchStaging
) -> tuple[list[_Item], list[Any], Callable[[], None]]:
    """Copy torch tensors into staging buffers with one copy each. Returns items, CUDA events to
    wait on before reading, and a release callback."""
    import torch

    groups: dict[tuple[Any, bool], list[tuple[str, str, Any]]] = {}
    for name, role, t in entries:
        groups.setdefault((t.dtype, t.device.type == "cuda"), []).append((name, role, t))
    items: list[_Item] = []
    events: list[Any] = []
    held: list[tuple[Any, bool]] = []
    with torch.no_grad():
        for (dtype, on_cuda), group in groups.items():
            total = sum(t.numel() for _, _, t in group)
            buf = staging.acquire(dtype, total, pinned=on_cuda)
            held.append((buf, on_cuda))
            dsts, srcs = [], []
            off = 0
            for name, role, t in group:
                n = t.numel()
                view = buf[off : off + n]
                dsts.append(view.view(t.shape))
                srcs.append(t.detach())
                items.append(_Item(name, role, _TORCH_DTYPES[str(dtype).removeprefix("torch.")],
                                   list(t.shape), view, True))
                off += n
            if on_cuda:
                for d, s in zip(dsts, srcs):
                    d.copy_(s, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                events.append(ev)
            else:
                try:
                    torch._foreach_copy_(dsts, srcs)
                except (AttributeError, RuntimeError):
                    for d, s in zip(dsts, srcs):
                        d.copy_(s)

    def release() -> None:
        for buf, pinned in held:
            staging.release(buf, pinned)

    return items, events, release


def _copy_numpy(name: str, role: str, arr: Any) -> _Item | None:
    import numpy as np

    a = np.asarray(arr)
    dt = dtype_name(a)
    if dt is None:
        return None
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"), order="C")  # the one copy
    else:
        a = np.array(a, copy=True, order="C")
    return _Item(name, role, dt, list(a.shape), a, False)


def _item_buffer(item: _Item) -> Any:
    if item.is_torch:
        import torch

        flat = item.data.reshape(-1)
        return flat.view(torch.uint8).numpy() if flat.numel() else b""
    return item.data


def _item_stats(item: _Item, lock: Any = None) -> dict[str, Any]:
    from cirron.snapshots.stats import numpy_stats, torch_stats

    if not item.is_torch:
        return numpy_stats(item.data)
    if lock is None:
        return torch_stats(item.data)
    return torch_stats(item.data, source=lambda: item.data, lock=lock)


class _Worker:
    """One daemon-free worker thread per manager (recreated after fork). Snapshot jobs start at
    once instead of waiting for the next flush, so in-place reads finish quickly."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._ex: Any = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> Any:
        import os
        from concurrent.futures import ThreadPoolExecutor

        with self._lock:
            if self._ex is None or self._pid != os.getpid():
                self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cirron-snapshot")
                self._pid = os.getpid()
            return self._ex.submit(fn)


# ----------------------------------------------------------------------------------------- sources


class _Source:
    def __init__(self, obj: Any, prefix: str | None) -> None:
        self.prefix = prefix
        try:
            self._ref: Callable[[], Any] = weakref.ref(obj)
        except TypeError:  # plain dicts cannot be weakly referenced
            self._ref = lambda: obj

    @property
    def obj(self) -> Any:
        return self._ref()

    def hooked(self, cirron: Any) -> bool:
        """Whether ``cirron``'s hooks guard this module (forward/backward/step wait for snapshots)."""
        obj = self.obj
        if obj is None or isinstance(obj, Mapping):
            return False
        wrap = sys.modules.get("cirron._wrap")
        return wrap is not None and wrap.is_hooked(cirron, obj)

    def tensors(self) -> Iterator[tuple[str, str, Any]]:
        obj = self.obj
        if obj is None:
            return
        pre = f"{self.prefix}." if self.prefix else ""
        if isinstance(obj, Mapping):
            for k, v in list(obj.items()):
                yield f"{pre}{k}", "weight", v
                grad = getattr(v, "grad", None) if _is_torch_tensor(v) else None
                if grad is not None:
                    yield f"{pre}{k}.grad", "gradient", grad
            return
        params = list(obj.named_parameters())
        for k, p in params:
            yield f"{pre}{k}", "weight", p
        for k, p in params:
            grad = getattr(p, "grad", None)
            if grad is not None:
                yield f"{pre}{k}.grad", "gradient", grad


# ----------------------------------------------------------------------------------------- manager


class SnapshotManager:
    """Owns the registered models of one :class:`~cirron.Cirron` and takes their snapshots."""

    def __init__(self, cirron: Any) -> None:
        self._c = cirron
        self._sources: list[_Source] = []
        self._lock = threading.Lock()
        self._staging = _TorchStaging()
        self._inflight = 0
        self._epochs_seen = 0
        self._worker = _Worker()
        self._guard: _InPlaceJob | None = None
        #: modules whose staging buffers may still need warming up (see warm_up)
        self._unwarmed: list[Any] = []
        self.errors: int = 0
        self.last_error: str | None = None
        #: snapshots whose in-place tensors changed while being read
        self.inconsistent: int = 0
        #: times a hook waited for an in-place snapshot, and for how long in total
        self.barrier_waits: int = 0
        self.barrier_wait_ns: int = 0

    # -- registration ---------------------------------------------------------------------------

    def register(self, obj: Any, name: str | None = None) -> None:
        """Snapshot ``obj`` at every epoch end: a torch module (or anything with
        ``named_parameters()``) or a mapping of name → array/tensor. ``name`` prefixes its tensor
        names (``<name>.<param>``). Registering the same object twice is a no-op."""
        if not (isinstance(obj, Mapping) or callable(getattr(obj, "named_parameters", None))):
            from cirron._errors import CirronWrapError

            raise CirronWrapError(
                f"cannot snapshot {type(obj).__name__}: pass a torch module or a dict of name -> numpy array"
            )
        with self._lock:
            for s in self._sources:
                if s.obj is obj:
                    return
            self._sources.append(_Source(obj, name))
        if not isinstance(obj, Mapping):
            self._unwarmed.append(weakref.ref(obj))
            self.warm_up()

    def warm_up(self) -> None:
        """Warm the staging buffers of registered modules up if the mode writes blobs.

        Called at registration and by the forward hook until a session runs, because
        ``ci.wrap()`` often comes before ``ci.profile(snapshots="full")`` decides the mode."""
        if not self._unwarmed:
            return
        blobs = self._mode() in ("full", "sampled")
        if blobs or getattr(self._c, "session_id", None) is not None:
            pending, self._unwarmed = self._unwarmed, []
            if blobs:
                for ref in pending:
                    module = ref()
                    if module is not None:
                        self._prepare_staging(module)

    def _prepare_staging(self, module: Any) -> None:
        """Blob epochs copy weights (and gradients) into a staging buffer: warm it up off-thread."""
        try:
            sizes: dict[tuple[Any, bool], int] = {}
            for _, p in module.named_parameters():
                if not _is_torch_tensor(p) or dtype_name(p) is None:
                    continue
                key = (p.dtype, p.device.type == "cuda")
                sizes[key] = sizes.get(key, 0) + p.numel() * (2 if p.requires_grad else 1)
            for (dtype, pinned), numel in sizes.items():
                self._worker.submit(functools.partial(self._staging.prefault, dtype, numel, pinned))
        except Exception as exc:  # noqa: BLE001 - only an optimisation
            log.debug("cirron: staging warm-up skipped: %s", exc)

    # -- config ---------------------------------------------------------------------------------

    def _cfg(self) -> Any:
        return getattr(self._c, "config", None) or self._c._config

    def _mode(self) -> str:
        mode = getattr(self._cfg(), "snapshots", "stats") or "stats"
        return mode if mode in MODES else "stats"

    def _sample_rate(self) -> float | None:
        return getattr(self._cfg(), "sample_rate", None)

    def _spool_writer(self) -> Any:
        """The running spool sink's writer, so blob writes count against the disk cap."""
        for sink in getattr(self._c, "_sinks", None) or ():
            writer = getattr(sink, "writer", None)
            if writer is not None and callable(getattr(writer, "ensure_room", None)):
                return writer
        return None

    # -- taking snapshots -----------------------------------------------------------------------

    def on_epoch_end(self, span: Any) -> None:
        """Called by ``epochs()`` while the epoch span is still open."""
        mode = self._mode()
        index = getattr(span, "index", None)
        epoch = index if isinstance(index, int) else self._epochs_seen
        self._epochs_seen += 1
        if mode == "off" or not self._sources:
            return
        entries: list[tuple[str, str, Any]] = []
        guarded: set[str] = set()
        for src in list(self._sources):
            got = list(src.tensors())
            entries.extend(got)
            if src.hooked(self._c):
                guarded.update(name for name, _, _ in got)
        self._take(entries, span, mode, wants_blob(mode, self._sample_rate(), epoch), frozenset(guarded))

    def snapshot(self, tensors: Mapping[str, Any], span: Any, *, mode: str | None = None,
                 blobs: bool | None = None) -> None:
        """A one-off snapshot of ``tensors`` (name → numpy array / torch tensor) attached to
        ``span``. ``blobs`` defaults to ``True`` in ``full`` mode only. Names ending in ``.grad``
        get the role ``gradient``."""
        mode = mode or self._mode()
        if mode == "off":
            return
        entries: list[tuple[str, str, Any]] = []
        for k, v in tensors.items():
            role = "gradient" if str(k).endswith(".grad") else "weight"
            entries.append((str(k), role, v))
        if blobs is None:
            blobs = mode == "full"
        self._take(entries, span, mode, blobs)

    def _take(self, entries: list[tuple[str, str, Any]], span: Any, mode: str, blobs: bool,
              guarded: frozenset[str] = frozenset()) -> None:
        """Capture ``entries`` on the caller's thread, then hand the work to the snapshot worker.

        Tensors named in ``guarded`` belong to a module whose hooks call :meth:`wait_pending`
        before anything can change them (forward, backward, optimizer step). On a stats-only
        snapshot those are not copied at all: the worker reads them in place and the next hook
        waits for it if it is still running. Everything else is copied once, here.
        """
        ts_ns = time.time_ns()
        span_id = span.id_hex
        torch_copy: list[tuple[str, str, Any]] = []
        items: list[_Item] = []
        live_items: list[_Item] = []
        seen: set[str] = set()
        for name, role, value in entries:
            if name in seen:
                log.warning("cirron: duplicate snapshot tensor name %r skipped", name)
                continue
            seen.add(name)
            if _is_torch_tensor(value):
                dt = dtype_name(value)
                if dt is None or value.is_sparse:
                    log.warning("cirron: tensor %r of dtype %s cannot be snapshot; skipped", name, value.dtype)
                    continue
                if not blobs and name in guarded:
                    live_items.append(_Item(name, role, dt, list(value.shape), value.detach(), True,
                                            live=True, version=value._version))
                else:
                    torch_copy.append((name, role, value))
            else:
                item = _copy_numpy(name, role, value)
                if item is None:
                    log.warning("cirron: %r (%s) is not a numeric array; skipped", name, type(value).__name__)
                    continue
                items.append(item)
        release: Callable[[], None] = lambda: None  # noqa: E731
        events: list[Any] = []
        if torch_copy:
            t_items, events, release = _copy_torch(torch_copy, self._staging)
            items += t_items
        items += live_items
        if not items:
            release()
            return
        order = {name: i for i, (name, _, _) in enumerate(entries)}
        items.sort(key=lambda it: order.get(it.name, 0))
        session_id = getattr(self._c, "session_id", None)
        spool_dir = self._cfg().spool_dir
        guard = _InPlaceJob(live_items) if live_items else None

        def job() -> None:
            try:
                for ev in events:
                    ev.synchronize()
                self._finish(items, span_id, session_id, spool_dir, mode, blobs, ts_ns, guard)
            except Exception as exc:  # never let a snapshot break the run
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cirron: snapshot of span %s failed: %s", span_id, self.last_error)
            finally:
                if guard is not None:
                    with guard.lock:
                        guard.done.set()
                        late = list(guard.releases)
                    for r in late:
                        r()
                release()
                with self._lock:
                    self._inflight -= 1

        with self._lock:
            self._inflight += 1
            inline = self._inflight > MAX_INFLIGHT
        if inline:
            job()
            return
        try:
            future = self._worker.submit(job)
        except Exception:  # noqa: BLE001 - interpreter shutting down, thread limits…
            job()
            return
        if guard is not None:
            self._guard = guard
        offload = getattr(self._c, "_offload", None)
        if offload is not None:
            # the flush that writes the next batch waits for the records; shutdown waits too
            offload(lambda: future.result())

    def wait_pending(self) -> None:
        """Called by the torch hooks before backward and the optimizer step, i.e. before anything
        can change the live tensors an in-place snapshot is reading (a forward pass changes
        neither the parameters nor their gradients).

        Returns at once when that snapshot is done (or there is none). Otherwise it takes the
        job's lock (waiting for at most one chunk of reductions), copies the tensors the worker
        has not finished into staging buffers and points the worker at the copies. The training
        thread thus pays at most one copy of what is left, and only when it comes back sooner
        than the worker."""
        job = self._guard
        if job is None:
            return
        self._guard = None
        if job.done.is_set():
            return
        t0 = time.perf_counter_ns()
        with job.lock:
            if not job.done.is_set():
                pending = [it for it in job.items if it.live and not it.finished]
                if pending:
                    if any(it.data._version != it.version for it in pending):
                        self.inconsistent += 1
                    copies, events, release = _copy_torch([(it.name, it.role, it.data) for it in pending],
                                                          self._staging)
                    for ev in events:
                        ev.synchronize()
                    for it, cp in zip(pending, copies):
                        it.data, it.live = cp.data, False
                    job.releases.append(release)
        self.barrier_waits += 1
        self.barrier_wait_ns += time.perf_counter_ns() - t0

    def _finish(self, items: list[_Item], span_id: str, session_id: str | None, spool_dir: Any,
                mode: str, blobs: bool, ts_ns: int, inplace: _InPlaceJob | None = None) -> None:
        from cirron import safetensors_io

        uris: dict[str, str] = {}
        if blobs:
            span_dir = snapshot_span_dir(spool_dir, span_id)
            meta = {"session_id": session_id or "", "span_id": span_id}
            writer = self._spool_writer()
            for role, fname in (("weight", WEIGHTS_FILE), ("gradient", GRADIENTS_FILE)):
                chosen = [it for it in items if it.role == role]
                if not chosen:
                    continue
                try:
                    size = safetensors_io.write_file(
                        span_dir / fname,
                        [(it.name, it.dtype, it.shape, _item_buffer(it)) for it in chosen],
                        meta,
                        fsync=bool(getattr(writer, "fsync", True)),
                        reserve=writer.ensure_room if writer is not None else None,
                    )
                except Exception as exc:  # e.g. the spool is at its cap: keep the stats, drop the blob
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("cirron: snapshot blob %s/%s not written: %s", span_id, fname, self.last_error)
                    continue
                if writer is not None and isinstance(getattr(writer, "_used", None), int):
                    writer._used += size
                uris[role] = f"snapshots/{span_id}/{fname}"
        stats = []
        for it in items:
            if it.live and inplace is not None:
                stats.append(_item_stats(it, inplace.lock))
                with inplace.lock:
                    it.finished = True
                    changed = it.live and it.data._version != it.version
            else:
                stats.append(_item_stats(it))
                changed = False
            if changed:
                # changed in place by code outside the hooks (e.g. zero_grad(set_to_none=False))
                self.inconsistent += 1
                log.warning("cirron: %s changed while snapshot %s was reading it; its stats may mix "
                            "two states", it.name, span_id)
        emit = self._c._emit_snapshot
        for it, st in zip(items, stats):
            record = {
                "id": uuid.uuid4().hex,
                "span_id": span_id,
                "tensor": it.name,
                "role": it.role,
                "dtype": it.dtype,
                "shape": it.shape,
                "mode": mode,
                "ts_ns": ts_ns,
                "stats": strict_json(st),
                "blob_uri": uris.get(it.role),
            }
            emit(record)

    def health(self) -> dict[str, Any]:
        """Counters for ``ci.health()``."""
        return {
            "models": sum(1 for s in self._sources if s.obj is not None),
            "pending": self._inflight,
            "errors": self.errors,
            "last_error": self.last_error,
            "inconsistent": self.inconsistent,
            "hook_waits": self.barrier_waits,
            "hook_wait_ns": self.barrier_wait_ns,
        }

    def close(self) -> None:
        self._staging.clear()


def manager(cirron: Any) -> SnapshotManager:
    """``cirron``'s snapshot manager, created on first use."""
    if cirron._snapshots is None:
        cirron._snapshots = SnapshotManager(cirron)
    return cirron._snapshots


def snapshot(cirron: Any, tensors: Mapping[str, Any], *, blobs: bool | None = None) -> None:
    """``ci.snapshot({"w": array, ...})``: snapshot these arrays/tensors now, attached to the
    innermost open span (the session root outside any scope). Follows the snapshot mode
    (``off``: nothing); values are saved when ``blobs=True`` or in ``full`` mode."""
    from cirron._errors import CirronStateError

    if not isinstance(tensors, Mapping):
        from cirron._errors import CirronWrapError

        raise CirronWrapError(f"snapshot() takes a dict of name -> array, got {type(tensors).__name__}")
    current = getattr(cirron, "current_span", None)
    span = current() if callable(current) else None
    if span is None:
        span = getattr(getattr(cirron, "_rec", None), "root", None)
    if span is None:
        raise CirronStateError("snapshot() needs an open scope or a running session: call ci.profile() first")
    manager(cirron).snapshot(tensors, span, blobs=blobs)
