"""Hot-path cost of cirron next to the OpenTelemetry SDK, measured side by side in one run.

    python bench/bench_record.py            # full run (~1 min)
    python bench/bench_record.py --quick    # fewer samples
    python bench/bench_record.py --pure     # only the twins: compiled vs pure-Python vs OTel

Prints ns/op (median of per-sample means) for cirron and OTel and the ratio cirron/OTel, then
what recording costs when it is switched off (``ci.profile(enabled=False)`` next to OTel's
no-op tracer, the API with no SDK installed), then the flush-service stall test (200,000
scopes/s for 5 s) and the import-time comparison.
Both sides run with their production pipeline on: cirron with ``ci.profile()`` and the spool
sink; OTel with a TracerProvider, a BatchSpanProcessor and an exporter that discards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

INNER = 200  # calls per timing sample


def measure_interleaved(fns: tuple[Callable[[int], None], ...], samples: int) -> list[float]:
    """Median over ``samples`` of the mean ns per call of each of ``fns``, their samples interleaved
    so a noisy neighbour slows every side alike."""
    for f in fns:
        f(INNER * 5)
    out: list[list[float]] = [[] for _ in fns]
    gc.disable()
    try:
        for _ in range(samples):
            for i, f in enumerate(fns):
                t0 = time.perf_counter_ns()
                f(INNER)
                out[i].append((time.perf_counter_ns() - t0) / INNER)
    finally:
        gc.enable()
    return [statistics.median(x) for x in out]


def measure_pair(ours: Callable[[int], None], theirs: Callable[[int], None], samples: int) -> tuple[float, float]:
    """:func:`measure_interleaved` of cirron and OTel."""
    a, b = measure_interleaved((ours, theirs), samples)
    return a, b


def measure_pair_async(ours: Callable[[int], object], theirs: Callable[[int], object], samples: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        await ours(INNER * 5)
        await theirs(INNER * 5)
        a, b = [], []
        gc.disable()  # as in measure_pair: a collection lands on one side or the other at random
        try:
            for _ in range(samples):
                t0 = time.perf_counter_ns()
                await ours(INNER)
                t1 = time.perf_counter_ns()
                await theirs(INNER)
                t2 = time.perf_counter_ns()
                a.append((t1 - t0) / INNER)
                b.append((t2 - t1) / INNER)
        finally:
            gc.enable()
        return statistics.median(a), statistics.median(b)

    return asyncio.run(main())


def otel_setup():  # noqa: ANN201
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):  # noqa: ANN001, ANN201
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    return trace, provider.get_tracer("bench"), provider


def run_micro(samples: int) -> list[tuple[str, float, float]]:
    import cirron as ci

    otel, tracer, provider = otel_setup()
    rows = []

    def ci_mark(n: int) -> None:
        m = ci.mark
        for i in range(n):
            m("loss", 0.5)

    def otel_mark(n: int) -> None:
        get = otel.get_current_span
        for i in range(n):
            get().add_event("loss", {"value": 0.5})

    def ci_scope(n: int) -> None:
        s = ci.scope
        for _ in range(n):
            with s("step"):
                pass

    def otel_scope(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("step"):
                pass

    def ci_nested(n: int) -> None:
        s = ci.scope
        for _ in range(n):
            with s("a"):
                with s("b"):
                    with s("c"):
                        pass

    def otel_nested(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("a"):
                with s("b"):
                    with s("c"):
                        pass

    # Inside a coroutine both sides use a plain ``with`` (OTel's span has no ``async with``);
    # cirron's ``async with`` costs two more coroutine steps and is printed on its own row.
    async def ci_scope_async(n: int) -> None:
        s = ci.scope
        for _ in range(n):
            with s("step"):
                pass

    async def ci_scope_async_with(n: int) -> None:
        s = ci.scope
        for _ in range(n):
            async with s("step"):
                pass

    async def otel_scope_async(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("step"):
                pass

    async def ci_mark_async(n: int) -> None:
        m = ci.mark
        for _ in range(n):
            m("loss", 0.5)

    async def otel_mark_async(n: int) -> None:
        get = otel.get_current_span
        for _ in range(n):
            get().add_event("loss", {"value": 0.5})

    async def ci_nested_async(n: int) -> None:
        s = ci.scope
        for _ in range(n):
            with s("a"):
                with s("b"):
                    with s("c"):
                        pass

    async def otel_nested_async(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("a"):
                with s("b"):
                    with s("c"):
                        pass

    with tempfile.TemporaryDirectory() as tmp:
        ci.profile(spool_dir=Path(tmp) / ".cirron" / "spool")
        with ci.scope("bench"), tracer.start_as_current_span("bench"):
            # OTel events accumulate on the open span; bound them like a real long span would be.
            rows.append(("mark (sync)", *measure_pair(ci_mark, otel_mark, samples)))
            rows.append(("mark (asyncio)", *measure_pair_async(ci_mark_async, otel_mark_async, samples)))
        rows.append(("scope enter+exit (sync)", *measure_pair(ci_scope, otel_scope, samples)))
        rows.append(("scope nested 3 deep (sync)", *measure_pair(ci_nested, otel_nested, samples)))
        rows.append(("scope enter+exit (asyncio)", *measure_pair_async(ci_scope_async, otel_scope_async, samples)))
        rows.append(("scope nested 3 deep (asyncio)", *measure_pair_async(ci_nested_async, otel_nested_async,
                                                                            samples)))
        rows.append(("scope `async with` (asyncio)", *measure_pair_async(ci_scope_async_with, otel_scope_async,
                                                                           samples)))
        h = ci.health()
        ci.shutdown()
        provider.shutdown()
        print(f"cirron health after micro run: recorded={h['spans_recorded']} spans, "
              f"dropped={h['span_drop_count']} spans / {h['mark_drop_count']} marks, last_error={h['last_error']}")
    return rows


def run_twins(samples: int) -> list[tuple[str, float, float, float]]:
    """The compiled recorder, its pure-Python twin (``Cirron(_pure_python=True)``) and OTel, the
    three interleaved per sample: what the C buys on each hot-path call."""
    from cirron import Cirron

    otel, tracer, provider = otel_setup()
    rows = []

    def mark_of(c: Cirron) -> Callable[[int], None]:
        def run(n: int) -> None:
            m = c.mark
            for _ in range(n):
                m("loss", 0.5)
        return run

    def scope_of(c: Cirron) -> Callable[[int], None]:
        def run(n: int) -> None:
            s = c.scope
            for _ in range(n):
                with s("step"):
                    pass
        return run

    def nested_of(c: Cirron) -> Callable[[int], None]:
        def run(n: int) -> None:
            s = c.scope
            for _ in range(n):
                with s("a"), s("b"), s("c"):
                    pass
        return run

    def otel_mark(n: int) -> None:
        get = otel.get_current_span
        for _ in range(n):
            get().add_event("loss", {"value": 0.5})

    def otel_scope(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("step"):
                pass

    def otel_nested(n: int) -> None:
        s = tracer.start_as_current_span
        for _ in range(n):
            with s("a"), s("b"), s("c"):
                pass

    def three(fns: tuple[Callable[[int], None], ...]) -> tuple[float, float, float]:
        a, b, c = measure_interleaved(fns, samples)
        return a, b, c

    with tempfile.TemporaryDirectory() as tmp:
        compiled = Cirron(spool_dir=Path(tmp) / "c" / ".cirron" / "spool")
        pure = Cirron(spool_dir=Path(tmp) / "p" / ".cirron" / "spool", _pure_python=True)
        compiled.profile()
        pure.profile()
        with compiled.scope("bench"), pure.scope("bench"), tracer.start_as_current_span("bench"):
            rows.append(("mark (sync)", *three((mark_of(compiled), mark_of(pure), otel_mark))))
        rows.append(("scope enter+exit (sync)", *three((scope_of(compiled), scope_of(pure), otel_scope))))
        rows.append(("scope nested 3 deep (sync)", *three((nested_of(compiled), nested_of(pure), otel_nested))))
        compiled.shutdown()
        pure.shutdown()
        provider.shutdown()
    return rows


def run_disabled(samples: int) -> list[tuple[str, float, float]]:
    """``profile(enabled=False)``: scope and mark next to OTel's API without an SDK (no-op)."""
    from opentelemetry import trace as otel_api

    from cirron import Cirron

    c = Cirron(output="none")
    c.profile(enabled=False)
    noop = otel_api.NoOpTracer()

    def ci_scope(n: int) -> None:
        s = c.scope
        for _ in range(n):
            with s("step"):
                pass

    def otel_scope(n: int) -> None:
        s = noop.start_as_current_span
        for _ in range(n):
            with s("step"):
                pass

    def ci_mark(n: int) -> None:
        m = c.mark
        for _ in range(n):
            m("loss", 0.5)

    def otel_mark(n: int) -> None:
        get = otel_api.get_current_span
        for _ in range(n):
            get().add_event("loss", {"value": 0.5})

    rows = [("scope, disabled", *measure_pair(ci_scope, otel_scope, samples)),
            ("mark, disabled", *measure_pair(ci_mark, otel_mark, samples))]
    assert c.trace(format="dict")["span_count"] == 0
    return rows


def run_stall(rate: int, seconds: float) -> dict[str, float]:
    """Record ``rate`` scopes/s for ``seconds`` while the flush service writes; time every scope."""
    import cirron as ci

    me = threading.get_ident()
    collections: list[tuple[int, int]] = []  # (start, end) of each GC pass in this thread
    gc_start = [0]

    def on_gc(phase: str, info: dict) -> None:
        if threading.get_ident() != me:
            return
        if phase == "start":
            gc_start[0] = time.perf_counter_ns()
        else:
            collections.append((gc_start[0], time.perf_counter_ns()))

    with tempfile.TemporaryDirectory() as tmp:
        c = ci.Cirron(spool_dir=Path(tmp) / ".cirron" / "spool", flush_interval=1.0)
        c.profile()
        scope = c.scope
        period = 1_000_000_000 // rate
        worst = 0
        lat = []
        slow: list[tuple[int, int]] = []  # (start, duration) of scopes over 5 ms
        gc.callbacks.append(on_gc)
        start = time.perf_counter_ns()
        end = start + int(seconds * 1e9)
        n = 0
        next_t = start
        pc = time.perf_counter_ns
        while True:
            now = pc()
            if now >= end:
                break
            if now < next_t:
                continue
            t0 = pc()
            with scope("step"):
                pass
            d = pc() - t0
            if d > worst:
                worst = d
            if d > 5_000_000:
                slow.append((t0, d))
            if n % 64 == 0:
                lat.append(d)
            n += 1
            next_t += period
        elapsed = (pc() - start) / 1e9
        gc.callbacks.remove(on_gc)
        # A garbage collection of the whole heap that this thread ran itself is the program's,
        # not the flush service's: tell those scopes apart.
        in_gc, no_gc = [], []
        for t, d in slow:
            (in_gc if any(a < t + d and b > t for a, b in collections) else no_gc).append(d)
        t_flush = time.perf_counter()
        c.flush(timeout=60)
        flush_s = time.perf_counter() - t_flush
        h = c.health()
        c.shutdown()
        h2 = c.health()
        lat.sort()
        return {
            "scopes": n, "achieved_rate": n / elapsed, "worst_ms": worst / 1e6,
            "over_5ms_in_gc": len(in_gc), "over_5ms_other": len(no_gc),
            "worst_no_gc_ms": max(no_gc, default=0) / 1e6, "gc_passes": len(collections),
            "longest_gc_ms": max((b - a for a, b in collections), default=0) / 1e6,
            "p99_us": lat[int(len(lat) * 0.99)] / 1e3, "p50_us": lat[len(lat) // 2] / 1e3,
            "pending_at_end": h["spans_pending"], "final_flush_s": flush_s,
            "written": h2["spans_written"], "dropped": h2["spans_dropped"], "recorded": h2["spans_recorded"],
        }


def import_time(module: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", f"import time; t=time.perf_counter(); import {module}; "
                              "print(time.perf_counter()-t)"], capture_output=True, text=True, check=True)
        times.append(float(out.stdout))
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, shorter stall test")
    ap.add_argument("--pure", action="store_true", help="only the compiled vs pure-Python table")
    args = ap.parse_args()
    samples = 200 if args.quick else 1000

    if args.pure:
        from cirron._record import span

        if not span.COMPILED:
            sys.exit("the compiled scope is not in use here (not built, or CIRRON_PURE_PYTHON is set)")
        print(f"python {sys.version.split()[0]}, {INNER} calls per sample, {samples} samples (median)\n")
        print(f"{'operation':28} {'compiled':>9} {'pure':>9} {'OTel':>9} {'compiled/OTel':>14} "
              f"{'pure/OTel':>10} {'pure/compiled':>14}   (ns/op)")
        for name, c_ns, p_ns, o_ns in run_twins(samples):
            print(f"{name:28} {c_ns:9.0f} {p_ns:9.0f} {o_ns:9.0f} {c_ns / o_ns:14.3f} {p_ns / o_ns:10.3f} "
                  f"{p_ns / c_ns:14.2f}")
        return

    print(f"python {sys.version.split()[0]}, {INNER} calls per sample, {samples} samples (median)\n")
    rows = run_micro(samples)
    print(f"\n{'operation':32} {'cirron ns/op':>13} {'OTel ns/op':>12} {'cirron/OTel':>12}")
    for name, c_ns, o_ns in rows:
        print(f"{name:32} {c_ns:13.0f} {o_ns:12.0f} {c_ns / o_ns:12.3f}")

    print(f"\n{'switched off':32} {'cirron ns/op':>13} {'OTel no-op':>12} {'cirron/OTel':>12}")
    for name, c_ns, o_ns in run_disabled(samples):
        print(f"{name:32} {c_ns:13.0f} {o_ns:12.0f} {c_ns / o_ns:12.3f}")

    seconds = 2.0 if args.quick else 5.0
    print(f"\nstall test: 200,000 scopes/s for {seconds:.0f} s with the spool sink writing")
    r = run_stall(200_000, seconds)
    print(f"  scopes recorded     {r['scopes']:,} ({r['achieved_rate']:,.0f}/s achieved)")
    print(f"  scope latency       p50 {r['p50_us']:.2f} us, p99 {r['p99_us']:.2f} us, worst {r['worst_ms']:.2f} ms")
    print(f"  scopes over 5 ms    {r['over_5ms_other']} outside any GC pass (worst {r['worst_no_gc_ms']:.2f} ms), "
          f"{r['over_5ms_in_gc']} during a GC pass this thread ran ({r['gc_passes']} passes, longest "
          f"{r['longest_gc_ms']:.2f} ms)")
    print(f"  pending at the end  {r['pending_at_end']:,} spans; final flush took {r['final_flush_s']:.2f} s")
    print(f"  accounting          recorded {r['recorded']:,} = written {r['written']:,} + dropped {r['dropped']:,}")

    ci_ms, httpx_ms = import_time("cirron"), import_time("httpx")
    print(f"\nimport time (median of 7 fresh interpreters): cirron {ci_ms:.1f} ms, httpx {httpx_ms:.1f} ms, "
          f"ratio {ci_ms / httpx_ms:.2f}")


if __name__ == "__main__":
    main()
