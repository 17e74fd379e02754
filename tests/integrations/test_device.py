"""Device truth driven through a fake device: GPU time off the hot path, peak memory under nesting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from device_fake import FakeDevice

from cirron import Cirron
from cirron._device import use_backend


def _spans(spool_dir: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for f in sorted(spool_dir.glob("*.json")):
        for s in json.loads(f.read_text())["spans"]:
            if s["end_ns"] is not None or s["id"] not in out:
                out[s["id"]] = s
    return {s["name"]: s for s in out.values()}


def test_gpu_scope_gets_device_time_and_peak_memory_right_under_nesting(spool_dir: Path) -> None:
    dev = FakeDevice()
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    use_backend(c, dev)
    dev.alloc(100)
    with c.scope("outer", gpu=True):
        dev.alloc(50)                       # outer alone: 150
        dev.run(1_000)
        with c.scope("inner", gpu=True):
            dev.alloc(200)                  # 350 while inner is open
            dev.run(5_000)
            dev.free(200)
        with c.scope("inner2", gpu=True):
            dev.alloc(20)                   # 170
            dev.run(2_000)
            dev.free(20)
        dev.free(50)
        dev.finish()
    with c.scope("plain"):
        dev.alloc(10_000)
    c.shutdown()
    s = _spans(spool_dir)
    assert (s["inner"]["memory_peak_bytes"], s["inner2"]["memory_peak_bytes"]) == (350, 170)
    assert s["outer"]["memory_peak_bytes"] == 350  # at least each inner one's
    assert (s["inner"]["gpu_ns"], s["inner2"]["gpu_ns"], s["outer"]["gpu_ns"]) == (5_000, 2_000, 8_000)
    assert (s["plain"]["gpu_ns"], s["plain"]["memory_peak_bytes"]) == (None, None)
    assert s["inner"]["parent_id"] == s["outer"]["id"]


def test_unfinished_gpu_work_never_blocks_the_caller(spool_dir: Path) -> None:
    dev = FakeDevice(elapsed_ns=777)
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    tracker = use_backend(c, dev)
    with c.scope("step", gpu=True):
        pass
    with c.scope("next"):  # the step left the context although its GPU time is unknown
        pass
    assert dev.waits == 0 and len(tracker._pending) == 1
    d = c.trace(format="dict")  # the flush service resolves it, off the caller's thread
    c.shutdown()
    assert [r["name"] for r in d["roots"]] == ["step", "next"]
    assert _spans(spool_dir)["step"]["gpu_ns"] == 777 and dev.waits == 1


def test_profile_level_switch_measures_every_scope_and_epochs(spool_dir: Path) -> None:
    dev = FakeDevice(elapsed_ns=5)
    dev.finish()
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    use_backend(c, dev)
    c.profile(gpu=True)
    for _ in c.epochs(range(1)):
        for _ in c.batches([1]):
            with c.scope("work"):
                dev.alloc(64)
    c.shutdown()
    s = _spans(spool_dir)
    assert all(s[n]["gpu_ns"] == 5 for n in ("epoch", "batch", "work"))
    assert s["work"]["memory_peak_bytes"] == 64 and s["epoch"]["memory_peak_bytes"] == 64
    assert s["cirron.session"]["gpu_ns"] is None


def test_epochs_and_batches_on_request(spool_dir: Path) -> None:
    dev = FakeDevice(elapsed_ns=9)
    dev.finish()
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile()
    use_backend(c, dev)
    for _ in c.epochs(range(1), gpu=True):
        for _ in c.batches([1]):
            pass
    c.shutdown()
    s = _spans(spool_dir)
    assert s["epoch"]["gpu_ns"] == 9 and s["batch"]["gpu_ns"] is None


def test_on_cpu_nothing_is_imported_and_the_fields_stay_null(tmp_path: Path) -> None:
    code = (
        "import sys, json, cirron as ci\n"
        f"c = ci.Cirron(spool_dir={str(tmp_path / 'sp')!r})\n"
        "c.profile(gpu=True, frameworks=[])\n"
        "with c.scope('x', gpu=True): pass\n"
        "d = c.trace(format='dict')\n"
        "c.shutdown()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'device': c._device is not None,"
        " 'node': d['roots'][0]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["torch"] is False and out["device"] is False
    root = json.loads((next((tmp_path / "sp").glob("*.json"))).read_text())["spans"]
    session = next(s for s in root if s["name"] == "cirron.session")
    assert not any(k.startswith("device_") for k in session["attrs"])


def test_torch_imported_without_cuda_gives_no_device(spool_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench/gpu_check.py covers it")
    c = Cirron(spool_dir=spool_dir, flush_interval=60)
    c.profile(gpu=True, frameworks=[])
    with c.scope("x", gpu=True):
        torch.ones(4) @ torch.ones(4)
    c.shutdown()
    s = _spans(spool_dir)
    assert (s["x"]["gpu_ns"], s["x"]["memory_peak_bytes"]) == (None, None)
    assert not any(k.startswith("device_") for k in s["cirron.session"]["attrs"])
