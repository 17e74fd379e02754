"""Benchmark ``@ci.inference`` on a trivial FastAPI JSON endpoint under uvicorn.

Variants of the same app, each in its own single-worker uvicorn process, driven from a second
process by a small asyncio HTTP/1.1 keep-alive load generator at a fixed concurrency:

* ``none``       — no cirron, no OpenTelemetry;
* ``profile``    — ``async with ci.profiling()`` in the lifespan (spool sink), endpoint undecorated;
* ``scope``      — the same with a plain ``with ci.scope("request")`` in the endpoint instead: the
  cost of recording and writing one span per request, without the decorator's machinery;
* ``inference``  — ``profile`` plus ``@ci.inference`` on the endpoint (what we measure);
* ``floor``      — ``profile`` plus a hand-written wrapper that does the least any decorator
  meeting the spec must do per request: read the thread's CPU clock and the wall clock at both
  ends, draw a request id, bind it in a copy of the context, keep one record. No span, no
  writing: the lower bound ``inference`` is compared with;
* ``floor_nocpu`` — the floor without the thread CPU clock (a system call on Linux, two per
  request): what request spans without ``cpu_ns`` would save;
* ``wrap``       — ``profile`` plus a wrapper that only awaits the endpoint: the cost of a
  decorator as such;
* ``inference_nosink`` — ``inference`` with no sink (``output="none"``): recording and collecting
  spans, writing none, so that what writing the spool costs shows side by side;
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
    .venv/bin/python bench/bench_serving.py --ab --pin --repeats 60   # servers side by side, slice by slice
    .venv/bin/python bench/bench_serving.py --ab --pin --repeats 96 --generations 8 \
        --variants profile_b,wrap,floor_nocpu,floor,inference           # where the floor's cost goes
    .venv/bin/python bench/bench_serving.py --callgrind 1000      # instructions and misses per request

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

``--ab`` starts one uvicorn server per cirron variant (``profile``, its twin ``profile_b``,
``floor``, ``scope``, ``inference``) and ``otel`` where it is installed, all on the same CPU, and
switches the load generator from one to the next every ``--slice`` seconds, order rotated. A
slice ends by pausing the clients, letting the requests in flight finish and asking the server to
write out what it buffered (``ci.flush()``, or the OpenTelemetry provider's ``force_flush()``),
all inside the slice's time: every variant pays for its own spans' writing, and no server's
flush falls into another's slice. Each slice gives throughput, latencies and the server process's
CPU per request (flush thread included); each variant is compared with the ``profile`` slice of
the same round, so the machine's slow swings cancel out. ``profile_b`` is the same app as
``profile``: its figures are the noise floor. The rounds are split over ``--generations`` sets of
freshly started servers (4 by default): one process's memory layout and hash seed alone can make
it a few per cent faster or slower than its twin for as long as it runs.

``--callgrind N`` runs each variant's server under valgrind's callgrind (with its cache model)
and counts what N requests at the given concurrency cost in the server, after a warm-up:
instructions, L1 instruction and data misses, last-level misses and callgrind's cycle estimate
(Ir + 10 x L1 misses + 100 x LL misses), per request. It is deterministic to a fraction of a per
cent, so it shows what a change does to the per-request work where wall-clock runs on a shared
machine cannot; what it leaves out is the kernel's time (system calls, page faults) and the
threads' contention for the GIL and the CPU. Needs ``valgrind`` (about 40 s per variant).

``BENCH_CIRRON_OUTPUT=none`` runs all the cirron variants with no sink (recording and collecting
only); ``inference_nosink`` does that for one variant beside the others.

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
VARIANTS = ("none", "profile", "scope", "inference", "floor", "floor_nocpu", "wrap", "inference_nosink", "otel",
            "otel_noexport")
#: What every mode but --ab runs unless --variants says otherwise (the breakdowns are opt-in).
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in ("floor_nocpu", "wrap", "inference_nosink"))
#: The variants that run a cirron profiling session.
CIRRON_VARIANTS = ("profile", "scope", "inference", "floor", "floor_nocpu", "wrap", "inference_nosink")
BODY = b'{"text": "a short review of a movie that was rather good"}'
#: The one request every load generator here sends, over keep-alive connections.
PREDICT_REQUEST = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


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
        if variant in CIRRON_VARIANTS:
            output = "none" if variant == "inference_nosink" else os.environ.get("BENCH_CIRRON_OUTPUT", "spool")
            async with ci.profiling(output=output):
                yield
        else:
            yield

    app = FastAPI(lifespan=lifespan)

    async def predict(payload: PredictIn) -> dict:
        return {"label": "positive", "chars": len(payload.text)}

    if variant in ("inference", "inference_nosink"):
        predict = ci.inference(predict)
    elif variant in ("floor", "floor_nocpu"):
        predict = _floor_wrapper(predict, cpu_clock=variant == "floor")
    elif variant == "wrap":
        predict = _bare_wrapper(predict)
    elif variant == "scope":
        plain = predict

        async def predict(payload: PredictIn) -> dict:
            with ci.scope("request", request_id="0"):
                return await plain(payload)
    app.post("/predict")(predict)

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.get("/bench/cpu")
    async def bench_cpu() -> dict:  # the whole process's CPU time: flush threads included
        return {"cpu_s": time.process_time()}

    @app.get("/bench/flush")
    async def bench_flush() -> dict:  # write out what the session buffered, before answering
        if _OTEL_PROVIDER is not None:
            return {"flushed": _OTEL_PROVIDER.force_flush()}
        return {"flushed": ci.flush()}

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


def _bare_wrapper(endpoint):  # noqa: ANN001, ANN202
    """The ``wrap`` variant's wrapper: an ``async def`` that awaits the endpoint and nothing else."""
    import functools

    @functools.wraps(endpoint)
    async def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return await endpoint(*args, **kwargs)

    return wrapper


def _floor_wrapper(endpoint, cpu_clock: bool = True):  # noqa: ANN001, ANN202
    """The ``floor`` variant's wrapper: the spec's per-request minimum, nothing else. Without
    ``cpu_clock`` the thread CPU clock readings are replaced by (vDSO) monotonic ones."""
    import contextvars
    import functools
    from time import perf_counter_ns, thread_time_ns, time_ns

    if not cpu_clock:
        thread_time_ns = perf_counter_ns  # noqa: N806 - same call shape, no system call

    from cirron._record.instrument import _uuid4

    bound = contextvars.ContextVar("bench_floor_request")
    records: list = []

    @functools.wraps(endpoint)
    async def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        c0, t0 = thread_time_ns(), time_ns()
        rid = _uuid4()
        contextvars.copy_context().run(bound.set, rid)
        result = await endpoint(*args, **kwargs)
        records.append((rid, t0, time_ns(), thread_time_ns() - c0))
        if len(records) >= 4096:
            records.clear()
        return result

    return wrapper


def serve(variant: str, port: int) -> None:
    import uvicorn

    # --ab leaves each server's connections idle while the others take their slices: keep them
    # open far longer than uvicorn's default 5 s.
    uvicorn.run(build_app(variant), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                timeout_keep_alive=3600)


# --------------------------------------------------------------------------- the load generator


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    status = await reader.readline()
    if not status:
        raise ConnectionError("the server closed the connection")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, (await reader.readexactly(length) if length else b"")


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
            status, _ = await _read_response(reader)
            t1 = time.perf_counter()
            if not status.startswith(b"HTTP/1.1 200"):
                errors += 1
            if t0 >= warm_until:
                lat.append(t1 - t0)
    finally:
        writer.close()


def _p99(sorted_latencies: list[float]) -> float:
    """The 99th percentile of already sorted latencies (NaN for none)."""
    n = len(sorted_latencies)
    return sorted_latencies[min(n - 1, int(n * 0.99))] if n else float("nan")


async def _load(port: int, concurrency: int, duration: float, warmup: float) -> dict:
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + duration
    lats: list[list[float]] = [[] for _ in range(concurrency)]
    counts = [0]
    errors = await asyncio.gather(*(_worker("127.0.0.1", port, PREDICT_REQUEST, stop_at, warm_until, lats[i], counts)
                                    for i in range(concurrency)))
    lat = sorted(x for part in lats for x in part)
    n = len(lat)
    return {"requests": n, "requests_all": counts[0], "errors": sum(errors), "rps": n / duration,
            "p50_ms": lat[n // 2] * 1e3 if n else None, "p99_ms": _p99(lat) * 1e3 if n else None}


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

    with_cirron = any(v in CIRRON_VARIANTS for v in variants)

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
    cirron (``profile`` as the baseline, then the other cirron variants) and OpenTelemetry
    (``none`` as the baseline, ``otel``)."""
    wanted = [v for v in args.variants.split(",") if v]
    groups = [["profile"] + [v for v in CIRRON_VARIANTS if v != "profile" and v in wanted]]
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


# --------------------------------------------------------------------------- servers side by side, slices

AB_VARIANTS = ("profile", "profile_b", "floor", "scope", "inference")


async def _ab_load(ports: dict[str, int], concurrency: int, slice_s: float, rounds: int) -> dict:
    """Switch the load from one server to the next every ``slice_s`` seconds. A slice ends by
    pausing the clients, letting the requests in flight finish and making the server write out
    what it buffered (``/bench/flush``), all inside the slice's time: each variant pays for its
    own spans' writing, and no server's flush falls into another's slice."""
    variants = list(ports)
    conns: dict[str, list] = {v: [await asyncio.open_connection("127.0.0.1", ports[v]) for _ in range(concurrency)]
                              for v in variants}
    state = {"variant": None, "stop": False, "in_flight": 0}
    resume, idle = asyncio.Event(), asyncio.Event()
    idle.set()
    done = dict.fromkeys(variants, 0)
    lat: dict[str, list[float]] = {v: [] for v in variants}
    errors = [0]
    failures: list[BaseException] = []

    async def worker(i: int) -> None:
        try:
            await work(i)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:  # end the run, do not spin
            failures.append(exc)
            state["stop"] = True
            idle.set()

    async def work(i: int) -> None:
        while not state["stop"]:
            v = state["variant"]
            if v is None:
                await resume.wait()
                continue
            reader, writer = conns[v][i]
            state["in_flight"] += 1
            idle.clear()
            t0 = time.perf_counter()
            writer.write(PREDICT_REQUEST)
            status, _ = await _read_response(reader)
            lat[v].append(time.perf_counter() - t0)
            done[v] += 1
            if not status.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
            state["in_flight"] -= 1
            if state["in_flight"] == 0:
                idle.set()

    async def ask(v: str, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[v])
        writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
        _, body = await _read_response(reader)
        writer.close()
        return body

    async def run_slice(v: str, seconds: float) -> dict:
        done[v], lat[v] = 0, []
        c0 = json.loads(await ask(v, "/bench/cpu"))["cpu_s"]
        t0 = time.perf_counter()
        state["variant"] = v
        resume.set()
        await asyncio.sleep(seconds)
        state["variant"] = None
        resume.clear()
        await idle.wait()
        if failures:
            raise RuntimeError(f"{v}: {failures[0]}")
        await ask(v, "/bench/flush")
        elapsed = time.perf_counter() - t0
        c1 = json.loads(await ask(v, "/bench/cpu"))["cpu_s"]
        n = done[v]
        return {"rps": n / elapsed, "cpu_us": (c1 - c0) / max(1, n) * 1e6, "latencies": sorted(lat[v])}

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    for v in variants:  # warm-up: every server's code paths and buffers
        await run_slice(v, 1.0)
    slices: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        for v in order if (r // len(variants)) % 2 == 0 else order[::-1]:
            slices[v].append(await run_slice(v, slice_s))
    state["stop"] = True
    resume.set()
    await asyncio.gather(*tasks)
    for pool in conns.values():
        for _, writer in pool:
            writer.close()
    return {"slices": slices, "errors": errors[0]}


def _ab_generation(variants: tuple[str, ...], rounds: int, args: argparse.Namespace, server_cpu: int | None) -> dict:
    """One set of fresh --ab servers (one per variant, each with its own spool) for ``rounds`` rounds."""
    servers: dict[str, subprocess.Popen] = {}
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="cirron-bench-ab-") as tmp:
        try:
            for v in variants:
                wd = Path(tmp) / v
                wd.mkdir()
                servers[v], ports[v] = _start_server("profile" if v == "profile_b" else v, wd, server_cpu)
            for v in variants:
                _wait_ready(ports[v], servers[v])
            return asyncio.run(_ab_load(ports, args.concurrency, args.slice, rounds))
        finally:
            for server in servers.values():
                _stop_server(server)


def run_ab(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, {cpus[0]})  # the servers set their own CPU as they start
    # A process's memory layout and hash seed alone move its throughput by a few per cent, as
    # much as what is measured: the rounds are spread over fresh servers so that averages out.
    if args.variants is None:
        variants = AB_VARIANTS + (("otel",) if _otel_available() else ())
        if "otel" not in variants:
            print("opentelemetry-sdk / opentelemetry-instrumentation-fastapi not installed: no otel variant")
    else:
        variants = tuple(dict.fromkeys(["profile", *(v for v in args.variants.split(",") if v)]))
        unknown = [v for v in variants if v not in (*VARIANTS, "profile_b")]
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)}, profile_b)")
        if "otel" in variants and not _otel_available():
            raise SystemExit("--variants otel: pip install opentelemetry-sdk opentelemetry-instrumentation-fastapi")
    generations = max(1, min(args.generations, args.repeats))
    shares = [args.repeats // generations + (g < args.repeats % generations) for g in range(generations)]
    slices: dict[str, list[dict]] = {v: [] for v in variants}
    errors = 0
    for rounds in shares:
        res = _ab_generation(variants, rounds, args, cpus[-1] if pin else None)
        for v in variants:
            slices[v].extend(res["slices"][v])
        errors += res["errors"]
    base = slices["profile"]
    sets = f"{generations} set{'s' if generations > 1 else ''} of fresh servers"
    print(f"one server per variant, concurrency {args.concurrency}, {args.repeats} rounds of {args.slice:g} s "
          f"slices per variant, over {sets}; errors {errors}")
    print(f"{'variant':<10} {'req/s':>7} {'p99 ms':>7} {'cpu/req':>9}   vs profile, paired by round: "
          f"{'req/s':>6} {'p99':>7} {'cpu/req':>9}")

    def pooled_p99_ms(variant_slices: list[dict]) -> float:
        return _p99(sorted(x for s in variant_slices for x in s["latencies"])) * 1e3

    summary = {}
    base_p99 = pooled_p99_ms(base)
    for v in variants:
        mine = slices[v]
        p99 = pooled_p99_ms(mine)
        d_rps = statistics.median(a["rps"] / b["rps"] - 1 for a, b in zip(mine, base)) * 100
        d_cpu = statistics.median(a["cpu_us"] - b["cpu_us"] for a, b in zip(mine, base))
        rps, cpu = statistics.median(s["rps"] for s in mine), statistics.median(s["cpu_us"] for s in mine)
        summary[v] = {"rps": rps, "p99_ms": p99, "cpu_us_per_req": cpu, "rps_change_pct": d_rps,
                      "p99_change_pct": (p99 / base_p99 - 1) * 100, "cpu_change_us": d_cpu}
        rel = "" if v == "profile" else (f"{' ' * 30}{d_rps:+6.1f}% {summary[v]['p99_change_pct']:+6.1f}% "
                                         f"{d_cpu:+6.1f} us")
        print(f"{v:<10} {rps:7.0f} {p99:7.2f} {cpu:6.0f} us{rel}")
    print()
    if "profile_b" in slices:
        twin, twin_lo, twin_hi = median_ci([100 * (a["rps"] / b["rps"] - 1)
                                            for a, b in zip(slices["profile_b"], base)])
        print(f"the profile/profile_b twins (the same app): {twin:+.1f}% [90% CI {twin_lo:+.1f} to {twin_hi:+.1f}], "
              "the noise floor")
    if "floor" in slices and "inference" in slices:
        floor_pairs = list(zip(slices["inference"], slices["floor"]))
        beyond, beyond_lo, beyond_hi = median_ci([100 * (1 - a["rps"] / b["rps"]) for a, b in floor_pairs])
        print(f"@ci.inference against the floor (the spec's per-request minimum): throughput loss {beyond:.1f}% "
              f"[90% CI {beyond_lo:.1f} to {beyond_hi:.1f}]")
    if "inference" in slices:
        pairs = list(zip(slices["inference"], base))
        print(verdict([100 * (1 - a["rps"] / b["rps"]) for a, b in pairs],
                      [100 * (_p99(a["latencies"]) / _p99(b["latencies"]) - 1) for a, b in pairs]))
    if args.json:
        per_round = {v: [{"rps": s["rps"], "cpu_us": s["cpu_us"], "p99_ms": _p99(s["latencies"]) * 1e3}
                         for s in slices[v]] for v in variants}
        args.json.write_text(json.dumps({"mode": "ab", "generations": generations, "summary": summary,
                                         "rounds": per_round}, indent=2))


# --------------------------------------------------------------------------- verdicts


def median_ci(values: list[float], level: float = 0.9, resamples: int = 2000) -> tuple[float, float, float]:
    """The median of ``values`` and a percentile-bootstrap confidence interval for it (fixed
    seed, so a report reads the same each time it is printed)."""
    import random

    rng = random.Random(0)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    lo = meds[int((1 - level) / 2 * resamples)]
    hi = meds[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return statistics.median(values), lo, hi


def verdict(loss_pct: list[float], p99_pct: list[float]) -> str:
    """PASS or FAIL only where the 90 % interval of the median, over at least five paired rounds,
    is on one side of both targets (throughput loss <= 5 %, p99 increase <= 10 %); INCONCLUSIVE
    otherwise."""
    loss, loss_lo, loss_hi = median_ci(loss_pct)
    p99, p99_lo, p99_hi = median_ci(p99_pct)
    if len(loss_pct) < 5:
        outcome = "INCONCLUSIVE (fewer than 5 rounds)"
    elif loss_hi <= 5 and p99_hi <= 10:
        outcome = "PASS"
    elif loss_lo > 5 or p99_lo > 10:
        outcome = "FAIL"
    else:
        outcome = "INCONCLUSIVE (more rounds, or a quieter machine)"
    return (f"@ci.inference vs profile over {len(loss_pct)} paired rounds: throughput loss {loss:.1f}% "
            f"[90% CI {loss_lo:.1f} to {loss_hi:.1f}] (target <= 5%), p99 {p99:+.1f}% "
            f"[{p99_lo:+.1f} to {p99_hi:+.1f}] (target <= +10%): {outcome}")


# --------------------------------------------------------------------------- under callgrind

CALLGRIND_EVENTS = ("Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")


async def _count_load(port: int, total: int, concurrency: int) -> None:
    """Exactly ``total`` requests, ``concurrency`` at a time."""
    left = [total]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(PREDICT_REQUEST)
                status, _ = await _read_response(reader)
                if not status.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the server answered {status!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _callgrind_totals(outdir: Path) -> dict[str, int]:
    """The events of the dump taken while instrumentation was on (the largest of the files)."""
    best: dict[str, int] = {}
    for path in outdir.glob("cg.out*"):
        events: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                totals = dict(zip(events, map(int, line.split()[1:])))
                if totals.get("Ir", 0) > best.get("Ir", 0):
                    best = totals
    return best


def run_callgrind_variant(variant: str, requests: int, concurrency: int, workdir: Path) -> dict[str, float]:
    port = _free_port()
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
                               f"--callgrind-out-file={workdir / 'cg.out'}", sys.executable, __file__, "serve",
                               variant, "--port", str(port)], env=_server_env(workdir), cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def control(command: str) -> None:
        subprocess.run(["callgrind_control", command, str(server.pid)], check=True, capture_output=True)

    try:
        _wait_ready(port, server, timeout=600.0)
        asyncio.run(_count_load(port, max(200, requests // 3), concurrency))  # warm-up, not counted
        control("--instr=on")
        asyncio.run(_count_load(port, requests, concurrency))
        control("--instr=off")
        control("--dump")
    finally:
        _stop_server(server, timeout=120.0)
    totals = _callgrind_totals(workdir)
    per = {e: totals.get(e, 0) / requests for e in CALLGRIND_EVENTS}
    l1 = per["I1mr"] + per["D1mr"] + per["D1mw"]
    ll = per["ILmr"] + per["DLmr"] + per["DLmw"]
    return {"Ir": per["Ir"], "I1mr": per["I1mr"], "D1m": per["D1mr"] + per["D1mw"], "LLm": ll,
            "CEst": per["Ir"] + 10 * l1 + 100 * ll}


def run_callgrind(args: argparse.Namespace) -> None:
    import shutil

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (apt install valgrind)")
    variants = [v for v in args.variants.split(",") if v in (*CIRRON_VARIANTS, "none", "otel")]
    if "profile" not in variants:
        variants.insert(0, "profile")
    if "otel" in variants and not _otel_available():
        variants.remove("otel")
    print(f"under callgrind: {args.callgrind} requests per variant at concurrency {args.concurrency}, "
          "per request in the server (all threads)")
    print(f"{'variant':<10} {'instr':>10} {'I1 miss':>8} {'D1 miss':>8} {'LL miss':>8} {'cycles est':>11}   "
          "vs profile (instr, cycles est)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="cirron-bench-callgrind-") as tmp:
        for v in variants:
            wd = Path(tmp) / v
            wd.mkdir()
            r = results[v] = run_callgrind_variant(v, args.callgrind, args.concurrency, wd)
            base = results.get("profile")
            rel = "" if v == "profile" or base is None else \
                f"   {100 * (r['Ir'] / base['Ir'] - 1):+6.2f}% {100 * (r['CEst'] / base['CEst'] - 1):+6.2f}%"
            print(f"{v:<10} {r['Ir']:10.0f} {r['I1mr']:8.0f} {r['D1m']:8.0f} {r['LLm']:8.1f} {r['CEst']:11.0f}{rel}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"mode": "callgrind", "per_request": results}, indent=2))


# --------------------------------------------------------------------------- orchestration


def _server_env(workdir: Path) -> dict[str, str]:
    """A benchmark server's environment: its own spool and OpenTelemetry file under ``workdir``."""
    return dict(os.environ, CIRRON_SPOOL_DIR=str(workdir / "spool"), CIRRON_NO_PROJECT_FILE="1",
                BENCH_OTEL_FILE=str(workdir / "otel.jsonl"), PYTHONPATH=str(ROOT))


def _stop_server(server: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT (so the lifespan's profiling session ends and flushes), then SIGKILL if it hangs."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()


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


def _pinned_to(cpu: int | None):  # noqa: ANN202
    """A ``preexec_fn`` that pins the child process to ``cpu`` (None: no pinning)."""
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None


def _start_server(variant: str, workdir: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    """One variant's uvicorn server, its spool under ``workdir``; returns it with its port."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "serve", variant, "--port", str(port)],
                              env=_server_env(workdir), cwd=workdir, preexec_fn=_pinned_to(cpu))
    return server, port


def run_variant(variant: str, args: argparse.Namespace, workdir: Path) -> dict:
    env = _server_env(workdir)
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    server, port = _start_server(variant, workdir, cpus[-1] if pin else None)
    try:
        _wait_ready(port, server)
        cpu0 = _cpu_s(server.pid)
        sys0 = _cpu_s(server.pid, system_only=True)
        out = subprocess.run([sys.executable, __file__, "load", "--port", str(port), "--concurrency",
                              str(args.concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup)],
                             check=True, capture_output=True, text=True, env=env,
                             preexec_fn=_pinned_to(cpus[0] if pin else None))
        res = json.loads(out.stdout.strip().splitlines()[-1])
        # Server CPU per request (user+sys, flush service included): far less sensitive to other
        # load on the machine than throughput is.
        res["cpu_us_per_req"] = (_cpu_s(server.pid) - cpu0) / max(1, res["requests_all"]) * 1e6
        res["sys_us_per_req"] = (_cpu_s(server.pid, system_only=True) - sys0) / max(1, res["requests_all"]) * 1e6
        return res
    finally:
        _stop_server(server)


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
    parser.add_argument("--variants", help=f"comma-separated, from {','.join(VARIANTS)} (default: "
                        f"{','.join(DEFAULT_VARIANTS)}; --ab: {','.join(AB_VARIANTS)},otel; --ab always "
                        "adds profile, the baseline, and takes profile_b too)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pin", action="store_true", help="pin the server and the load generator to one CPU each")
    parser.add_argument("--asgi", action="store_true",
                        help="in-process mode: no server, no network; CPU per request of each variant")
    parser.add_argument("--block", type=int, default=2000, help="--asgi: requests per block")
    parser.add_argument("--blocks", type=int, default=10, help="--asgi: blocks per variant")
    parser.add_argument("--paired", type=int, metavar="N",
                        help="in-process, request by request: the added CPU per request of scope and inference")
    parser.add_argument("--ab", action="store_true",
                        help="a server per cirron variant side by side, load switched slice by slice")
    parser.add_argument("--slice", type=float, default=0.5, help="--ab: seconds per slice")
    parser.add_argument("--generations", type=int, default=4,
                        help="--ab: spread the rounds over this many sets of freshly started servers")
    parser.add_argument("--callgrind", type=int, metavar="N",
                        help="each variant's server under callgrind: instructions and cache misses per request")
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

    if args.variants is None and not args.ab:
        args.variants = ",".join(DEFAULT_VARIANTS)
    if args.asgi:
        run_asgi(args)
        return
    if args.paired:
        run_paired(args)
        return
    if args.ab:
        run_ab(args)
        return
    if args.callgrind:
        run_callgrind(args)
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
        # Each round runs the variants back to back, so a round's ratio is less exposed to the
        # machine's slow swings than the ratio of the two medians.
        pairs = list(zip(runs["inference"], runs["profile"]))
        cpu = statistics.median(100 * (a["cpu_us_per_req"] / b["cpu_us_per_req"] - 1) for a, b in pairs)
        print(f"\nserver CPU per request, inference vs profile, median of the rounds: {cpu:+.1f}%")
        print(verdict([100 * (1 - a["rps"] / b["rps"]) for a, b in pairs],
                      [100 * (a["p99_ms"] / b["p99_ms"] - 1) for a, b in pairs]))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "median": med}, indent=2))


if __name__ == "__main__":
    main()
