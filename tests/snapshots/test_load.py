from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cirron import Cirron, CirronConfigError, CirronError
from cirron import safetensors_io as st
from cirron.spool import load_spool


@pytest.fixture
def c(spool_dir: Path):
    inst = Cirron(spool_dir=spool_dir, flush_interval=60)
    inst.profile()
    yield inst
    inst.shutdown()


def test_formats(c: Cirron, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    arr = np.arange(6, dtype=np.int32).reshape(2, 3)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", x=arr, y=arr * 2)
    st.write_file(tmp_path / "c.safetensors", [("w", "F32", (2,), np.array([1.5, 2.5], np.float32))])
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "d.parquet")
    (tmp_path / "e.csv").write_text("a,b\n1,x\n2,y\n")
    (tmp_path / "f.txt").write_text("hello")
    (tmp_path / "dir").mkdir()
    np.testing.assert_array_equal(c.load("a.npy"), arr)
    z = c.load("b.npz")
    assert set(z) == {"x", "y"} and (z["y"] == arr * 2).all()
    assert c.load(str(tmp_path / "c.safetensors"))["w"].tolist() == [1.5, 2.5]
    assert c.load("d.parquet").column("x").to_pylist() == [1, 2, 3]
    assert c.load("e.csv").num_rows == 2
    assert c.load("f.txt") == Path("f.txt")
    assert c.load("dir") == Path("dir")
    c.shutdown()
    loads = [s for s in load_spool(c.config.spool_dir).spans.values() if s["name"] == "load"]
    assert len(loads) == 7
    npy = next(s for s in loads if s["attrs"]["dataset"] == "a.npy")
    assert npy["attrs"]["source"] == "local" and npy["attrs"]["bytes"] == (tmp_path / "a.npy").stat().st_size


def test_alias_from_project_file(tmp_path: Path, spool_dir: Path) -> None:
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "train.npy", np.ones(3))
    (tmp_path / "cirron.yaml").write_text(
        "name: demo\nversion: '1'\nframework: sklearn\ntype: classification\n"
        "data:\n  train: data/train.npy\n  test: {path: data/missing.npy}\n  remote: {uri: 'platform://datasets/x'}\n"
    )
    sub = tmp_path / "nested"
    sub.mkdir()
    import os

    os.chdir(sub)  # aliases resolve against the project file, not the cwd
    c = Cirron(spool_dir=spool_dir)
    assert c.load("train").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(CirronConfigError, match="does not exist"):
        c.load("test")
    with pytest.raises(CirronConfigError, match="not supported by this SDK version") as ei:
        c.load("remote")
    assert "source='platform'" not in str(ei.value)  # no advice that leads to "not supported"
    with pytest.raises(CirronConfigError, match=r"aliases: remote, test, train"):
        c.load("nope")


def test_platform_source_and_bad_arguments(spool_dir: Path) -> None:
    c = Cirron(spool_dir=spool_dir)
    with pytest.raises(CirronConfigError, match="needs platform credentials"):
        c.load("train", source="platform")
    with pytest.raises(CirronConfigError, match="expected one of"):
        c.load("train", source="s3")
    c2 = Cirron(spool_dir=spool_dir, api_key="k" * 20, workspace_id="ws")
    with pytest.raises(CirronError, match="not supported"):
        c2.load("train", source="platform")


def test_load_error_is_recorded_on_the_span(c: Cirron, tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError):
        c.load("bad.npy")
    c.shutdown()
    (span,) = [s for s in load_spool(c.config.spool_dir).spans.values() if s["name"] == "load"]
    assert span["attrs"]["error"].startswith("ValueError")
