from __future__ import annotations

import math

import numpy as np
import pytest

from cirron._schema import strict_json
from cirron.snapshots.stats import HIST_BINS, numpy_stats, torch_stats


def _check(stats: dict, ref: np.ndarray) -> None:
    assert stats["numel"] == ref.size
    assert stats["mean"] == pytest.approx(float(ref.mean()), rel=1e-5, abs=1e-7)
    assert stats["std"] == pytest.approx(float(ref.std()), rel=1e-5)
    assert stats["min"] == pytest.approx(float(ref.min()))
    assert stats["max"] == pytest.approx(float(ref.max()))
    assert stats["norm"] == pytest.approx(float(np.linalg.norm(ref.astype(np.float64))), rel=1e-5)
    assert len(stats["histogram"]["counts"]) == HIST_BINS
    assert sum(stats["histogram"]["counts"]) == ref.size
    expected = np.histogram(ref, bins=16, range=(ref.min(), ref.max()))[0].tolist()
    # edge values may fall on either side of a bin boundary in float32; totals must match exactly
    assert np.abs(np.array(stats["histogram"]["counts"]) - expected).sum() <= 4


def test_numpy_stats_match_reference() -> None:
    x = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    s = numpy_stats(x)
    _check(s, x.astype(np.float64))
    assert s["nan_count"] == 0 and s["inf_count"] == 0


def test_torch_stats_match_numpy() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 33)
    s = torch_stats(x)
    _check(s, x.numpy().astype(np.float64))
    b = torch_stats(x.to(torch.bfloat16))
    assert b["mean"] == pytest.approx(s["mean"], abs=1e-2)


def test_non_finite_values_survive_as_strings() -> None:
    x = np.array([1.0, np.nan, np.inf, -2.0, 3.0], dtype=np.float32)
    for s in [numpy_stats(x)] + ([torch_stats(__import__("torch").from_numpy(x))] if _has_torch() else []):
        assert s["nan_count"] == 1 and s["inf_count"] == 1
        assert math.isnan(s["mean"]) and math.isnan(s["min"])
        enc = strict_json(s)
        assert enc["mean"] == "NaN" and enc["min"] == "NaN"
        assert enc["histogram"]["min"] == -2.0 and enc["histogram"]["max"] == 3.0
        assert sum(enc["histogram"]["counts"]) == 3
    only_inf = np.array([np.inf, 1.0], dtype=np.float64)
    assert strict_json(numpy_stats(only_inf))["norm"] == "Infinity"


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_constant_empty_integer_and_bool() -> None:
    c = numpy_stats(np.full(10, 0.5, dtype=np.float32))
    assert c["histogram"]["counts"][0] == 10 and c["std"] == 0.0
    e = numpy_stats(np.zeros((0,), dtype=np.float32))
    assert e["numel"] == 0 and e["mean"] is None and sum(e["histogram"]["counts"]) == 0
    i = numpy_stats(np.array([2**40, -1], dtype=np.int64))
    assert i["max"] == float(2**40)
    b = numpy_stats(np.array([True, False, True, True]))
    assert b["mean"] == 0.75
    allnan = numpy_stats(np.array([np.nan, np.nan]))
    assert allnan["histogram"]["min"] is None and sum(allnan["histogram"]["counts"]) == 0


def test_torch_histogram_counts_are_exact_past_float32_range() -> None:
    torch = pytest.importorskip("torch")
    from cirron.snapshots import stats

    x = torch.linspace(-1, 1, 3 * stats._CHUNK + 7)
    s = torch_stats(x)
    assert sum(s["histogram"]["counts"]) == x.numel()


def test_torch_std_is_accurate_when_the_mean_dominates() -> None:
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    x = 1.0 + 0.001 * torch.randn(100_000, generator=g)  # a LayerNorm weight
    s = torch_stats(x)
    ref = x.double()
    assert s["std"] == pytest.approx(float(ref.std(correction=0)), rel=1e-4)
    assert s["mean"] == pytest.approx(float(ref.mean()), rel=1e-6)
    big = torch.tensor([3e19, -3e19, 1.0])  # finite, but the squares overflow float32
    b = torch_stats(big)
    assert b["nan_count"] == 0 and b["inf_count"] == 0 and b["max"] == pytest.approx(3e19)
    assert sum(b["histogram"]["counts"]) == 3


def test_torch_and_numpy_agree_on_infinities() -> None:
    torch = pytest.importorskip("torch")
    x = np.array([1.0, np.inf, 2.0, -3.0], dtype=np.float32)
    a, b = numpy_stats(x), torch_stats(torch.from_numpy(x))
    for k in ("mean", "min", "max", "norm", "inf_count", "nan_count"):
        assert a[k] == b[k], k
    assert math.isnan(a["std"]) and math.isnan(b["std"])
    assert a["histogram"] == b["histogram"]
