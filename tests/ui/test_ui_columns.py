"""The viewer builds a session's views from the fast columnar reader (cirron.spool.columnar) when
it can, and from the session rebuilt record by record otherwise: both give the same answers. The
real runs' spools (a training run, a served model, two ranks) and hand-made odd ones are checked."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from spool_factory import BASE_NS, MS, SpoolFactory, new_id
from ui_helpers import Runs

from cirron.spool import open_catalog
from cirron.spool.columnar import read_columns
from cirron.ui.data import SessionData, SessionInfo, SpoolData, records_of_columns, records_of_session

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_views(spool: Path) -> int:
    """Every session of ``spool`` the columnar reader takes gives the views the record path gives;
    returns how many it took."""
    cat = open_catalog([spool], lambda _m: None)
    taken = 0
    for info in cat.sessions:
        cols = read_columns(info)
        if cols is None:
            continue
        taken += 1
        fast = SessionData(SessionInfo(info), records_of_columns(cols))
        ref = SessionData(SessionInfo(info), records_of_session(cat.load(info)))
        whole = fast.timeline(None, None, 1200)
        assert _same(whole, ref.timeline(None, None, 1200))
        d = whole["duration_ns"]
        for t0, t1 in ((0, d // 7), (d // 3, d // 3 + d // 50 + 1), (d - d // 9, d)):
            assert _same(fast.timeline(t0, t1, 900), ref.timeline(t0, t1, 900))
        assert _same(fast.steps(), ref.steps())
        for x in ("step", "time"):
            assert _same(fast.marks(x), ref.marks(x))
        assert _same(fast.snapshots(), ref.snapshots())
        assert _same(fast.requests(), ref.requests())
    return taken


def test_real_runs_views_from_columns(runs: Runs):
    for spool in (runs.train, runs.inference, runs.ranks):
        assert assert_same_views(spool) >= 1, spool


def test_odd_records_views_from_columns(factory: SpoolFactory):
    factory.session(epochs=3, split=True, snapshots=True)
    root, epoch, step = new_id(), new_id(), new_id()
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
             factory.span("epoch", id=epoch, parent_id=root, index=0, dur_ns=10**8),
             factory.span("batch", id=step, parent_id=epoch, index=0, start_ns=BASE_NS + MS, dur_ns=9 * MS),
             factory.span("forward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=MS),
             factory.span("forward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=None),  # still open
             factory.span("request", parent_id=root, start_ns=BASE_NS + 20 * MS,
                          attrs={"endpoint": "/v1/chat", "request_id": "r1", "error": "Boom: x"})]
    marks = [factory.mark(epoch, "loss", "NaN", value_type="float", ts_ns=BASE_NS + 5),
             factory.mark(epoch, "loss", 0.5, ts_ns=BASE_NS + 3),
             factory.mark(step, "lr", 1, ts_ns=BASE_NS + 4),
             factory.mark(step, "note", "hello", ts_ns=BASE_NS + 6),
             factory.mark(spans[-1]["id"], "ttft_ns", 1234, kind="summary"),
             factory.mark("root", "accuracy", 0.9, kind="summary")]
    factory.write_batch(spans, marks, session_id=root)
    assert assert_same_views(factory.spool_dir) == 2


def test_bench_spool_views_from_columns(tmp_path):
    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 30_000, 30_000, 6, n_sessions=2)
    assert assert_same_views(spool) == 2


def test_server_data_uses_the_columns_and_falls_back(factory: SpoolFactory, monkeypatch):
    """SpoolData reads a session with the columnar reader, and the record path where it cannot."""
    import cirron.spool.columnar as columnar

    factory.session()
    data = SpoolData([factory.spool_dir])
    sid = data.sessions()[0].id
    fast = data.session(sid).timeline(None, None, 800)
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 0)  # too big for the columns: records instead
    slow = SpoolData([factory.spool_dir]).session(sid).timeline(None, None, 800)
    assert _same(fast, slow) and fast["spans"]


def test_session_page_starts_reading_its_session(factory: SpoolFactory, monkeypatch):
    """Opening a session's page starts building its views at once (while the browser loads the
    page's scripts), before any data request; the sessions table still answers during a build,
    and the data request that comes meanwhile waits for that one build instead of starting another."""
    import threading

    from starlette.testclient import TestClient

    import cirron.ui.data as ui_data
    from cirron.ui.app import create_app

    factory.session()
    data = SpoolData([factory.spool_dir])
    sid = data.sessions()[0].id
    started, release = threading.Event(), threading.Event()
    reads = []
    real_read = ui_data._read_records

    def slow_read(info, catalog):
        reads.append(info.id)
        started.set()
        assert release.wait(30)
        return real_read(info, catalog)

    monkeypatch.setattr(ui_data, "_read_records", slow_read)
    with TestClient(create_app(data)) as client:
        assert client.get(f"/session/{sid}/timeline").status_code == 200
        assert started.wait(30), "the page did not start reading its session"
        assert [s["id"] for s in client.get("/api/sessions").json()["sessions"]] == [sid]  # not blocked
        answer: list = []
        waiter = threading.Thread(target=lambda: answer.append(client.get(f"/api/session/{sid}/timeline")))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # waits for the build under way
        release.set()
        waiter.join(30)
        assert answer[0].status_code == 200 and answer[0].json()["spans"]
    assert reads == [sid]  # one read, shared by the page's warm-up and its data request


def test_prepare_lists_the_sessions_in_the_background(factory: SpoolFactory):
    import time

    factory.session()
    data = SpoolData([factory.spool_dir])
    assert data.spools[0].catalog is None
    data.prepare()
    deadline = time.monotonic() + 30
    while data.spools[0].catalog is None:
        assert time.monotonic() < deadline, "prepare() never listed the sessions"
        time.sleep(0.01)
    assert len(data.spools[0].sessions) == 1


def test_first_view_fits_the_spans_when_they_fill_little_of_the_session(factory: SpoolFactory):
    """The page's first view (fit): the spans below the root, padded by 3%, when they fill less
    than half of the session (a short loop after a long import); else the whole session."""
    root, epoch = new_id(), new_id()
    late = BASE_NS + 9000 * MS
    factory.write_batch([factory.span("cirron.session", id=root, dur_ns=10_000 * MS),
                         factory.span("epoch", id=epoch, parent_id=root, index=0, start_ns=late, dur_ns=100 * MS),
                         factory.span("batch", parent_id=epoch, index=0, start_ns=late + MS, dur_ns=50 * MS)],
                        session_id=root)
    data = SpoolData([factory.spool_dir])
    view = data.session(data.sessions()[0].id)
    fitted = view.timeline(None, None, 800, fit=True)
    assert fitted["fitted"] is True
    assert (fitted["t0"], fitted["t1"]) == (9000 * MS - 3 * MS, 9100 * MS + 3 * MS)
    assert {s["name"] for s in fitted["spans"]} == {"cirron.session", "epoch", "batch"}
    whole = view.timeline(None, None, 800)
    assert whole["fitted"] is False and (whole["t0"], whole["t1"]) == (0, 10_000 * MS)
    assert view.timeline(0, 5000 * MS, 800, fit=True)["fitted"] is False  # a window asked for is kept


def test_first_view_is_the_whole_session_when_its_spans_fill_it(factory: SpoolFactory):
    root = new_id()
    factory.write_batch([factory.span("cirron.session", id=root, dur_ns=100 * MS),
                         factory.span("epoch", parent_id=root, index=0, start_ns=BASE_NS + 40 * MS, dur_ns=50 * MS)],
                        session_id=root)
    data = SpoolData([factory.spool_dir])
    doc = data.session(data.sessions()[0].id).timeline(None, None, 800, fit=True)
    assert doc["fitted"] is False and (doc["t0"], doc["t1"]) == (0, 100 * MS)
