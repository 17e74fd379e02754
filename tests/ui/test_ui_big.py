"""Sessions over the columnar reader's limit (lowered here) are viewed piece by piece
(cirron.ui._bigsession): every API answer equals the one of the same session read whole, from a
real uvicorn; the temporary files go when the session leaves the cache or the server stops, and
the spool is never written."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from spool_factory import BASE_NS, MS, SpoolFactory, new_id
from test_ui_columns import _same
from ui_helpers import Runs, serving

import cirron.spool.columnar as columnar
import cirron.spool.pieces as pieces
import cirron.ui._bigsession as bigsession
from cirron.ui.data import SpoolData


def _answers(data: SpoolData) -> dict[str, Any]:
    """Every API answer of every session of ``data``, by request, from a real uvicorn."""
    out: dict[str, Any] = {}
    with serving(data) as url, httpx.Client(base_url=url, timeout=60) as client:
        def get(path: str, **params: Any) -> Any:
            r = client.get(path, params=params)
            assert r.status_code == 200, (path, r.text)
            return r.json()

        for s in get("/api/sessions")["sessions"]:
            sid = s["id"]
            base = f"/api/session/{sid}"
            whole = out[f"{sid} whole"] = get(f"{base}/timeline", px=1200)
            out[f"{sid} fit"] = get(f"{base}/timeline", px=1200, fit=1)
            d = whole["duration_ns"]
            for t0, t1 in ((0, d // 7), (d // 3, d // 3 + d // 50 + 1), (d - d // 9, d), (d // 5, d // 5 + 3)):
                out[f"{sid} {t0}-{t1}"] = get(f"{base}/timeline", t0=t0, t1=t1, px=900)
            for view in ("steps", "snapshots", "requests"):
                out[f"{sid} {view}"] = get(f"{base}/{view}")
            for x in ("step", "time"):
                out[f"{sid} marks {x}"] = get("/api/marks", session=sid, x=x)
    return out


def assert_big_equals_whole(spools: list[Path], monkeypatch: pytest.MonkeyPatch) -> int:
    """The API answers with every session read piece by piece equal those read whole; returns how
    many sessions were read piece by piece."""
    whole = _answers(SpoolData(spools))
    read: list[str] = []
    real = bigsession.read_big_session

    def counted(info):  # type: ignore[no-untyped-def]
        got = real(info)
        if got is not None:
            read.append(info.id)
        return got

    with monkeypatch.context() as m:
        m.setattr(columnar, "MAX_SESSION_BYTES", 0)
        m.setattr(pieces, "PIECE_ROWS", 40)  # several pieces even for a small session
        m.setattr(bigsession, "read_big_session", counted)
        data = SpoolData(spools)
        big = _answers(data)
        data.close()
    assert whole.keys() == big.keys()
    for key in whole:
        assert _same(whole[key], big[key]), key
    return len(set(read))


def test_real_runs_read_piece_by_piece(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    spools = [runs.train, runs.inference, runs.ranks]
    assert assert_big_equals_whole(spools, monkeypatch) == 4  # a training run, a server, two ranks


def test_odd_records_read_piece_by_piece(factory: SpoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    factory.session(epochs=3, split=True, snapshots=True)
    root, epoch, step = new_id(), new_id(), new_id()
    spans = [factory.span("cirron.session", id=root, dur_ns=10**9),
             factory.span("epoch", id=epoch, parent_id=root, index=0, dur_ns=10**8),
             factory.span("batch", id=step, parent_id=epoch, index=0, start_ns=BASE_NS + MS, dur_ns=9 * MS),
             factory.span("forward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=MS),
             factory.span("forward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=None),  # still open
             factory.span("backward", parent_id=step, start_ns=BASE_NS + 2 * MS, dur_ns=MS),  # same start
             factory.span("io", id="span-b", parent_id=step, start_ns=BASE_NS + 3 * MS, dur_ns=MS),  # ids not hex:
             factory.span("io", id="span-a", parent_id=step, start_ns=BASE_NS + 3 * MS, dur_ns=MS),  # by the text
             {**factory.span(None, parent_id=step, dur_ns=MS), "start_ns": None},  # no name, no start
             factory.span("request", parent_id=root, start_ns=BASE_NS + 20 * MS, index=2**40,
                          attrs={"endpoint": "/v1/chat", "request_id": "r1", "error": "Boom: x"})]
    marks = [factory.mark(epoch, "loss", "NaN", value_type="float", ts_ns=BASE_NS + 5),
             factory.mark(epoch, "loss", 0.5, ts_ns=BASE_NS + 3),
             factory.mark(epoch, "loss", 0.25, ts_ns=BASE_NS + 3),  # same time, later write
             factory.mark(step, "lr", 1, ts_ns=BASE_NS + 3),
             factory.mark(step, "note", "hello", ts_ns=BASE_NS + 6),
             factory.mark(step, "no_time", 2.0, ts_ns=None),
             factory.mark(spans[-1]["id"], "ttft_ns", 1234, kind="summary"),
             factory.mark(spans[-1]["id"], "tokens", 7, kind="summary"),
             factory.mark("root", "accuracy", 0.9, kind="summary")]
    factory.write_batch(spans[:4], marks[:3], session_id=root)
    factory.write_batch(spans[4:], [*marks[3:], factory.mark("span-a", "io_bytes", 3.0, kind="summary")],
                        session_id=root)
    assert assert_big_equals_whole([factory.spool_dir], monkeypatch) == 2


def test_bench_spool_read_piece_by_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from bench_cli import generate

    spool = tmp_path / ".cirron" / "spool"
    generate(spool, 6_000, 6_000, 6, n_sessions=2)
    monkeypatch.setattr(pieces, "PIECE_ROWS", 500)
    assert assert_big_equals_whole([spool], monkeypatch) == 2


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    from cirron.spool.index import INDEX_NAME

    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.name != INDEX_NAME}


def test_big_session_is_cached_alone(factory: SpoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions read piece by piece are never held at once, nor one with others (the memory bound)."""
    small = factory.session(epochs=2)["root"]
    big = factory.session(epochs=3, start_ns=BASE_NS + 10**10)["root"]
    data = SpoolData([factory.spool_dir])
    sizes = {s.id: s.summary.bytes for s in data.sessions()}
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", sizes[small])  # only the big one is over it
    first = data.session(small)
    assert data.session(small) is first  # cached
    assert isinstance(data.session(big), bigsession.BigSessionData)
    again = data.session(small)
    assert again is not first and not isinstance(again, bigsession.BigSessionData)  # read again: big left
    assert data.session(small) is again


def test_temporary_files_go_with_the_session(factory: SpoolFactory, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first = factory.session(epochs=3)["root"]
    second = factory.session(epochs=2, start_ns=BASE_NS + 10**10)["root"]
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 0)
    data = SpoolData([factory.spool_dir])  # three sessions cached, but a big one only alone
    data.sessions()  # the spool index, written by any reader, before the spool is compared
    before = _tree(factory.spool_dir)

    def ours() -> list[str]:
        return sorted(p.name for p in temp.iterdir())

    with serving(data) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get(f"/api/session/{first}/timeline").json()["spans"]
        (held,) = ours()  # the reader's own spill is gone; the session's details remain
        assert held.startswith("cirron-ui-") and any((temp / held).iterdir())
        assert client.get(f"/api/session/{first}/timeline", params={"t0": 0, "t1": 10**7}).status_code == 200
        assert client.get(f"/api/session/{second}/steps").json()["steps"] == 0
        (now,) = ours()  # the first session left the cache with its files
        assert now != held
        assert client.get(f"/api/session/{second}/timeline").json()["spans"][0]["cpu_ns"] is not None
    data.close()  # the server stops
    assert ours() == []
    assert _tree(factory.spool_dir) == before


def test_session_the_pieces_cannot_carry(factory: SpoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big session the piece-wise reader cannot read exactly (a span name that is not a string)
    is rebuilt whole when it is small enough, and refused with the one-line message when not."""
    import cirron.ui.data as ui_data

    root = factory.session()["root"]
    factory.write_batch([factory.span(42, parent_id=root)], session_id=root)
    monkeypatch.setattr(columnar, "MAX_SESSION_BYTES", 0)
    data = SpoolData([factory.spool_dir])
    with serving(data) as url, httpx.Client(base_url=url, timeout=30) as client:
        names = {s["name"] for s in client.get(f"/api/session/{root}/timeline").json()["spans"]}
        assert "42" in names
    monkeypatch.setattr(ui_data, "MAX_VIEW_BYTES", 10)
    data = SpoolData([factory.spool_dir])
    with serving(data) as url, httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/api/sessions").json()["sessions"][0]
        assert listed["too_big"] is None  # the sessions table cannot tell before reading
        r = client.get(f"/api/session/{root}/timeline")
        assert r.status_code == 413 and "over the viewer's limit" in r.json()["error"]
