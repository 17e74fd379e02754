from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from cirron import safetensors_io as st


def _raw_file(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def test_round_trip_with_the_reference_library(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    arrays = {
        "0.weight": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),
        "big": np.array([2**62 + 1, -(2**63)], dtype=np.int64),
        "u": np.array([2**64 - 1], dtype=np.uint64),
        "h": np.array([1.5, -2.25], dtype=np.float16),
        "flag": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float64),
    }
    path = tmp_path / "w.safetensors"
    size = st.write_file(path, [(k, st_dtype(v), v.shape, v) for k, v in arrays.items()],
                         {"session_id": "s", "span_id": "p"})
    assert path.stat().st_size == size
    loaded = load_file(str(path))
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
    h = st.read_header(path)
    assert h.metadata == {"session_id": "s", "span_id": "p"}
    assert set(h.names()) == set(arrays)
    assert st.read_values(h, h.get("big"), 0, 5) == [2**62 + 1, -(2**63)]
    assert st.read_values(h, h.get("u"), 0, 1) == [2**64 - 1]
    assert st.read_values(h, h.get("h"), 0, 2) == [1.5, -2.25]
    assert st.read_values(h, h.get("flag"), 0, 2) == [True, False]
    assert st.read_values(h, h.get("0.weight"), 10, 10) == pytest.approx(arrays["0.weight"].reshape(-1)[10:].tolist())
    assert st.read_values(h, h.get("empty"), 0, 3) == []
    np.testing.assert_array_equal(st.to_numpy(h, h.get("0.weight")), arrays["0.weight"])
    assert not list(tmp_path.glob(".tmp-*"))


def st_dtype(a: np.ndarray) -> str:
    from cirron.snapshots import dtype_name

    name = dtype_name(a)
    assert name
    return name


def test_reads_files_written_by_the_reference_library(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {
        "bf": torch.tensor([1.0, -0.5, 3.140625], dtype=torch.bfloat16),
        "f8a": torch.tensor([0.5, -448.0], dtype=torch.float8_e4m3fn),
        "f8b": torch.tensor([0.25, -57344.0], dtype=torch.float8_e5m2),
        "i16": torch.tensor([-7, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u16": torch.tensor([65535], dtype=torch.uint16),
        "u32": torch.tensor([4294967295], dtype=torch.uint32),
        "i32": torch.tensor([-(2**31)], dtype=torch.int32),
        "f64": torch.tensor([1e300], dtype=torch.float64),
        "u8": torch.tensor([255], dtype=torch.uint8),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"a": "b"})
    h = st.read_header(path)
    got = {t.name: st.read_values(h, t, 0, 10) for t in h.tensors}
    assert got["bf"] == [1.0, -0.5, 3.140625]
    assert got["f8a"] == [0.5, -448.0]
    assert got["f8b"] == [0.25, -57344.0]
    assert got["i16"] == [-7, 300] and got["i8"] == [-128, 127]
    assert got["u16"] == [65535] and got["u32"] == [4294967295] and got["i32"] == [-(2**31)]
    assert got["f64"] == [1e300] and got["u8"] == [255]
    np.testing.assert_array_equal(st.to_numpy(h, h.get("bf")), np.array([1.0, -0.5, 3.140625], dtype=np.float32))
    assert math.isnan(st._decode_f8(0x7F, "F8_E4M3"))
    assert st._decode_f8(0x7C, "F8_E5M2") == math.inf


@pytest.mark.parametrize(
    "header, data, length, needle",
    [
        (b"", b"", 0, "too small"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside the data region"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, None, "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8, None, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
        ({"a": [1, 2]}, b"", None, "not an object"),
        ([1, 2], b"", None, "not a JSON object"),
        (b"{not json", b"", None, "not valid JSON"),
        (b'{"a": 1, "a": 2}', b"", None, "duplicate"),
        (b"\xff\xfe{}", b"", None, "not valid JSON"),
        ({"__metadata__": [1]}, b"", None, "__metadata__"),
        ({"": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, b"", None, "empty tensor name"),
        (b"{}", b"", 10**12, "exceeds"),
        (b"{}", b"", 50, "runs past the end"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, header, data, length, needle) -> None:
    path = _raw_file(tmp_path / "bad.safetensors", header, data, length=length)
    with pytest.raises(st.SafetensorsError) as info:
        st.read_header(path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_shape_product_overflow_is_a_size_mismatch(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "x.safetensors",
                     {"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(st.SafetensorsError, match="needs"):
        st.read_header(path)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(st.SafetensorsError, match="truncated"):
        st.read_header(short)
    with pytest.raises(st.SafetensorsError, match="not found"):
        st.read_header(tmp_path / "nope.safetensors")
    with pytest.raises(st.SafetensorsError, match="directory"):
        st.read_header(tmp_path)
    # a valid file cut after the header was read: values cannot be read back
    arr = np.arange(4, dtype=np.float32)
    good = tmp_path / "good.safetensors"
    st.write_file(good, [("a", "F32", arr.shape, arr)])
    h = st.read_header(good)
    good.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(st.SafetensorsError, match="truncated"):
        st.read_values(h, h.get("a"), 0, 4)


def test_preview_reads_only_the_needed_bytes(tmp_path: Path, monkeypatch) -> None:
    arr = np.arange(1_000_000, dtype=np.float32)
    path = tmp_path / "big.safetensors"
    st.write_file(path, [("a", "F32", arr.shape, arr)])
    h = st.read_header(path)
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, *a):
            return self.f.seek(*a)

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

    monkeypatch.setattr(st, "open_regular", lambda p, **kw: Spy(real_open(p, "rb")))
    assert st.read_values(h, h.get("a"), 999_990, 100) == [float(x) for x in range(999_990, 1_000_000)]
    assert reads == [40]


def test_safe_filename() -> None:
    assert st.safe_filename("layer1.0.conv1.weight") == "layer1.0.conv1.weight.safetensors"
    for hostile in ("../../etc/passwd", "..", ".", "a/b", "a\x00b", "/abs", "x\\y", ""):
        name = st.safe_filename(hostile)
        assert "/" not in name and "\x00" not in name and "\\" not in name
        assert name not in (".safetensors", "..safetensors")
        assert ".." not in name


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    a = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="needs"):
        st.write_file(tmp_path / "x.safetensors", [("a", "F32", (4,), a)])
    with pytest.raises(ValueError, match="duplicate"):
        st.write_file(tmp_path / "x.safetensors", [("a", "F32", (3,), a), ("a", "F32", (3,), a)])
    with pytest.raises(ValueError, match="contiguous"):
        st.write_file(tmp_path / "x.safetensors", [("a", "F32", (2,), np.zeros(4, np.float32)[::2])])
    assert not list(tmp_path.iterdir())
