"""Helpers for snapshot, wrap and load tests.

``fake_cirron`` is a stand-in for :class:`cirron.Cirron` with the small surface the snapshot
manager, ``wrap`` and ``load`` use (``scope``, ``_config``, ``_emit_snapshot``, ``_offload``,
``session_id``). Offloaded jobs are queued and run by ``drain()`` so tests decide when the
"background" work happens, without threads or sleeps.
"""

from __future__ import annotations

import contextvars
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("fake_current", default=None)


class FakeSpan:
    def __init__(self, name: str, parent: FakeSpan | None, attrs: dict[str, Any], index: int | None = None):
        self.id_hex = os.urandom(16).hex()
        self.name = name
        self.parent = parent
        self.attrs = dict(attrs)
        self.index = index
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.gpu_ns: int | None = None
        self.memory_peak_bytes: int | None = None


class FakeScope:
    def __init__(self, owner: FakeCirron, name: str, attrs: dict[str, Any]):
        self.owner, self.name, self.attrs = owner, name, attrs
        self.span: FakeSpan | None = None
        self._token = None

    def __enter__(self) -> FakeScope:
        index = self.attrs.pop("index", None)
        self.span = FakeSpan(self.name, _current.get(), self.attrs, index)
        self.owner.spans.append(self.span)
        self._token = _current.set(self.span)
        return self

    def __exit__(self, et, ev, tb) -> None:
        assert self.span is not None
        if ev is not None:
            self.span.attrs["error"] = f"{type(ev).__name__}: {ev}"
        self.span.end_ns = time.time_ns()
        _current.reset(self._token)


class FakeCirron:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        cfg = dict(
            spool_dir=tmp_path / ".cirron" / "spool", snapshots="stats", sample_rate=0.01,
            framework=None, project_data={}, project_dir=tmp_path,
        )
        cfg.update(config)
        self._config = SimpleNamespace(**cfg)
        self.session_id = "5da94f46f9ef4db5bfc0a38511ae55b0"
        self.spans: list[FakeSpan] = []
        self.records: list[dict[str, Any]] = []
        self.jobs: list[Any] = []
        self._snapshots = None

    @property
    def config(self) -> Any:
        return self._config

    def scope(self, name: str, **attrs: Any) -> FakeScope:
        return FakeScope(self, name, attrs)

    def _emit_snapshot(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def _offload(self, fn: Any) -> None:
        self.jobs.append(fn)

    def drain(self) -> None:
        while self.jobs:
            self.jobs.pop(0)()

    def tree(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(depth, name, attrs) in start order."""
        out = []
        for s in self.spans:
            depth, p = 0, s.parent
            while p is not None:
                depth, p = depth + 1, p.parent
            out.append((depth, s.name, s.attrs))
        return out




# ------------------------------------------------------------------------- spools with real blobs

import sys as _sys

_sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool_factory import SpoolFactory, new_id  # noqa: E402,F401


def write_snapshot_session(fac: SpoolFactory, tensors_per_epoch: list[dict[str, Any]], mode: str = "full",
                           sample_rate: float = 0.01) -> dict[str, Any]:
    """A session root + one epoch span per entry of ``tensors_per_epoch`` (name → numpy array; names
    ending in ``.grad`` become gradients), snapshots taken by the real SnapshotManager and written
    to one batch. Returns ids and records."""
    from spool_factory import BASE_NS, MS

    from cirron.snapshots import SnapshotManager

    root = new_id()
    c = FakeCirron(fac.root, spool_dir=fac.spool_dir, snapshots=mode, sample_rate=sample_rate)
    c.session_id = root
    mgr = SnapshotManager(c)
    spans = [fac.span("cirron.session", id=root, dur_ns=500 * MS)]
    epoch_ids = []
    for i, tensors in enumerate(tensors_per_epoch):
        eid = new_id()
        epoch_ids.append(eid)
        spans.append(fac.span("epoch", id=eid, parent_id=root, index=i, start_ns=BASE_NS + (i + 1) * MS))
        span = SimpleNamespace(id_hex=eid, index=i)
        mgr.snapshot(tensors, span, mode=mode, blobs=None if mode != "sampled" else i == 0)
    c.drain()
    fac.write_batch(spans, [], c.records, session_id=root)
    return {"root": root, "epochs": epoch_ids, "records": c.records}
