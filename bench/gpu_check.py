"""Check cirron's device measurements against CUDA's own, on a machine with a CUDA GPU.

    python bench/gpu_check.py                 # matmul 4096², 30 repetitions
    python bench/gpu_check.py --size 2048 --reps 50

Checks, each printed with its figures, exit status 1 if one fails:

1. ``gpu_ns`` of ``ci.scope(..., gpu=True)`` around a known matmul is within 5 % of the time
   CUDA events recorded around the same matmul say (medians over the repetitions).
2. ``memory_peak_bytes`` of a span equals the peak torch itself reports for the same
   allocations (``reset_peak_memory_stats`` → work → ``max_memory_allocated``), and the nested
   outer span's peak is at least the inner one's.
3. The host cost of a span with GPU timing on, next to the same span without it (ns per span),
   and that a loop of spans never waits for the GPU (the loop ends long before the GPU does).
4. The zero-code torch integration's ``forward``/``backward``/``optimizer_step`` spans of a CUDA
   model carry ``gpu_ns`` and ``memory_peak_bytes``; the session root carries the device.

Where there is no CUDA device it says so and exits with status 2, checking nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="matmul side (default 4096)")
    ap.add_argument("--reps", type=int, default=30, help="repetitions (default 30)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed here; nothing to check (needs a CUDA machine)")
        return 2
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing to check. Run it on a machine with a CUDA GPU.")
        return 2

    import cirron
    from cirron import Cirron

    failures: list[str] = []
    dev = torch.device("cuda")
    print(f"cirron {cirron.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name(0)}")

    # -- 1. gpu_ns against CUDA events ----------------------------------------------------------
    n = args.size
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    truth = []
    for _ in range(args.reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        a @ b
        e1.record()
        e1.synchronize()
        truth.append(e0.elapsed_time(e1) * 1e6)

    c = Cirron(output="none")
    c.profile(gpu=True, frameworks=[])
    for _ in range(args.reps):
        with c.scope("matmul"):
            a @ b
    d = c.trace(format="dict")
    ours = [r["gpu_ns"] for r in d["roots"] if r["name"] == "matmul"]
    session_attrs = {k: v for k, v in (c._rec.root.attrs or {}).items() if k.startswith(("device", "cuda", "driver"))}
    c.shutdown()
    if len(ours) != args.reps or any(v is None for v in ours):
        failures.append(f"gpu_ns missing on {sum(v is None for v in ours)} of {len(ours)} spans")
    else:
        t_med, o_med = statistics.median(truth), statistics.median(ours)
        err = abs(o_med - t_med) / t_med
        print(f"1. matmul {n}x{n}: CUDA events median {t_med / 1e6:.3f} ms, cirron gpu_ns median "
              f"{o_med / 1e6:.3f} ms, difference {err * 100:.2f} % (limit 5 %)")
        if err > 0.05:
            failures.append(f"gpu_ns off by {err * 100:.2f} %")
    print(f"   session root: {session_attrs}")
    if not session_attrs.get("device_name"):
        failures.append("the session root has no device_name")

    # -- 2. memory_peak_bytes against torch's own peak ------------------------------------------
    def workload() -> None:
        x = torch.empty(64 << 20, dtype=torch.uint8, device=dev)   # 64 MiB
        y = torch.empty(128 << 20, dtype=torch.uint8, device=dev)  # 128 MiB more, peak 192 MiB over base
        del x, y

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    workload()
    truth_peak = torch.cuda.max_memory_allocated()
    c = Cirron(output="none")
    c.profile(gpu=True, frameworks=[])
    with c.scope("outer"):
        small = torch.empty(16 << 20, dtype=torch.uint8, device=dev)
        with c.scope("inner"):
            workload()
        del small
    d = c.trace(format="dict")
    c.shutdown()
    outer = d["roots"][0]
    inner = outer["children"][0]
    print(f"2. torch peak {truth_peak:,} B (delta {truth_peak - base:,}); cirron inner {inner['memory_peak_bytes']:,} B "
          f"(delta {inner['memory_peak_bytes'] - base - (16 << 20):,} over its own start), outer "
          f"{outer['memory_peak_bytes']:,} B")
    if inner["memory_peak_bytes"] != truth_peak + (16 << 20):
        failures.append(f"inner peak {inner['memory_peak_bytes']} != torch's {truth_peak} + the outer's 16 MiB")
    if outer["memory_peak_bytes"] < inner["memory_peak_bytes"]:
        failures.append("outer peak below inner peak")

    # -- 3. host cost per span, and no wait for the GPU -----------------------------------------
    spans = 2000
    c = Cirron(output="none")
    c.profile(frameworks=[])
    small_a = torch.randn(256, 256, device=dev)
    for label, gpu in (("without gpu", False), ("with gpu=True", True)):
        torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        for _ in range(spans):
            with c.scope("s", gpu=gpu):
                pass
        host = (time.perf_counter_ns() - t0) / spans
        print(f"3. host cost per empty span {label}: {host:,.0f} ns")
    torch.cuda.synchronize()
    busy = torch.randn(n, n, device=dev)
    t0 = time.perf_counter()
    for _ in range(50):
        with c.scope("queued", gpu=True):
            busy @ busy
    loop_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    total_s = time.perf_counter() - t0
    print(f"   50 spans around queued matmuls: loop {loop_s * 1e3:.1f} ms, GPU done after {total_s * 1e3:.1f} ms")
    if loop_s > 0.8 * total_s:
        failures.append("the span loop waited for the GPU (loop took most of the GPU time)")
    d = c.trace(format="dict")
    c.shutdown()
    queued = [r for r in d["roots"] if r["name"] == "queued"]
    if any(r["gpu_ns"] is None for r in queued):
        failures.append("queued spans lost their gpu_ns")
    del small_a

    # -- 4. zero-code torch on CUDA ------------------------------------------------------------
    c = Cirron(output="none")
    c.profile(frameworks=["torch"])
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(256, 512), torch.randn(256, 1)),
                                       batch_size=64)
    for x, y in data:
        x, y = x.to(dev), y.to(dev)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    d = c.trace(format="dict")
    c.shutdown()
    steps = [s for e in d["roots"] if e["name"] == "epoch" for s in e["children"] if s["name"] == "step"]
    measured = [ch for s in steps for ch in s["children"] if ch["name"] in ("forward", "backward", "optimizer_step")]
    ok = measured and all(ch["gpu_ns"] is not None and ch["memory_peak_bytes"] is not None for ch in measured)
    print(f"4. zero-code torch: {len(steps)} steps, {len(measured)} forward/backward/optimizer_step spans, "
          f"all with gpu_ns and memory_peak_bytes: {bool(ok)}")
    if not ok:
        failures.append("zero-code torch spans without device measurements")

    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
