"""Values the ``cirron ui`` pages show, built in process from a real spool (no server)."""

from __future__ import annotations

from pathlib import Path

from cirron import Cirron
from cirron.ui.data import SpoolData


def test_non_finite_summary_marks_read_as_the_spool_writes_them(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    c = Cirron(spool_dir=str(spool), flush_interval=60)
    c.profile()
    for value in (float("nan"), float("inf"), float("-inf"), 0.25):
        with c.scope("epoch"):
            c.mark("val_loss", value, kind="summary")
    c.shutdown()
    data = SpoolData([spool])
    [info] = data.sessions()
    [doc] = data.marks([info.id])["sessions"]
    assert [r["value"] for r in doc["summary"]] == ["NaN", "Infinity", "-Infinity", 0.25]


def test_a_merged_block_is_named_after_its_most_common_span_name(factory) -> None:
    from spool_factory import BASE_NS, MS, new_id

    root = new_id()
    spans = [factory.span("cirron.session", id=root, dur_ns=1000 * MS)]
    # in the first 10 ms: one "load" first, then three "compute" (all far under a pixel at 100 px)
    spans.append(factory.span("load", parent_id=root, start_ns=BASE_NS, dur_ns=1000))
    spans += [factory.span("compute", parent_id=root, start_ns=BASE_NS + (k + 1) * MS, dur_ns=1000) for k in range(3)]
    # around 500 ms: two "load" and two "compute", a tie (the name first on the timeline wins)
    spans += [factory.span(n, parent_id=root, start_ns=BASE_NS + 500 * MS + k * MS, dur_ns=1000)
              for k, n in enumerate(("compute", "load", "compute", "load"))]
    factory.write_batch(spans, session_id=root)
    data = SpoolData([factory.spool_dir])
    doc = data.session(root).timeline(None, None, 100)
    blocks = sorted(doc["blocks"], key=lambda b: b["start"])
    assert [(b["count"], b["name"]) for b in blocks] == [(4, "compute"), (4, "load")]
    assert [s["name"] for s in doc["spans"]] == ["cirron.session"]


def test_block_names_by_count_table_and_by_sort_agree(monkeypatch) -> None:
    """Both ways :func:`cirron.ui.window.block_names` counts (one table, or a sort when blocks
    times names is large) give the same names: the most common, the lowest code on a tie, a late
    span (a long one left out of a crowded window) weighing less than any other."""
    import numpy as np

    import cirron.ui.window as window

    codes = np.array([2, 1, 1, 2,  3, 0, 0, 3,  4, 4, 1,  5, 5, 0,  6], dtype=np.int32)
    count = np.array([4, 4, 3, 3, 1])
    late = np.zeros(codes.size, dtype=bool)
    late[[8, 9, 11, 12, 14]] = True  # block 2: two late 4s and a 1; block 3: two late 5s and a 0; block 4: only late
    want_plain = [1, 0, 4, 5, 6]
    want_late = [1, 0, 1, 0, 6]
    for limit in (window.DENSE_COUNTS, 0):
        monkeypatch.setattr(window, "DENSE_COUNTS", limit)
        assert window.block_names(codes, count, None, 7).tolist() == want_plain, limit
        assert window.block_names(codes, count, late, 7).tolist() == want_late, limit


def test_step_table_is_built_on_its_first_request_once(factory) -> None:
    """The first view (the timeline) does not wait for the step table; the steps requests that
    come at once (the page and a refresh) all get the same, whole table."""
    from concurrent.futures import ThreadPoolExecutor

    from spool_factory import BASE_NS, MS, new_id

    root, epoch = new_id(), new_id()
    spans = [factory.span("cirron.session", id=root, dur_ns=100 * MS),
             factory.span("epoch", id=epoch, parent_id=root, index=0, dur_ns=90 * MS)]
    for k in range(6):
        step = new_id()
        spans += [factory.span("batch", id=step, parent_id=epoch, index=k, start_ns=BASE_NS + 10 * k * MS, dur_ns=9 * MS),
                  factory.span("forward", parent_id=step, start_ns=BASE_NS + 10 * k * MS, dur_ns=(k + 1) * MS)]
    factory.write_batch(spans, session_id=root)
    view = SpoolData([factory.spool_dir]).session(root)
    assert view.timeline(None, None, 800)["spans"]
    assert "step_rows" not in vars(view)  # not built for the timeline
    with ThreadPoolExecutor(4) as pool:
        docs = list(pool.map(lambda _i: view.steps(), range(8)))
    assert docs[0]["steps"] == 6 and docs[0]["bars"]["forward"] == [k * MS for k in range(1, 7)]
    assert docs[0]["labels"][0] == "epoch[0] batch[0]" and all(d == docs[0] for d in docs)
