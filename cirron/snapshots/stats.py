"""Summary statistics of one tensor, for snapshot records.

``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max``, ``norm`` (L2), ``numel``,
``nan_count``, ``inf_count`` and a 16-bucket ``histogram`` ``{"counts": [...], "min": lo, "max": hi}``.

Rules, the same for numpy and torch:

* ``mean``/``std``/``min``/``max``/``norm`` are taken over every element, so one NaN makes them NaN
  and an overflowing weight makes them infinite; the spool writes those as the strings ``"NaN"``,
  ``"Infinity"``, ``"-Infinity"``.
* The histogram covers the finite elements only, with ``lo``/``hi`` their min and max; the last
  bucket includes ``hi``. When every finite element has the same value they all land in the first
  bucket. With no finite element the counts are all zero and ``lo``/``hi`` are ``null``.
* Integer and bool tensors are summarised as float64; F16/BF16/F8 as float32.

These functions do the reductions only. They expect a private copy of the data (taken on the
user's thread at the epoch end) and are meant to run on the flush service's worker.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

HIST_BINS = 16
#: Histogram work is chunked so counts stay exact past 2**24 elements and temporaries stay small.
_CHUNK = 1 << 22


def _f(x: Any) -> float:
    return float(x)


def empty_stats() -> dict[str, Any]:
    return {
        "mean": None, "std": None, "min": None, "max": None, "norm": 0.0, "numel": 0,
        "nan_count": 0, "inf_count": 0,
        "histogram": {"counts": [0] * HIST_BINS, "min": None, "max": None},
    }


def _finish(mean: float, std: float, mn: float, mx: float, norm: float, numel: int, nan: int, inf: int,
            counts: list[int], lo: float | None, hi: float | None) -> dict[str, Any]:
    return {
        "mean": mean, "std": std, "min": mn, "max": mx, "norm": norm, "numel": numel,
        "nan_count": nan, "inf_count": inf,
        "histogram": {"counts": counts, "min": lo, "max": hi},
    }


# ------------------------------------------------------------------------------------------ numpy


def numpy_stats(arr: Any) -> dict[str, Any]:
    """Stats of a numpy array (any shape; read only)."""
    import numpy as np

    x = np.asarray(arr).reshape(-1)
    n = int(x.size)
    if n == 0:
        return empty_stats()
    if x.dtype.kind in "biu":
        x = x.astype(np.float64)
    elif x.dtype.kind == "f" and x.dtype.itemsize < 4:
        x = x.astype(np.float32)
    elif x.dtype.kind != "f":
        x = x.astype(np.float64)  # e.g. ml_dtypes bfloat16
    with np.errstate(all="ignore"):
        nan = int(np.count_nonzero(np.isnan(x)))
        inf = int(np.count_nonzero(np.isinf(x)))
        mean = x.mean(dtype=np.float64)
        std = x.std(dtype=np.float64)
        mn, mx = x.min(), x.max()
        norm = np.linalg.norm(x.astype(np.float64) if x.dtype == np.float32 and n < _CHUNK else x)
        finite = x if nan + inf == 0 else x[np.isfinite(x)]
        if finite.size == 0:
            counts, lo, hi = [0] * HIST_BINS, None, None
        else:
            lo, hi = float(finite.min()), float(finite.max())
            if lo == hi:
                counts = [int(finite.size)] + [0] * (HIST_BINS - 1)
            else:
                counts = np.histogram(finite, bins=HIST_BINS, range=(lo, hi))[0].astype(np.int64).tolist()
    return _finish(_f(mean), _f(std), _f(mn), _f(mx), _f(norm), n, nan, inf, counts, lo, hi)


# ------------------------------------------------------------------------------------------ torch


def torch_stats(t: Any, *, source: Callable[[], Any] | None = None, lock: Any = None) -> dict[str, Any]:
    """Stats of a torch tensor (any shape/dtype/device; read only, no autograd).

    The work is done in chunks of ``_CHUNK`` elements. With ``lock``, each chunk is read while
    holding it, and the tensor is fetched again through ``source()`` for every chunk: another
    thread can take the lock, swap the live tensor for a private copy and know that no chunk of
    the live one is being read once it holds the lock (see ``SnapshotManager.wait_pending``).
    """
    import torch

    guard = lock if lock is not None else contextlib.nullcontext()
    if source is None:
        flat = t.detach().reshape(-1)

        def source() -> Any:
            return flat

    with torch.no_grad():
        n = int(t.numel())
        if n == 0:
            return empty_stats()

        def chunk(i: int) -> Any:
            c = source().reshape(-1)[i : i + _CHUNK]
            if not c.dtype.is_floating_point:
                return c.to(torch.float64)
            if c.dtype not in (torch.float32, torch.float64):
                return c.to(torch.float32)
            return c

        # pass 1: sum of squares, sum, min, max; NaN/Inf counted only where the chunk norm says so
        sq = total = 0.0
        nan = inf = 0
        pos_inf = neg_inf = False
        mn, mx = math.inf, -math.inf
        for i in range(0, n, _CHUNK):
            with guard:
                c = chunk(i)
                cn = float(torch.linalg.vector_norm(c))
                if not math.isfinite(cn):
                    bad_nan = int(torch.isnan(c).sum())
                    bad_inf = int(torch.isinf(c).sum())
                    if bad_nan or bad_inf:
                        nan, inf = nan + bad_nan, inf + bad_inf
                        if bad_inf:
                            pos_inf = pos_inf or bool(torch.isposinf(c).any())
                            neg_inf = neg_inf or bool(torch.isneginf(c).any())
                        fin = c[torch.isfinite(c)]
                        cn = float(torch.linalg.vector_norm(fin.to(torch.float64))) if fin.numel() else 0.0
                        c = fin
                    else:  # finite values whose squares overflow: redo in float64
                        cn = float(torch.linalg.vector_norm(c.to(torch.float64)))
                if c.numel():
                    total += float(c.sum(dtype=torch.float64) if c.dtype == torch.float64 else c.sum())
                    lo_c, hi_c = (float(v) for v in torch.aminmax(c))
                    mn, mx = min(mn, lo_c), max(mx, hi_c)
                sq += cn * cn
        finite_n = n - nan - inf
        lo = hi = None
        if finite_n:
            lo, hi = mn, mx
        mean_f = total / finite_n if finite_n else math.nan
        ex2 = sq / finite_n if finite_n else math.nan

        # pass 2 (finite values only): histogram, and the variance around the mean when it dominates
        counts = [0] * HIST_BINS
        two_pass = finite_n and not (mean_f * mean_f <= 0.5 * ex2)
        acc2 = 0.0
        if finite_n and (lo != hi or two_pass):
            acc = torch.zeros(HIST_BINS, dtype=torch.int64)
            for i in range(0, n, _CHUNK):
                with guard:
                    c = chunk(i)
                    if nan + inf:
                        c = c[torch.isfinite(c)]
                    if lo != hi:
                        acc += torch.histc(c, bins=HIST_BINS, min=lo, max=hi).to(torch.int64).cpu()
                    if two_pass:
                        acc2 += float(torch.linalg.vector_norm(c.to(torch.float64) - mean_f)) ** 2
            counts = acc.tolist()
        if finite_n and lo == hi:
            counts = [finite_n] + [0] * (HIST_BINS - 1)
        var = acc2 / finite_n if two_pass else (max(ex2 - mean_f * mean_f, 0.0) if finite_n else math.nan)

        if nan:
            return _finish(math.nan, math.nan, math.nan, math.nan, math.nan, n, nan, inf, counts, lo, hi)
        if inf:
            mean = math.nan if pos_inf and neg_inf else (math.inf if pos_inf else -math.inf)
            return _finish(mean, math.nan, -math.inf if neg_inf else mn, math.inf if pos_inf else mx, math.inf,
                           n, nan, inf, counts, lo, hi)
        return _finish(mean_f, math.sqrt(var), mn, mx, math.sqrt(sq), n, nan, inf, counts, lo, hi)
