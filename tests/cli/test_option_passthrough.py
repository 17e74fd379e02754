"""Option values that need no conversion skip typer's pydantic adapter, and come out exactly as
that adapter would return them; everything else still goes through it."""

from __future__ import annotations

import enum

import pytest
from typer.models import OptionInfo

from cirron_cli._coerce import MISS, passthrough_value

adapters = pytest.importorskip("typer._adapters")


class Fmt(str, enum.Enum):
    json = "json"
    parquet = "parquet"


class Plain(enum.Enum):
    GZIP = "gzip"
    NONE = "none"


INFO = OptionInfo()
INSENSITIVE = OptionInfo(case_sensitive=False)
RANGED = OptionInfo(min=0.1, max=10)
CASES = [
    # (annotation, parameter info, values the passthrough must accept, values it must hand on)
    (str, INFO, ["", "x", "/tmp/a b", "-1", "é"], [b"bytes", 5, 1.5]),
    (int, INFO, [0, 7, -3, "0", "12", "-4", "007", "123456789012345678"], [True, 1.5, "1.5", " 3", "+3", "1_000", "x", "1e3", "99999999999999999999"]),
    (float, INFO, [0.0, 2.5, 3, "3", "-3", "0.5", "-12.25", "007.50"], [True, "1e3", ".5", "5.", "nan", "inf", "x", " 1"]),
    (float, RANGED, [0.1, 10, "2", "9.5"], [0.05, "0.01", 11, "10.5"]),
    (Fmt, INFO, [Fmt.json, "json", "parquet"], ["JSON", "csv", 3]),
    (Fmt, INSENSITIVE, ["JSON", "Parquet", Fmt.parquet], ["csv"]),
    (Plain, INFO, [Plain.GZIP, "gzip", "none"], ["GZIP", "zip"]),
    (list[str], INFO, [[], ["a"], ("a", "b"), ["x", "y", "z"]], ["a", [b"a"], ("a", 1)]),
    (list[int], INFO, [[1, "2"], ("3",)], [["x"], [1.5]]),
]


@pytest.mark.parametrize(("annotation", "info", "accepted", "handed_on"), CASES)
def test_passthrough_returns_exactly_what_the_adapter_returns(annotation, info, accepted, handed_on) -> None:
    adapter = adapters.build_adapter(annotation, info)
    for value in accepted:
        got = passthrough_value(value, annotation, info)
        assert got is not MISS, (annotation, value)
        want = adapter.validate_python(value)
        assert got == want and type(got) is type(want), (annotation, value, got, want)
        if isinstance(want, list):
            assert [type(v) for v in got] == [type(v) for v in want]
    for value in handed_on:
        assert passthrough_value(value, annotation, info) is MISS, (annotation, value)


def test_a_custom_parser_always_goes_to_the_adapter() -> None:
    info = OptionInfo(parser=int)
    assert passthrough_value("3", str, info) is MISS
