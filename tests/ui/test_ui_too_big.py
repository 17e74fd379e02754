"""A session that can only be rebuilt whole (its records share batch files with another session's)
and is too big for that (cirron.ui.data.MAX_VIEW_BYTES, lowered here) is refused at once, with one
line that says its size, the limit and what to use instead, and is never read; the sessions table
still lists it and the other sessions, a bigger one whose files hold only its records included,
are served as before."""

from __future__ import annotations

import html
from pathlib import Path

import httpx
import pytest
from spool_factory import BASE_NS, SpoolFactory
from ui_helpers import serving

import cirron.ui.data as ui_data
from cirron.ui.data import SpoolData


def test_session_over_the_limit_is_refused_at_once(factory: SpoolFactory, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    small = factory.session(epochs=2)["root"]
    big = factory.session(epochs=30, start_ns=BASE_NS + 10**10)["root"]
    # a span of the big session written in the small one's batch: neither can be read file by file
    factory.write_batch([factory.span("batch", parent_id=big, start_ns=BASE_NS + 10**10 + 5)], session_id=small)
    other = SpoolFactory(tmp_path / "other")  # a spool of its own: read file by file
    separate = other.session(epochs=30, start_ns=BASE_NS + 2 * 10**10)["root"]
    other.close()
    data = SpoolData([factory.spool_dir, other.spool_dir])
    sizes = {s.id: s.summary.bytes for s in data.sessions()}
    assert sizes[big] > sizes[small] and sizes[separate] > sizes[small]
    assert [s.streamable for s in data.sessions()] == [True, False, False]
    monkeypatch.setattr(ui_data, "MAX_VIEW_BYTES", sizes[small])
    reads: list[str] = []
    real_read = ui_data._read_records

    def counted_read(info, catalog):  # type: ignore[no-untyped-def]
        reads.append(info.id)
        return real_read(info, catalog)

    monkeypatch.setattr(ui_data, "_read_records", counted_read)
    with serving(data) as url, httpx.Client(base_url=url, timeout=30) as client:
        errors = []
        for path in ("timeline", "steps", "snapshots", "requests"):
            r = client.get(f"/api/session/{big}/{path}")
            assert r.status_code == 413, (path, r.text)
            errors.append(r.json()["error"])
        r = client.get("/api/marks", params={"session": f"{small},{big}"})
        assert r.status_code == 413
        errors.append(r.json()["error"])
        error = errors[0]
        assert set(errors) == {error} and "\n" not in error
        assert f"{sizes[big] / (1 << 20):,.1f} MB" in error and f"limit of {sizes[small] / (1 << 20):,.1f} MB" in error
        assert f"cirron traces view --session {big[:12]}" in error
        assert f"cirron traces export --format parquet --session {big[:12]}" in error

        for view in ("timeline", "marks"):  # the page itself says so, before any script runs
            page = client.get(f"/session/{big}/{view}")
            assert page.status_code == 200 and f'<p class="error">{html.escape(error)}</p>' in page.text
            assert "Loading" not in page.text

        listed = {s["id"]: s for s in client.get("/api/sessions").json()["sessions"]}
        assert listed[big]["too_big"] == error and listed[big]["bytes"] == sizes[big]
        assert listed[small]["too_big"] is None
        assert client.get(f"/api/session/{big}").json()["id"] == big  # its summary still answers

        small_page = client.get(f"/session/{small}/timeline")
        assert small_page.status_code == 200 and "Loading" in small_page.text
        assert client.get(f"/api/session/{small}/timeline").json()["spans"]
        assert listed[separate]["too_big"] is None
        assert client.get(f"/api/session/{separate}/timeline").json()["spans"]
    assert reads == [small, separate]  # the big session was never read
