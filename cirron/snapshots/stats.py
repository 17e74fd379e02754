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

import math
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


def torch_stats(t: Any) -> dict[str, Any]:
    """Stats of a torch tensor (any shape/dtype/device; read only, no autograd)."""
    import torch

    with torch.no_grad():
        x = t.detach().reshape(-1)
        n = int(x.numel())
        if n == 0:
            return empty_stats()
        if not x.dtype.is_floating_point:
            x = x.to(torch.float64)
        elif x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        norm = float(torch.linalg.vector_norm(x))
        if math.isfinite(norm):
            nan = inf = 0  # a NaN or an infinity would have made the norm non-finite
        else:
            nan = int(torch.isnan(x).sum())
            inf = int(torch.isinf(x).sum())
        lo = hi = None
        counts = [0] * HIST_BINS
        if math.isfinite(norm):
            mn, mx = (float(v) for v in torch.aminmax(x))
            mean = float(x.sum()) / n
            ex2 = norm * norm / n
            if mean * mean <= 0.5 * ex2:
                var = max(ex2 - mean * mean, 0.0)  # no cancellation worth the name
            else:  # the mean dominates: a second, exact pass around it
                acc2 = 0.0
                for i in range(0, n, _CHUNK):
                    acc2 += float(torch.linalg.vector_norm(x[i : i + _CHUNK] - mean)) ** 2
                var = acc2 / n
            lo, hi = mn, mx
        else:
            v, m = torch.var_mean(x, correction=0)
            var, mean = float(v), float(m)
            mn = mx = math.nan if nan else None
            if not nan:
                mn, mx = (float(t) for t in torch.aminmax(x))
            finite = x[torch.isfinite(x)]
            if finite.numel():
                lo, hi = (float(t) for t in torch.aminmax(finite))
        finite_n = n - nan - inf
        if finite_n and lo is not None:
            if lo == hi:
                counts = [finite_n] + [0] * (HIST_BINS - 1)
            else:
                acc = torch.zeros(HIST_BINS, dtype=torch.int64)
                for i in range(0, n, _CHUNK):
                    chunk = x[i : i + _CHUNK]
                    if nan + inf:
                        chunk = chunk[torch.isfinite(chunk)]
                    acc += torch.histc(chunk, bins=HIST_BINS, min=lo, max=hi).to(torch.int64).cpu()
                counts = acc.tolist()
        std = math.sqrt(var) if var >= 0 else var
    return _finish(_f(mean), std, _f(mn), _f(mx), _f(norm), n, nan, inf, counts, lo, hi)
