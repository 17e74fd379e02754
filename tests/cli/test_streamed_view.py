"""``traces view`` of a session read file by file prints what the rebuilt session's view prints."""

from __future__ import annotations

import functools

import orjson
import pytest
from spool_factory import BASE_NS, MS, SpoolFactory, hard_session

from cirron.spool import outline
from cirron.spool.catalog import open_catalog
from cirron_cli.traces import _node_json_text, _node_line, _session_json_text, _SessionView, _streamed_view_lines


@pytest.fixture
def cat(factory: SpoolFactory):
    rid = hard_session(factory)
    # requests that --name finds by their endpoint (one spelled with escapes in the file)
    factory.write_batch([factory.span("http", parent_id=rid, start_ns=BASE_NS + 700 * MS, dur_ns=MS,
                                      attrs={"endpoint": "/v1/chat"}),
                         factory.span("http", parent_id=rid, start_ns=BASE_NS + 710 * MS, dur_ns=MS,
                                      attrs={"endpoint": '/v1/"q"\n'})], session_id=rid)
    factory.session(start_ns=BASE_NS + 10**12, split=True, epochs=3)
    return open_catalog([factory.spool_dir])


def _lines(info, color):
    return functools.partial(_node_line, info=info, color=color)


@pytest.mark.parametrize("depth", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("min_wall", [None, 6 * MS, 30 * MS])
@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("columns_on_disk", [False, True])
def test_streamed_view_equals_the_rebuilt_sessions(cat, depth, min_wall, color, columns_on_disk, monkeypatch):
    if columns_on_disk:  # the light pass's key columns wait in temporary files
        monkeypatch.setattr(outline, "COLUMNS_IN_MEMORY", 0)
    assert len(cat.sessions) == 2
    for info in cat.sessions:
        assert cat.streamable(info)
        streamed = _streamed_view_lines(info, depth, min_wall, None, _lines(info, color))
        assert streamed is not None
        whole = _SessionView(info, cat.load(info), None, depth, min_wall).lines(color)
        assert list(streamed) == list(whole)


@pytest.mark.parametrize("name", [None, "epoch", "forward", "batch", "/v1/chat", '"q"', "cirron", "no-such-span"])
@pytest.mark.parametrize("depth", [None, 1, 2])
@pytest.mark.parametrize("min_wall", [None, 6 * MS])
def test_streamed_name_filter_and_json_equal_the_rebuilt_sessions(cat, name, depth, min_wall):
    """``--name`` and ``--json`` read file by file too: the same lines, the same JSON bytes."""
    for info in cat.sessions:
        view = _SessionView(info, cat.load(info), name, depth, min_wall)
        lines = _streamed_view_lines(info, depth, min_wall, name, _lines(info, False))
        assert lines is not None and list(lines) == list(view.lines(False))
        nodes = _streamed_view_lines(info, depth, min_wall, name, _node_json_text)
        assert nodes is not None
        assert "".join(_session_json_text(info, nodes)) == orjson.dumps(view.to_json(),
                                                                         option=orjson.OPT_INDENT_2).decode()
    shown = list(_streamed_view_lines(cat.sessions[0], None, None, "/v1/", _lines(cat.sessions[0], False)) or [])
    if name is None:
        assert len(shown) == 3 and all("http" in line for line in shown[1:])  # the root and both requests


def test_view_prints_the_streamed_lines(cat):
    from cli_helpers import run_cli

    info = cat.sessions[0]
    r = run_cli("traces", "view", "--session", info.id, "--depth", "1", "--spool", str(info.spool))
    assert r.exit_code == 0, r.output
    expected = list(_SessionView(info, cat.load(info), None, 1, None).lines(False))
    assert r.output.splitlines() == expected
    assert "ci.mark loss=1" in r.output and "… " in r.output


def test_ids_that_do_not_sort_as_keys_use_the_rebuilt_session(factory: SpoolFactory):
    root = factory.span("cirron.session", id="Root-Not-Hex", dur_ns=MS)
    factory.write_batch([root, factory.span("step", parent_id="Root-Not-Hex")], session_id="Root-Not-Hex")
    info = open_catalog([factory.spool_dir]).sessions[0]
    assert _streamed_view_lines(info, 1, None, None, _lines(info, False)) is None
