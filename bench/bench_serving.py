"""Benchmark ``@ci.inference`` on a trivial FastAPI JSON endpoint under uvicorn.

Variants of the same app, each in its own single-worker uvicorn process, driven from a second
process by a small asyncio HTTP/1.1 keep-alive load generator at a fixed concurrency:

* ``none``       — no cirron, no OpenTelemetry;
* ``profile``    — ``async with ci.profiling()`` in the lifespan (spool sink), endpoint undecorated;
* ``scope``      — the same with a plain ``with ci.scope("request")`` in the endpoint instead: the
  cost of recording and writing one span per request, without the decorator's machinery;
* ``inference``  — ``profile`` plus ``@ci.inference`` on the endpoint (what we measure);
* ``otel``       — ``opentelemetry-instrumentation-fastapi`` with an SDK ``TracerProvider``, a
  ``BatchSpanProcessor`` and an exporter that writes each batch as JSON lines to a file (the
  nearest OTel equivalent of cirron's spool sink). Needs
  ``pip install opentelemetry-sdk opentelemetry-instrumentation-fastapi``; skipped if missing.
* ``otel_noexport`` — the same with an exporter that drops the spans: the cost of the
  instrumentation and the SDK alone, a lower bound for any OTel exporter.

Variants run interleaved for ``--repeats`` rounds; the median of each is reported (throughput,
p50 and p99 latency, server CPU time per request) with the change against the baselines. Targets
for ``inference`` against ``profile``: throughput loss <= 5 %, p99 latency increase <= 10 %.

    .venv/bin/python bench/bench_serving.py --pin                 # 3 rounds x 8 s, concurrency 32
    .venv/bin/python bench/bench_serving.py --duration 4 --repeats 6 --pin --json out.json
    .venv/bin/python bench/bench_serving.py --asgi                # in process, no server, no network
    .venv/bin/python bench/bench_serving.py --paired 20000        # in process, request by request

``--pin`` puts the server and the load generator on one CPU each. The load generator writes raw
requests and parses only the status line and Content-Length, so it is not the bottleneck (an
httpx client would be, on a 2-core machine). Server CPU per request (user + system, flush
threads included) is much less sensitive to other load on the machine than throughput is.

``--asgi`` calls each app's ASGI entry point in a loop inside one process, variants interleaved
in blocks, and reports CPU per request and the median ratio to the same round's baseline block;
cirron's flush (and OpenTelemetry's export) runs at the end of each block, inside its timing.
Without uvicorn and the network the denominator is smaller, so percentages come out larger.

``--paired N`` also runs in process, but takes ``profile``, ``scope`` and ``inference`` one
request at a time in turn and reads each request's CPU time on the event loop thread: the
difference of the medians is the added cost per request, and it holds still on a machine where
throughput swings by 10 % from run to run. The flush service's CPU per span written is shown
apart.

``BENCH_CIRRON_OUTPUT=none`` runs the cirron variants with no sink (recording and collecting only),
which separates the cost of writing the spool from the rest.

The OpenTelemetry variants pass their ``TracerProvider`` to the instrumentor instead of setting it
globally: recent FastAPI versions turn on their own telemetry for every app once a global
provider exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "profile", "scope", "inference", "otel", "otel_noexport")
BODY = b'{"text": "a short review of a movie that was rather good"}'


# --------------------------------------------------------------------------- the server side

from pydantic import BaseModel  # noqa: E402


class PredictIn(BaseModel):
    text: str


_OTEL_PROVIDER = None  # the otel variant's TracerProvider



def build_app(variant: str):  # noqa: ANN201
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    import cirron as ci

    @asynccontextmanager
    async def lifespan(app):  # noqa: ANN001, ANN202
        if variant in ("profile", "scope", "inference"):
            async with ci.profiling(output=os.environ.get("BENCH_CIRRON_OUTPUT", "spool")):
                yield
        else:
            yield

    app = FastAPI(lifespan=lifespan)

    async def predict(payload: PredictIn) -> dict:
        return {"label": "positive", "chars": len(payload.text)}

    if variant == "inference":
        predict = ci.inference(predict)
    elif variant == "scope":
        plain = predict

        async def predict(payload: PredictIn) -> dict:
            with ci.scope("request", request_id="0"):
                return await plain(payload)
    app.post("/predict")(predict)

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    if variant in ("otel", "otel_noexport"):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class FileExporter(SpanExporter):
            def __init__(self, path: str) -> None:
                self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115

            def export(self, spans):  # noqa: ANN001, ANN202
                if variant == "otel_noexport":
                    return SpanExportResult.SUCCESS
                self._f.write("".join(s.to_json(indent=None) + "\n" for s in spans))
                self._f.flush()
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                self._f.close()

        global _OTEL_PROVIDER
        provider = _OTEL_PROVIDER = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(FileExporter(os.environ["BENCH_OTEL_FILE"])))
        # Passed explicitly, not set globally: recent FastAPI versions switch on their own built-in
        # telemetry for every app once a global tracer provider is configured, which would both
        # slow the other variants down and double the instrumentation of this one.
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(variant), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------- the load generator


async def _worker(host: str, port: int, request: bytes, stop_at: float, warm_until: float, lat: list[float],
                  counts: list[int]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return errors
            counts[0] += 1
            writer.write(request)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            if not status.startswith(b"HTTP/1.1 200"):
                errors += 1
            if t0 >= warm_until:
                lat.append(t1 - t0)
    finally:
        writer.close()


async def _load(port: int, concurrency: int, duration: float, warmup: float) -> dict:
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + duration
    lats: list[list[float]] = [[] for _ in range(concurrency)]
    counts = [0]
    errors = await asyncio.gather(*(_worker("127.0.0.1", port, request, stop_at, warm_until, lats[i], counts)
                                    for i in range(concurrency)))
    lat = sorted(x for part in lats for x in part)
    n = len(lat)
    return {"requests": n, "requests_all": counts[0], "errors": sum(errors), "rps": n / duration,
            "p50_ms": lat[n // 2] * 1e3 if n else None, "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else None}


def load(port: int, concurrency: int, duration: float, warmup: float) -> None:
    print(json.dumps(asyncio.run(_load(port, concurrency, duration, warmup))))


# --------------------------------------------------------------------------- in-process ASGI mode


async def _asgi_call(app, scope: dict, body: bytes) -> int:  # noqa: ANN001
    status = 0
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _predict_scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                                         (b"content-length", str(len(BODY)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


def _apps_without_lifespan(variants: list[str]) -> dict:
    apps = {v: build_app(v) for v in variants}
    for app in apps.values():  # one profiling session for all the cirron ones; no lifespan is run
        app.router.lifespan_context = None
    return apps


async def _asgi_bench(variants: list[str], block: int, blocks: int) -> dict[str, list[float]]:
    """CPU time (process: event loop + flush service threads) per request, variants interleaved
    block by block inside one process (and one profiling session for the cirron variants)."""
    import contextlib

    import cirron as ci

    with_cirron = any(v in ("profile", "scope", "inference") for v in variants)

    apps = _apps_without_lifespan(variants)
    scope = _predict_scope()
    out: dict[str, list[float]] = {v: [] for v in variants}
    async with ci.profiling(output="spool") if with_cirron else contextlib.nullcontext():
        for v in variants:  # warm-up
            for _ in range(200):
                assert await _asgi_call(apps[v], dict(scope), BODY) == 200
        for r in range(blocks):
            k = r % len(variants)  # rotate the order so no variant always runs first
            for v in variants[k:] + variants[:k]:
                app = apps[v]
                c0 = time.process_time()
                for _ in range(block):
                    await _asgi_call(app, dict(scope), BODY)
                if with_cirron:
                    await ci.aflush()  # this block's spans are written inside its own timing
                elif v.startswith("otel") and _OTEL_PROVIDER is not None:
                    _OTEL_PROVIDER.force_flush()  # the same for OpenTelemetry's exporter
                out[v].append((time.process_time() - c0) / block * 1e6)
    return out


async def _paired_bench(requests: int) -> dict:
    """The cirron variants request by request in turn (order rotated), each request's CPU time on
    the event loop thread read around it. Whatever slows the machine down slows all three alike,
    so the difference of the medians holds still where throughput swings by 10 %. The flush
    service's CPU (its own thread) is reported apart, per span written."""
    import cirron as ci

    variants = ["profile", "scope", "inference"]
    apps = _apps_without_lifespan(variants)
    scope = _predict_scope()
    times: dict[str, list[int]] = {v: [] for v in variants}
    tt = time.thread_time_ns
    async with ci.profiling(output="spool"):
        for v in variants:  # warm-up
            for _ in range(500):
                assert await _asgi_call(apps[v], dict(scope), BODY) == 200
        await ci.aflush()
        p0, t0, spans0 = time.process_time_ns(), tt(), ci.health()["spans_written"]
        for i in range(requests):
            k = i % len(variants)
            for v in variants[k:] + variants[:k]:
                app = apps[v]
                c0 = tt()
                await _asgi_call(app, dict(scope), BODY)
                times[v].append(tt() - c0)
        await ci.aflush()
        flush_ns = (time.process_time_ns() - p0) - (tt() - t0)
        spans = ci.health()["spans_written"] - spans0
    return {"median_us": {v: statistics.median(x) / 1e3 for v, x in times.items()},
            "flush_us_per_span": flush_ns / max(1, spans) / 1e3, "spans": spans}


def run_paired(args: argparse.Namespace) -> None:
    out = subprocess.run([sys.executable, __file__, "paired-group", "--requests", str(args.paired)],
                         check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    med, flush = res["median_us"], res["flush_us_per_span"]
    print(f"in-process ASGI, paired: {args.paired} requests per variant, taken in turn; median CPU us per "
          "request on the event loop thread")
    for v in ("profile", "scope", "inference"):
        extra = "" if v == "profile" else f"  {med[v] - med['profile']:+6.2f} us vs profile (+{flush:.2f} us flush per span)"
        print(f"{v:<10} {med[v]:8.2f}{extra}")
    if args.json:
        args.json.write_text(json.dumps({"mode": "paired", **res}, indent=2))


def run_asgi(args: argparse.Namespace) -> None:
    """Two groups, each in a process of its own so that neither instrumentation touches the other:
    cirron (``profile`` as the baseline, ``scope``, ``inference``) and OpenTelemetry (``none`` as
    the baseline, ``otel``)."""
    wanted = [v for v in args.variants.split(",") if v]
    groups = [["profile"] + [v for v in ("scope", "inference") if v in wanted]]
    otel = [v for v in ("otel", "otel_noexport") if v in wanted]
    if otel and not _otel_available():
        print("otel: skipped (pip install opentelemetry-sdk opentelemetry-instrumentation-fastapi)")
    elif otel:  # one process per OpenTelemetry variant: each TracerProvider has its own worker thread
        groups += [["none", v] for v in otel]
    results: dict[str, list[float]] = {}
    print(f"in-process ASGI, {args.blocks} rounds x {args.block} requests per variant; CPU us per request "
          "(median, min) and the median over rounds of the ratio to the same round's baseline block")
    for group in groups:
        out = subprocess.run([sys.executable, __file__, "asgi-group", ",".join(group), "--block", str(args.block),
                              "--blocks", str(args.blocks)], check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.update(res)
        base = group[0]
        for v in group:
            med = statistics.median(res[v])
            rel = ""
            if v != base:
                ratio = statistics.median(a / b for a, b in zip(res[v], res[base]))
                rel = f"  {100 * (ratio - 1):+6.1f}% vs {base}"
            print(f"{v:<10} {med:8.1f} {min(res[v]):8.1f}{rel}")
    if args.json:
        args.json.write_text(json.dumps({"mode": "asgi", "cpu_us_per_req": results}, indent=2))


def asgi_group(variants: list[str], block: int, blocks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cirron-bench-asgi-") as tmp:
        os.environ["CIRRON_SPOOL_DIR"] = str(Path(tmp) / "spool")
        os.environ["CIRRON_NO_PROJECT_FILE"] = "1"
        os.environ["BENCH_OTEL_FILE"] = str(Path(tmp) / "otel.jsonl")
        print(json.dumps(asyncio.run(_asgi_bench(variants, block, blocks))))


# --------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server did not come up")


def run_variant(variant: str, args: argparse.Namespace, workdir: Path) -> dict:
    port = _free_port()
    env = dict(os.environ, CIRRON_SPOOL_DIR=str(workdir / "spool"), CIRRON_NO_PROJECT_FILE="1",
               BENCH_OTEL_FILE=str(workdir / "otel.jsonl"), PYTHONPATH=str(ROOT))
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2

    def on(cpu: int):  # noqa: ANN202 - pins a child process to one CPU
        return (lambda: os.sched_setaffinity(0, {cpu})) if pin else None

    server = subprocess.Popen([sys.executable, __file__, "serve", variant, "--port", str(port)], env=env,
                              cwd=workdir, preexec_fn=on(cpus[-1]))
    try:
        _wait_ready(port, server)
        cpu0 = _cpu_s(server.pid)
        sys0 = _cpu_s(server.pid, system_only=True)
        out = subprocess.run([sys.executable, __file__, "load", "--port", str(port), "--concurrency",
                              str(args.concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup)],
                             check=True, capture_output=True, text=True, env=env, preexec_fn=on(cpus[0]))
        res = json.loads(out.stdout.strip().splitlines()[-1])
        # Server CPU per request (user+sys, flush service included): far less sensitive to other
        # load on the machine than throughput is.
        res["cpu_us_per_req"] = (_cpu_s(server.pid) - cpu0) / max(1, res["requests_all"]) * 1e6
        res["sys_us_per_req"] = (_cpu_s(server.pid, system_only=True) - sys0) / max(1, res["requests_all"]) * 1e6
        return res
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def _cpu_s(pid: int, system_only: bool = False) -> float:
    """CPU seconds of a process so far: user + system, or only the kernel's share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    return (system if system_only else user + system) / os.sysconf("SC_CLK_TCK")


def _otel_available() -> bool:
    try:
        import opentelemetry.instrumentation.fastapi  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark @ci.inference on FastAPI/uvicorn")
    sub = parser.add_subparsers(dest="cmd")
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("variant", choices=VARIANTS)
    p_serve.add_argument("--port", type=int, required=True)
    p_group = sub.add_parser("asgi-group")
    p_group.add_argument("variants")
    p_group.add_argument("--block", type=int, default=2000)
    p_group.add_argument("--blocks", type=int, default=10)
    p_paired = sub.add_parser("paired-group")
    p_paired.add_argument("--requests", type=int, default=20000)
    p_load = sub.add_parser("load")
    p_load.add_argument("--port", type=int, required=True)
    p_load.add_argument("--concurrency", type=int, default=32)
    p_load.add_argument("--duration", type=float, default=8.0)
    p_load.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pin", action="store_true", help="pin the server and the load generator to one CPU each")
    parser.add_argument("--asgi", action="store_true",
                        help="in-process mode: no server, no network; CPU per request of each variant")
    parser.add_argument("--block", type=int, default=2000, help="--asgi: requests per block")
    parser.add_argument("--blocks", type=int, default=10, help="--asgi: blocks per variant")
    parser.add_argument("--paired", type=int, metavar="N",
                        help="in-process, request by request: the added CPU per request of scope and inference")
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.variant, args.port)
        return
    if args.cmd == "asgi-group":
        asgi_group(args.variants.split(","), args.block, args.blocks)
        return
    if args.cmd == "paired-group":
        with tempfile.TemporaryDirectory(prefix="cirron-bench-paired-") as tmp:
            os.environ["CIRRON_SPOOL_DIR"] = str(Path(tmp) / "spool")
            os.environ["CIRRON_NO_PROJECT_FILE"] = "1"
            print(json.dumps(asyncio.run(_paired_bench(args.requests))))
        return
    if args.cmd == "load":
        load(args.port, args.concurrency, args.duration, args.warmup)
        return

    if args.asgi:
        run_asgi(args)
        return
    if args.paired:
        run_paired(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    if "otel" in variants and not _otel_available():
        print("otel: skipped (pip install opentelemetry-sdk opentelemetry-instrumentation-fastapi)")
        variants.remove("otel")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="cirron-bench-serving-") as tmp:
        for r in range(args.repeats):
            k = r % len(variants)  # rotate the order so no variant always runs in the same slot
            for v in variants[k:] + variants[:k]:
                wd = Path(tmp) / f"{v}-{r}"
                wd.mkdir()
                res = run_variant(v, args, wd)
                runs[v].append(res)
                print(f"  round {r + 1} {v:<10} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                      f"p99 {res['p99_ms']:6.2f} ms  cpu {res['cpu_us_per_req']:6.0f} us/req "
                      f"(sys {res['sys_us_per_req']:4.0f})  errors {res['errors']}",
                      flush=True)

    med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")} for v in variants}
    print(f"\nconcurrency {args.concurrency}, {args.duration:g} s x {args.repeats} rounds, median per variant")
    print(f"{'variant':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10}"
          f"   vs profile (req/s, p99)   vs none (req/s, p99)")
    for v in variants:
        m = med[v]
        rel = ""
        for base in ("profile", "none"):
            if base in med and base != v:
                b = med[base]
                rel += f"   {100 * (m['rps'] / b['rps'] - 1):+6.1f}% {100 * (m['p99_ms'] / b['p99_ms'] - 1):+6.1f}%"
            else:
                rel += " " * 18
        print(f"{v:<10} {m['rps']:9.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['cpu_us_per_req']:10.0f}{rel}")
    if "inference" in med and "profile" in med:
        loss = 100 * (1 - med["inference"]["rps"] / med["profile"]["rps"])
        p99 = 100 * (med["inference"]["p99_ms"] / med["profile"]["p99_ms"] - 1)
        cpu = 100 * (med["inference"]["cpu_us_per_req"] / med["profile"]["cpu_us_per_req"] - 1)
        ok = loss <= 5 and p99 <= 10
        print(f"\n@ci.inference vs profile: throughput loss {loss:.1f}% (target <= 5%), p99 {p99:+.1f}% "
              f"(target <= +10%), server CPU per request {cpu:+.1f}%: {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "median": med}, indent=2))


if __name__ == "__main__":
    main()
