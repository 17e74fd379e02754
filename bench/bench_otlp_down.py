"""What the ``otlp`` sink costs the user's code while the collector is down.

    python bench/bench_otlp_down.py            # full run (~30 s)
    python bench/bench_otlp_down.py --quick

Two profilers side by side in one process, timed in interleaved samples so both see the same
machine state: ``output=["spool"]`` and ``output=["spool", "otlp"]`` with
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` pointing at a port where nothing listens. Prints ns/op of
``with ci.scope(...)`` and of ``ci.mark(...)`` for each, and the ratio (otlp / spool only).

Then the memory check, each configuration in a fresh process: RSS before and after recording
N spans + N marks (``--records``, default 300,000) with ``flush_interval=0.05``, then after the
flushes have caught up, with the otlp sink's own queue and drop counters.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

INNER = 500


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure_pair(fns: list[Callable[[int], None]], samples: int) -> list[float]:
    for fn in fns:
        fn(INNER * 5)
    out: list[list[float]] = [[] for _ in fns]
    gc.disable()
    try:
        for _ in range(samples):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter_ns()
                fn(INNER)
                out[i].append((time.perf_counter_ns() - t0) / INNER)
    finally:
        gc.enable()
    return [statistics.median(o) for o in out]


def timing(samples: int) -> None:
    import cirron

    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = _dead_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        spool_only = cirron.Cirron(spool_dir=Path(tmp) / "a", output=["spool"])
        with_otlp = cirron.Cirron(spool_dir=Path(tmp) / "b", output=["spool", "otlp"])
        spool_only.profile()
        with_otlp.profile()

        def scopes(c: cirron.Cirron) -> Callable[[int], None]:
            scope = c.scope

            def run(n: int) -> None:
                for _ in range(n):
                    with scope("step"):
                        pass
            return run

        def marks(c: cirron.Cirron) -> Callable[[int], None]:
            mark = c.mark

            def run(n: int) -> None:
                for i in range(n):
                    mark("loss", 0.5)
            return run

        print(f"{'operation':<22}{'spool only':>14}{'spool+otlp (down)':>20}{'ratio':>8}")
        for label, make in (("with ci.scope()", scopes), ("ci.mark()", marks)):
            a, b = _measure_pair([make(spool_only), make(with_otlp)], samples)
            print(f"{label:<22}{a:>11.0f} ns{b:>17.0f} ns{b / a:>8.2f}")
        t0 = time.perf_counter()
        spool_only.shutdown()
        shut_a = time.perf_counter() - t0
        t0 = time.perf_counter()
        with_otlp.shutdown()
        shut_b = time.perf_counter() - t0
        h = with_otlp.health()["sinks"]["otlp"]
        dropped = sum(h["dropped"].values())
        print(f"{'shutdown()':<22}{shut_a:>12.2f} s{shut_b:>18.2f} s")
        print(f"otlp sink: {h['spans_written']} spans sent, {dropped:,} records counted as dropped "
              f"({', '.join(sorted(h['dropped']))})")


def _memory_child(outputs: list[str], n: int) -> None:
    import cirron

    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = _dead_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        c = cirron.Cirron(spool_dir=Path(tmp) / "s", output=outputs, flush_interval=0.05,
                          max_spool_bytes=8 << 30)
        c.profile()
        scope, mark = c.scope, c.mark
        for i in range(2000):  # warm up imports and the service
            with scope("warm"):
                mark("x", i)
        c.flush(timeout=10)
        gc.collect()
        before = _rss_mb()
        t0 = time.perf_counter()
        for i in range(n):
            with scope("step"):
                mark("loss", 0.5)
        rec_s = time.perf_counter() - t0
        peak_during = _rss_mb()
        c.flush(timeout=30)
        gc.collect()
        after = _rss_mb()
        h = c.health()
        otlp = h["sinks"].get("otlp")
        c.shutdown()
    print(json.dumps({"outputs": outputs, "rss_before_mb": before, "rss_after_record_mb": peak_during,
                      "rss_after_flush_mb": after, "record_s": rec_s,
                      "otlp_queued_requests": otlp["queued_requests"] if otlp else None,
                      "otlp_dropped": otlp["dropped"] if otlp else None}))


def memory(n: int) -> None:
    print(f"\nRSS, {n:,} scopes + {n:,} marks, fresh process each (MiB):")
    print(f"{'outputs':<18}{'before':>9}{'after rec':>11}{'after flush':>13}{'growth':>9}  otlp sink")
    for outputs in (["spool"], ["spool", "otlp"]):
        res = subprocess.run([sys.executable, __file__, "--child", ",".join(outputs), "--records", str(n)],
                             capture_output=True, text=True, check=True)
        d = json.loads(res.stdout.strip().splitlines()[-1])
        extra = ""
        if d["otlp_dropped"] is not None:
            extra = f"queued={d['otlp_queued_requests']} dropped={sum(d['otlp_dropped'].values()):,}"
        print(f"{'+'.join(outputs):<18}{d['rss_before_mb']:>9.1f}{d['rss_after_record_mb']:>11.1f}"
              f"{d['rss_after_flush_mb']:>13.1f}{d['rss_after_flush_mb'] - d['rss_before_mb']:>9.1f}  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        _memory_child(args.child.split(","), args.records)
        return
    timing(samples=60 if args.quick else 300)
    memory(args.records)


if __name__ == "__main__":
    main()
