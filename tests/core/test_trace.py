"""ci.trace(): formats, filters, bounds, and no disk writes without a profiler."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cirron import Cirron, CirronConfigError


def small_run(c: Cirron) -> None:
    for _ in c.epochs(range(2)):
        for b in c.batches(range(2)):
            with c.scope("forward"):
                pass
            c.mark("loss", 0.5 / (b + 1))
        c.mark("epoch_loss", 0.25, kind="summary")


def test_tree_output_and_dict_shape(capsys: pytest.CaptureFixture[str]) -> None:
    c = Cirron(output="none")
    c.profile()
    small_run(c)
    assert c.trace() is None
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch[0] - ") and out[0].endswith("{epoch_loss=0.25}")
    assert out[1].startswith("  batch[0] - ") and "{loss=0.5}" in out[1]
    assert any(line.startswith("    forward - ") for line in out)
    d = c.trace(format="dict")
    assert d["span_count"] == 2 + 4 + 4 + 4  # epochs, batches, data_loads, forwards
    assert [r["name"] for r in d["roots"]] == ["epoch", "epoch"]
    node = d["roots"][0]
    assert set(node) >= {"name", "index", "wall_us", "attrs", "marks", "children"}
    assert node["marks"][0]["name"] == "epoch_loss" and node["marks"][0]["kind"] == "summary"
    assert json.loads(c.trace(format="json")) == json.loads(json.dumps(d))
    c.shutdown()


def test_name_and_last_filters() -> None:
    c = Cirron(output="none")
    c.profile()
    small_run(c)
    d = c.trace(format="dict", name="batch")
    assert [r["name"] for r in d["roots"]] == ["batch"] * 4
    assert {ch["name"] for r in d["roots"] for ch in r["children"]} == {"data_load", "forward"}
    last = c.trace(format="dict", last=3)
    assert last["span_count"] == 3 and [r["name"] for r in last["roots"]][-1] == "epoch"
    with pytest.raises(CirronConfigError):
        c.trace(format="xml")
    c.shutdown()


def test_dataframe_columns() -> None:
    pytest.importorskip("pandas")
    c = Cirron(output="none")
    c.profile()
    small_run(c)
    df = c.trace(format="df")
    assert list(df.columns) == ["id", "parent_id", "name", "index", "wall_us", "cpu_ns", "gpu_ns",
                                "memory_peak_bytes", "mark_count", "depth"]
    assert len(df) == 14 and df["depth"].max() == 2
    assert df.loc[df["name"] == "epoch", "mark_count"].tolist() == [1, 1]
    c.shutdown()


def test_df_without_pandas_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cirron import CirronDependencyError

    monkeypatch.setitem(sys.modules, "pandas", None)
    c = Cirron(output="none")
    with c.scope("x"):
        pass
    with pytest.raises(CirronDependencyError, match="pip install"):
        c.trace(format="df")


def test_bounds_on_spans_and_point_marks() -> None:
    c = Cirron(output="none", trace_buffer_max_spans=50)
    c.profile()
    for i in range(120):
        with c.scope("s", i=i):
            pass
    with c.scope("long"):
        for i in range(3000):
            c.mark("p", i)
        for i in range(5):
            c.mark("summ", i, kind="summary")
    d = c.trace(format="dict")
    names = [r["name"] for r in d["roots"]]
    assert len(names) == 50 and names[-1] == "long"
    assert d["roots"][0]["attrs"]["i"] == 71
    marks = d["roots"][-1]["marks"]
    points = [m["value"] for m in marks if m["name"] == "p"]
    assert points == list(range(3000 - 1024, 3000))
    assert [m["value"] for m in marks if m["name"] == "summ"] == list(range(5))
    c.shutdown()


@pytest.mark.parametrize("points", [1024, 1500, 2049])
def test_trace_keeps_the_newest_1024_point_marks_and_every_summary_mark(points: int) -> None:
    c = Cirron()
    with c.scope("span"):
        c.mark("first", 0, kind="summary")
        for i in range(points):
            c.mark("p", i)
        c.mark("last", 1, kind="summary")
    (node,) = c.trace(format="dict")["roots"]
    assert [m["value"] for m in node["marks"] if m["name"] == "p"] == list(range(max(0, points - 1024), points))
    assert [m["name"] for m in node["marks"] if m["kind"] == "summary"] == ["first", "last"]
    assert node["marks"][0]["name"] == "first" and node["marks"][-1]["name"] == "last"  # in time order


def test_trace_without_profiler_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cirron()
    with c.scope("standalone"):
        c.mark("x", 1)
    c.trace()
    assert capsys.readouterr().out.startswith("standalone - ")
    assert list(tmp_path.iterdir()) == [] or not (tmp_path / ".cirron").exists()
    # the same records are written by the first flush of a later session
    c.profile()
    c.shutdown()
    text = "".join(p.read_text() for p in (tmp_path / ".cirron" / "spool").glob("*.json"))
    assert '"standalone"' in text


def test_profiled_trace_flushes_sinks(tmp_path: Path) -> None:
    c = Cirron(flush_interval=60)
    c.profile()
    with c.scope("visible_now"):
        time.sleep(0.001)
    c.trace(format="dict")
    files = list((tmp_path / ".cirron" / "spool").glob("*.json"))
    assert files and any('"visible_now"' in p.read_text() for p in files)
    c.shutdown()


def test_notebook_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    import cirron._trace as tr

    monkeypatch.setattr(tr, "in_notebook", lambda: True)
    c = Cirron(output="none")
    with c.scope("cell"):
        pass
    r = c.trace()
    assert "cell - " in r._repr_html_() and r._repr_html_().startswith("<pre")
