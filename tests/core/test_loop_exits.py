"""An exception or Ctrl-C in the body of a ci.epochs / ci.batches loop is recorded on the loop's
spans (``error`` / ``interrupted``) like ``ci.scope`` records them; a ``break`` is not an error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cirron.spool import load_spool

SCRIPT = """
import cirron as ci
ci.profile(spool_dir={spool!r})
for e in ci.epochs(range(2)):
    for b in ci.batches(range(5)):
        if e == 0 and b == 1:
            break          # a clean early exit
        if e == 1 and b == 2:
            {ending}
"""


def _run(tmp_path: Path, ending: str, pure: bool) -> dict[tuple[str, int], dict]:
    spool = tmp_path / "spool"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(spool=str(spool), ending=ending)))
    env = dict(os.environ, CIRRON_PURE_PYTHON="1" if pure else "")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0 and "Traceback" in p.stderr  # the program's own exit is unchanged
    (sess,) = load_spool(spool).sessions
    spans = {}
    for s in sess.spans:
        if s["name"] in ("epoch", "batch"):
            parent = next(x for x in sess.spans if x["id"] == s["parent_id"])
            spans[(s["name"], s["index"], parent.get("index"))] = s
    return spans


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure-python"])
def test_uncaught_exception_in_the_body_marks_the_loop_spans(tmp_path: Path, pure: bool) -> None:
    spans = _run(tmp_path, 'raise ValueError("bad batch")', pure)
    failed = spans[("batch", 2, 1)]
    assert failed["attrs"]["error"] == "ValueError: bad batch" and failed["end_ns"] is not None
    assert spans[("epoch", 1, None)]["attrs"]["error"] == "ValueError: bad batch"
    assert "error" not in spans[("batch", 1, 1)]["attrs"]  # finished before the exception
    broke = spans[("batch", 1, 0)]
    assert broke["end_ns"] is not None and "error" not in broke["attrs"] and "interrupted" not in broke["attrs"]
    assert "error" not in spans[("epoch", 0, None)]["attrs"]


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure-python"])
def test_ctrl_c_in_the_body_marks_the_loop_spans_interrupted(tmp_path: Path, pure: bool) -> None:
    spans = _run(tmp_path, "raise KeyboardInterrupt", pure)
    assert spans[("batch", 2, 1)]["attrs"]["interrupted"] == "KeyboardInterrupt"
    assert spans[("epoch", 1, None)]["attrs"]["interrupted"] == "KeyboardInterrupt"
    assert "interrupted" not in spans[("batch", 1, 0)]["attrs"]


def test_break_then_a_new_loop_writes_the_span_clean(tmp_path: Path) -> None:
    import cirron

    c = cirron.Cirron(spool_dir=tmp_path / "spool", output="spool", flush_interval=60)
    c.profile()
    for b in c.batches(range(5)):
        if b == 2:
            break
    for _ in c.batches(range(1)):  # the program went on: the break was no error
        pass
    c.flush()
    (sess,) = load_spool(tmp_path / "spool").sessions
    batch2 = next(s for s in sess.spans if s["name"] == "batch" and s["index"] == 2)
    assert batch2["end_ns"] is not None and not {"error", "interrupted"} & set(batch2["attrs"])
    c.shutdown()


def _loop_spans(c, spool: Path) -> dict[tuple[str, int, int | None], dict]:
    c.flush()
    (sess,) = load_spool(spool).sessions
    out = {}
    for s in sess.spans:
        if s["name"] in ("epoch", "batch") and s["end_ns"] is not None:
            parent = next(x for x in sess.spans if x["id"] == s["parent_id"])
            out[(s["name"], s["index"], parent["index"] if parent["name"] == "epoch" else parent["name"])] = s
    return out


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure-python"])
def test_exception_caught_outside_the_loop_is_recorded(tmp_path: Path, pure: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import cirron

    monkeypatch.setenv("CIRRON_PURE_PYTHON", "1" if pure else "")
    c = cirron.Cirron(spool_dir=tmp_path / "spool", output="spool", flush_interval=60)
    c.profile()

    def train_epoch(e: int) -> None:
        for b in c.batches(range(4)):
            if b == 2:
                raise ValueError(f"bad batch {e}")

    try:  # caught in the same frame as the epochs loop, one frame above the batches loop
        for e in c.epochs(range(3)):
            train_epoch(e)
    except ValueError:
        pass
    try:  # caught in the frame of the loop itself
        with c.scope("interrupt"):
            for b in c.batches(range(3)):
                if b == 1:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    with c.scope("break"):
        for b in c.batches(range(3)):  # a break is still no error
            if b == 1:
                break
    assert sys.gettrace() is None  # the watch removed itself
    for _ in c.batches(range(1)):  # the program went on: the break is written as it is
        pass
    spans = _loop_spans(c, tmp_path / "spool")
    c.shutdown()
    assert spans[("batch", 2, 0)]["attrs"]["error"] == "ValueError: bad batch 0"
    assert spans[("epoch", 0, "cirron.session")]["attrs"]["error"] == "ValueError: bad batch 0"
    assert "error" not in spans[("batch", 1, 0)]["attrs"]
    assert spans[("batch", 1, "interrupt")]["attrs"]["interrupted"] == "KeyboardInterrupt"
    assert not {"error", "interrupted"} & set(spans[("batch", 1, "break")]["attrs"])


def test_a_debugger_keeps_its_trace_function(tmp_path: Path) -> None:
    """With a trace function already set, the loop span waits for its cause as before."""
    import cirron

    c = cirron.Cirron(spool_dir=tmp_path / "spool", output="spool", flush_interval=60)
    c.profile()

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        return None

    sys.settrace(tracer)
    try:
        try:
            for b in c.batches(range(3)):
                if b == 1:
                    raise ValueError("x")
        except ValueError:
            pass
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    for _ in c.batches(range(1)):  # the program went on: written as it is
        pass
    spans = _loop_spans(c, tmp_path / "spool")
    c.shutdown()
    assert "error" not in spans[("batch", 1, "cirron.session")]["attrs"]


def test_an_exception_swallowed_by_a_context_manager_leaves_the_span_clean(tmp_path: Path) -> None:
    import contextlib

    import cirron

    c = cirron.Cirron(spool_dir=tmp_path / "spool", output="spool", flush_interval=60)
    c.profile()
    with contextlib.suppress(ValueError):
        for b in c.batches(range(3)):
            if b == 1:
                raise ValueError("swallowed")
    x = 0
    for i in range(10):  # a few lines run: the watch gives up and removes itself
        x += i
    assert sys.gettrace() is None
    for _ in c.batches(range(1)):
        pass
    spans = _loop_spans(c, tmp_path / "spool")
    c.shutdown()
    assert not {"error", "interrupted"} & set(spans[("batch", 1, "cirron.session")]["attrs"])
