"""Per-rank step statistics (cirron.spool.ranks) equal a plain computation over the rebuilt session's
spans: the dedupe winners only, exact percentiles, read from the batch files in columns or rebuilt."""

from __future__ import annotations

import random

import numpy as np
import pytest
from spool_factory import BASE_NS, MS, SpoolFactory, hard_session, new_id

from cirron.spool.catalog import open_catalog
from cirron.spool.ranks import STEP_NAMES, StepStats, _collect
from cirron.spool.sessions import load_spool


def _pct(values: list[int], q: float) -> int | None:
    return int(np.percentile(np.array(values, dtype=np.int64), q, method="nearest")) if values else None


def reference(spool_dir, session_id: str) -> tuple[dict[str, StepStats], dict[str, int]]:
    (sess,) = [s for s in load_spool(spool_dir, lambda _m: None).sessions if s.id == session_id]
    walls: dict[str, list[int]] = {}
    cpus: dict[str, list[int]] = {}
    top: dict[str, int] = {}
    for s in sess.spans:
        name = s.get("name")
        if type(name) is not str:
            continue
        below = s.get("parent_id") == session_id
        if below:
            top[name] = top.get(name, 0) + 1
        if name not in STEP_NAMES and not below:
            continue
        st, en = s.get("start_ns"), s.get("end_ns")
        if type(st) is not int or type(en) is not int:
            continue
        walls.setdefault(name, []).append(en - st)
        if type(s.get("cpu_ns")) is int:
            cpus.setdefault(name, []).append(s.get("cpu_ns"))
    stats = {}
    for name, w in walls.items():
        c = cpus.get(name, [])
        stats[name] = StepStats(len(w), _pct(w, 50), _pct(w, 95), max(w), sum(w), _pct(c, 50), _pct(c, 95),
                                max(c) if c else None)
    return stats, top


def random_session(factory: SpoolFactory, seed: int) -> str:
    """A session of varied step times over several batches, with spans written open and rewritten
    closed, a step with no CPU time, one whose name is not a string and an odd-id span."""
    rnd = random.Random(seed)
    root = factory.span("cirron.session", start_ns=BASE_NS, dur_ns=10**10)
    rid = root["id"]
    batches: list[list[dict]] = [[dict(root, end_ns=None)]]
    t = BASE_NS
    for e in range(3):
        epoch = factory.span("epoch", parent_id=rid, index=e, start_ns=t, dur_ns=rnd.randint(10, 90) * MS)
        batches.append([dict(epoch, end_ns=None)])
        for b in range(40):
            step = factory.span("batch", parent_id=epoch["id"], index=b, start_ns=t, dur_ns=rnd.randint(1, 10**7))
            kids = [factory.span(n, parent_id=step["id"], start_ns=t, dur_ns=rnd.randint(1, 10**6))
                    for n in ("data_load", "forward", "backward")]
            kids[1]["cpu_ns"] = None if b % 7 == 0 else kids[1]["cpu_ns"]
            if b % 5 == 0:  # written open first, closed in a later batch with another duration
                batches[-1].append(dict(step, end_ns=None))
            batches.append([step, *kids])
            t += 10 * MS
        batches.append([epoch, factory.span("eval", parent_id=rid, start_ns=t, dur_ns=rnd.randint(1, 10**8))])
    batches.append([factory.span(7, parent_id=rid), factory.span("odd", id="not-hex", parent_id=rid)])  # type: ignore[arg-type]
    batches.append([root])
    for i in range(0, len(batches), 9):
        factory.write_batch([s for b in batches[i:i + 9] for s in b], session_id=rid)
    return rid


@pytest.mark.parametrize("seed", [1, 2])
def test_rank_stats_equal_the_rebuilt_session(factory: SpoolFactory, seed: int):
    rid = random_session(factory, seed)
    cat = open_catalog([factory.spool_dir])
    (info,) = cat.sessions
    assert cat.streamable(info)
    assert _collect(cat, info) == reference(factory.spool_dir, rid)


def test_rank_stats_of_a_session_that_must_be_rebuilt(factory: SpoolFactory):
    hard = hard_session(factory)
    rid = random_session(factory, 3)
    # a span of this session written in the other session's batch: neither can be read file by file
    factory.write_batch([factory.span("batch", parent_id=rid, dur_ns=3 * MS, id=new_id())], session_id=hard)
    cat = open_catalog([factory.spool_dir])
    for info in cat.sessions:
        assert not cat.streamable(info)
        assert _collect(cat, info) == reference(factory.spool_dir, info.id)
