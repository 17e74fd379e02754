"""Hand-written spools for tests, built straight from spec section 3 (no SDK involved).

``SpoolFactory`` writes batch files (atomically, strict JSON), builds span/mark/snapshot records
with sensible defaults, and can hold a session's liveness lock the way a writer does: an
exclusive ``flock`` on ``.cirron/spool/.live/<session_id>.lock``, from an open fd in this
process or from a child process.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cirron._schema import ROOT_SENTINEL

BASE_NS = 1_776_486_598_051_509_000
MS = 1_000_000

_counter = itertools.count(1)


def new_id() -> str:
    """32 lowercase hex, unique, with a random (so distinct) 8-character prefix."""
    return os.urandom(12).hex() + f"{next(_counter):08x}"


class SpoolFactory:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cirron_dir = self.root / ".cirron"
        self.spool_dir = self.cirron_dir / "spool"
        self.snapshots_dir = self.cirron_dir / "snapshots"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._created = BASE_NS
        self._procs: list[subprocess.Popen] = []
        self._fds: list[int] = []

    # ------------------------------------------------------------------ records
    @staticmethod
    def span(
        name: str,
        *,
        id: str | None = None,
        parent_id: str | None = None,
        start_ns: int = BASE_NS,
        dur_ns: int | None = MS,
        index: int | None = None,
        attrs: dict | None = None,
        pid: int = 1797,
        rank: int = 0,
        thread_id: int = 140245,
        **extra: Any,
    ) -> dict:
        rec = {
            "id": id or new_id(),
            "parent_id": parent_id,
            "name": name,
            "index": index,
            "start_ns": start_ns,
            "end_ns": None if dur_ns is None else start_ns + dur_ns,
            "cpu_ns": None if dur_ns is None else dur_ns // 2,
            "gpu_ns": None,
            "memory_peak_bytes": None,
            "thread_id": thread_id,
            "pid": pid,
            "rank": rank,
            "attrs": attrs or {},
        }
        rec.update(extra)
        return rec

    @staticmethod
    def mark(
        span_id: str,
        name: str,
        value: Any,
        *,
        ts_ns: int = BASE_NS,
        kind: str = "point",
        value_type: str | None = None,
        attrs: dict | None = None,
        id: str | None = None,
    ) -> dict:
        if value_type is None:
            value_type = {bool: "bool", int: "int", float: "float", str: "str"}[type(value)]
        return {
            "id": id or new_id(),
            "span_id": span_id,
            "name": name,
            "value": value,
            "value_type": value_type,
            "kind": kind,
            "ts_ns": ts_ns,
            "thread_id": 140245,
            "attrs": attrs or {},
        }

    @staticmethod
    def snapshot(span_id: str, tensor: str = "0.weight", *, mode: str = "full", id: str | None = None) -> dict:
        return {
            "id": id or new_id(),
            "span_id": span_id,
            "tensor": tensor,
            "role": "weight",
            "dtype": "F32",
            "shape": [32, 16],
            "mode": mode,
            "ts_ns": BASE_NS,
            "stats": {"mean": -0.0015, "std": 0.1448, "min": -0.25, "max": 0.25, "norm": 3.2755, "numel": 512,
                      "nan_count": 0, "inf_count": 0, "histogram": {"counts": [1, 2, 3], "min": -0.25, "max": 0.25}},
            "blob_uri": f"snapshots/{span_id}/weights.safetensors",
        }

    # ------------------------------------------------------------------ files
    def next_created(self) -> int:
        self._created += 1_000
        return self._created

    def write_batch(
        self,
        spans: list | None = None,
        marks: list | None = None,
        snapshots: list | None = None,
        *,
        session_id: str | None = None,
        created_ns: int | None = None,
        batch_id: str | None = None,
        resource: dict | None = None,
        schema_version: int = 1,
        sdk_version: str = "0.1.0",
        **extra: Any,
    ) -> Path:
        created_ns = created_ns or self.next_created()
        batch_id = batch_id or os.urandom(16).hex()
        doc = {
            "schema_version": schema_version,
            "sdk_version": sdk_version,
            "batch_id": batch_id,
            "created_ns": created_ns,
            "session_id": session_id,
            "resource": resource if resource is not None else {"pid": 1797, "host": "box", "rank": 0, "world_size": 1},
            "spans": spans or [],
            "marks": marks or [],
            "snapshots": snapshots or [],
        }
        doc.update(extra)
        return self.write_raw(f"{created_ns}-{batch_id}.json", json.dumps(doc, allow_nan=False).encode())

    def write_raw(self, name: str, data: bytes) -> Path:
        path = self.spool_dir / name
        tmp = self.spool_dir / f".tmp-{name}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def batch_name(self) -> str:
        return f"{self.next_created()}-{os.urandom(16).hex()}.json"

    def session(
        self,
        *,
        start_ns: int = BASE_NS,
        epochs: int = 2,
        open_root: bool = False,
        snapshots: bool = False,
        split: bool = False,
    ) -> dict:
        """A training-like session: root → epoch[i] → data_load/forward/backward/optimizer_step,
        a loss mark per epoch and a summary mark. Returns ids; writes one batch (two with ``split``,
        where the root is written open first and closed later)."""
        root_id = new_id()
        root = self.span("cirron.session", id=root_id, start_ns=start_ns, dur_ns=None if open_root else 561_700_000,
                         attrs={"sdk_version": "0.1.0", "pid": 1797, "rank": 0})
        spans = [root]
        marks = []
        snaps = []
        epoch_ids = []
        t = start_ns + MS
        for e in range(epochs):
            eid = new_id()
            epoch_ids.append(eid)
            spans.append(self.span("epoch", id=eid, parent_id=root_id, index=e, start_ns=t, dur_ns=42_100_000))
            c = t + 100_000
            for name, dur, attrs in (
                ("data_load", 4_541_667, {"data_load_ns": 4541667}),
                ("forward", 5_100_000, {}),
                ("backward", 23_000_000, {}),
                ("optimizer_step", 974_000, {}),
            ):
                spans.append(self.span(name, parent_id=eid, start_ns=c, dur_ns=dur, attrs=attrs))
                c += dur + 1000
            marks.append(self.mark(eid, "loss", 0.6841 - e * 0.1, ts_ns=c + 10))
            marks.append(self.mark(eid, "epoch_accuracy", 0.9, kind="summary", ts_ns=c + 20))
            if snapshots:
                snaps.append(self.snapshot(eid))
                d = self.snapshots_dir / eid
                d.mkdir(parents=True, exist_ok=True)
                (d / "weights.safetensors").write_bytes(b"\x00" * 16)
            t += 50_000_000
        if split:
            open_copy = dict(root, end_ns=None)
            self.write_batch([open_copy] + spans[1:3], session_id=root_id)
            self.write_batch(spans[3:] + ([] if open_root else [root]), marks, snaps, session_id=root_id)
        else:
            self.write_batch(spans, marks, snaps, session_id=root_id)
        return {"root": root_id, "epochs": epoch_ids, "spans": spans, "marks": marks}

    # ------------------------------------------------------------------ liveness
    def lock_path(self, session_id: str) -> Path:
        return self.spool_dir / ".live" / f"{session_id}.lock"

    def hold_lock(self, session_id: str) -> int:
        """Hold the session's liveness lock from this process (until :meth:`close`)."""
        path = self.lock_path(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fds.append(fd)
        return fd

    def stale_lock(self, session_id: str) -> Path:
        """A lock file nobody holds (what a crashed writer leaves behind)."""
        path = self.lock_path(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def hold_lock_in_subprocess(self, session_id: str, timeout: float = 10.0) -> subprocess.Popen:
        """Hold the lock from a child process; returns once the child holds it."""
        path = self.lock_path(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        code = (
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        line = proc.stdout.readline()
        if line.strip() != "locked" or time.monotonic() > deadline:
            raise RuntimeError("lock holder did not start")
        return proc

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for p in self._procs:
            with contextlib.suppress(Exception):
                p.stdin.close()
                p.wait(timeout=5)
            if p.poll() is None:
                p.kill()
                p.wait()
        self._procs.clear()


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[SpoolFactory]:
    f = SpoolFactory(tmp_path)
    try:
        yield f
    finally:
        f.close()


def thread_mix(factory: SpoolFactory) -> None:
    """A second rank and thread, overlapping spans on one thread, a zero-length span, an open one."""
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS + 10**13, dur_ns=None, attrs={"rank": 0})
    rid = root["id"]
    t0 = BASE_NS + 10**13
    a = f.span("request", parent_id=rid, start_ns=t0 + 1000, dur_ns=5000, thread_id=7)
    b = f.span("request", parent_id=rid, start_ns=t0 + 2000, dur_ns=6000, thread_id=7)  # overlaps a
    c = f.span("child", parent_id=b["id"], start_ns=t0 + 2500, dur_ns=100, thread_id=7)
    z = f.span("instant", parent_id=rid, start_ns=t0 + 3000, dur_ns=0, thread_id=8, rank=1)
    o = f.span("still_open", parent_id=rid, start_ns=t0 + 4000, dur_ns=None, thread_id=8, rank=1)
    f.write_batch([root, a, c], [f.mark(a["id"], "tokens", 3, ts_ns=t0 + 1500),
                                 f.mark(a["id"], "completion_tokens", 7, ts_ns=t0 + 1600)], session_id=rid)
    f.write_batch([b, z, o], [f.mark(z["id"], "state", "warm", ts_ns=t0 + 3000),
                              f.mark(ROOT_SENTINEL, "loose", 1.0, ts_ns=t0 + 3100)], session_id=rid)


def hard_session(factory: SpoolFactory) -> str:
    """A session that makes streaming hard: a root written open first and closed last, spans
    rewritten in later batches, marks written before their span (on the root sentinel, on an open
    epoch), a mark written after its span closed, a mark id rewritten, a request span whose token
    counts arrive in two batches, an error status and a non-finite value. Returns the root id."""
    f = factory
    root = f.span("cirron.session", start_ns=BASE_NS, dur_ns=900 * MS, attrs={"sdk_version": "0.1.0", "rank": 0})
    rid = root["id"]
    e0 = f.span("epoch", parent_id=rid, index=0, start_ns=BASE_NS + MS, dur_ns=400 * MS)
    e1 = f.span("epoch", parent_id=rid, index=1, start_ns=BASE_NS + 500 * MS, dur_ns=300 * MS)
    b0 = f.span("batch", parent_id=e0["id"], index=0, start_ns=BASE_NS + 2 * MS, dur_ns=10 * MS)
    fwd = f.span("forward", parent_id=b0["id"], start_ns=BASE_NS + 3 * MS, dur_ns=5 * MS,
                 attrs={"error": "ValueError: boom"})
    req = f.span("request", parent_id=rid, start_ns=BASE_NS + 600 * MS, dur_ns=20 * MS,
                 attrs={"model": "m1", "provider": "acme"})
    dup_mark = f.mark(e0["id"], "lr", 0.1, ts_ns=BASE_NS + 5 * MS)
    # batch 1: root and epoch 0 open, first marks (sentinel, open epoch, a mark id rewritten later)
    f.write_batch([dict(root, end_ns=None), dict(e0, end_ns=None), b0, fwd],
                  [f.mark(ROOT_SENTINEL, "loss", 1.0, ts_ns=BASE_NS + 4 * MS),
                   f.mark(rid, "loss", 0.9, ts_ns=BASE_NS + 6 * MS), dup_mark,
                   f.mark(b0["id"], "acc", "NaN", value_type="float", ts_ns=BASE_NS + 7 * MS)],
                  session_id=rid)
    # batch 2: epoch 0 closes, the request with one token count; more root marks
    f.write_batch([e0, req, dict(e1, end_ns=None)],
                  [f.mark(req["id"], "prompt_tokens", 12, kind="summary", ts_ns=BASE_NS + 620 * MS),
                   f.mark(ROOT_SENTINEL, "loss", 0.5, ts_ns=BASE_NS + 610 * MS),
                   dict(dup_mark, value=0.2)],
                  session_id=rid)
    # batch 3: a mark on batch 0 after it closed two batches ago; the other token count late
    f.write_batch([e1],
                  [f.mark(b0["id"], "grad_norm", 3.5, kind="summary", ts_ns=BASE_NS + 810 * MS),
                   f.mark(req["id"], "completion_tokens", 30, kind="summary", ts_ns=BASE_NS + 811 * MS),
                   f.mark(e1["id"], "note", "text value", ts_ns=BASE_NS + 812 * MS)],
                  session_id=rid)
    # batch 4: the root closes
    f.write_batch([root], [f.mark(rid, "final", 1, kind="summary", ts_ns=BASE_NS + 899 * MS)], session_id=rid)
    return rid
