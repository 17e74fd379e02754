"""What an epoch-end snapshot costs the training thread.

Target (issue #4): for a 100M-parameter model in ``stats`` mode, the time ``on_epoch_end`` spends
on the training thread is at most 1.5x one pass of ``torch.linalg.vector_norm`` over all
parameters; in ``full`` mode the safetensors write happens off the training thread.

    .venv/bin/python bench/bench_snapshots.py            # 100M parameters (~1.8 GB peak RSS)
    .venv/bin/python bench/bench_snapshots.py --params 10_000_000 --epochs 4 --modes stats

Method: a CPU ``nn.Sequential`` of 5000x5000 ``Linear`` layers wrapped with ``Cirron.wrap``; we run
``Cirron.epochs`` and time only ``SnapshotManager.on_epoch_end`` on the training thread. ``flush()``
between epochs lets the snapshot worker finish (untimed); the worker's time (stats, blob write) is
measured inside ``SnapshotManager._finish`` together with the thread it ran on.

* ``stats``: the weights of a hooked module are read in place (no copy); the epoch end only hands
  them to the worker. The price shows up if the next forward/backward/step comes before the worker
  is done: its hook copies what is left. "worst-case wait" is that price, measured by running a
  training step right after the epoch end (the first probe may include allocating the staging
  buffer). A forward pass alone never waits: it changes neither parameters nor gradients.
* ``full``: weights are copied once into a staging buffer (warmed up by ``wrap``) and the worker
  writes the safetensors blob. The first epoch is reported apart from the steady state.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _norm_pass(params: list) -> int:
    import torch

    t0 = time.perf_counter_ns()
    with torch.no_grad():
        for p in params:
            torch.linalg.vector_norm(p)
    return time.perf_counter_ns() - t0


def run(mode: str, n_params: int, epochs: int, with_grads: bool, spool: Path) -> dict:
    import torch

    from cirron import Cirron

    width = 5000
    layers = max(1, round(n_params / (width * width + width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    params = list(model.parameters())
    if with_grads:
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
    tensors = params + ([p.grad for p in params] if with_grads else [])
    total = sum(t.numel() for t in tensors)

    c = Cirron(spool_dir=spool / mode, flush_interval=3600, snapshots=mode, output="spool",
               max_spool_bytes=64 << 30)
    c.profile()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    c.wrap(model, optimizer=opt)
    mgr = c._snapshots

    user_ns: list[int] = []
    job_ns: list[int] = []
    job_threads: set[str] = set()
    real_on_epoch_end = mgr.on_epoch_end
    real_finish = mgr._finish

    def timed_on_epoch_end(span) -> None:
        t0 = time.perf_counter_ns()
        real_on_epoch_end(span)
        user_ns.append(time.perf_counter_ns() - t0)

    def timed_finish(*a, **k) -> None:  # stats reductions + blob write, wherever they run
        t0 = time.perf_counter_ns()
        real_finish(*a, **k)
        job_ns.append(time.perf_counter_ns() - t0)
        job_threads.add(threading.current_thread().name)

    mgr.on_epoch_end = timed_on_epoch_end
    mgr._finish = timed_finish
    main = threading.current_thread().name
    mgr._worker.submit(lambda: None).result()  # full mode: wrap() warmed the staging buffer up; wait for it
    for _ in c.epochs(range(epochs)):
        c.flush(timeout=600)  # let the worker finish the previous epoch's job (not timed)
    # Worst case for in-place (stats) snapshots: the next training step (forward, backward,
    # optimizer step) comes right after the epoch end, sooner than the worker finishes, so the
    # backward/step pre-hook copies what the worker has not read yet.
    worst_waits = []
    for _ in range(2):  # the first one may also allocate the staging buffer
        c.flush(timeout=600)
        waits0 = mgr.barrier_wait_ns
        for _ in c.epochs(range(1)):
            pass
        model(torch.zeros(1, width)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=not with_grads)
        worst_waits.append(mgr.barrier_wait_ns - waits0)
    c.shutdown(timeout=600)  # shutdown waits for the last epoch's job

    norms = [_norm_pass(tensors) for _ in range(5)]
    base = statistics.median(norms)
    timed = user_ns[:epochs]  # the worst-case probes below are not part of the steady state
    steady = statistics.median(timed[1:]) if len(timed) > 1 else timed[0]
    blob_dir = spool / "snapshots"
    return {
        "mode": mode, "tensors": len(tensors), "numel": total, "norm_ns": base,
        "first_ns": timed[0], "steady_ns": steady, "ratio": steady / base, "worst_waits": worst_waits,
        "job_ns": statistics.median(job_ns) if job_ns else 0,
        "job_off_thread": bool(job_threads) and main not in job_threads,
        "blob_bytes": sum(p.stat().st_size for p in blob_dir.rglob("*.safetensors")) if blob_dir.exists() else 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=lambda s: int(s.replace("_", "")), default=100_000_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--modes", default="stats,full")
    ap.add_argument("--grads", action="store_true", help="also snapshot gradients (baseline covers them too)")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            r = run(mode, args.params, args.epochs, args.grads, Path(tmp) / ".cirron" / "spool")
            print(
                f"{r['mode']:>6}: {r['tensors']} tensors, {r['numel'] / 1e6:.1f}M values | "
                f"vector_norm pass {r['norm_ns'] / 1e6:8.1f} ms ({r['norm_ns']:>11,} ns) | "
                f"training thread: first epoch {r['first_ns'] / 1e6:8.1f} ms, "
                f"steady {r['steady_ns'] / 1e6:8.1f} ms ({r['steady_ns']:>11,} ns) | "
                f"ratio {r['ratio']:.2f}x | worker job {r['job_ns'] / 1e6:8.1f} ms "
                f"(off thread: {r['job_off_thread']}) | blobs {r['blob_bytes'] / 2**20:.0f} MiB | "
                "worst-case wait of the next step " + " / ".join(f"{w / 1e6:.1f}" for w in r["worst_waits"]) + " ms"
            )
            if mode == "stats" and r["ratio"] > 1.5:
                ok = False
            if not r["job_off_thread"]:
                ok = False
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
