"""Issue 16: a real gunicorn, stopped with SIGTERM, keeps every request that finished before it.

gunicorn forks its workers and owns their signals: on SIGTERM the arbiter asks each worker to
stop (SIGTERM again); a sync worker finishes its request and leaves through ``sys.exit`` (our
atexit writes), a uvicorn worker runs the ASGI lifespan shutdown. The app calls ``ci.profile()``
at module level with a long flush interval, so nothing reaches the spool before the stop, and
every worker process has a session of its own.
"""

from __future__ import annotations

import signal
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")
httpx = pytest.importorskip("httpx")

from serving_helpers import free_port, read_requests, run_server  # noqa: E402

WSGI_APP = """
    import os, time
    from flask import Flask, request
    import cirron as ci

    ci.profile(flush_interval=60)
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return {"ok": True}

    @ci.inference
    def predict_n(n: int) -> dict:
        with ci.scope("model", n=n):
            ci.mark("n", n)
            time.sleep(0.01)  # a request long enough for the other worker to take the next one
        return {"n": n, "pid": os.getpid()}

    @app.post("/predict")
    def predict():
        return predict_n(int(request.args["n"]))
"""

ASGI_APP = """
    import asyncio, os
    from fastapi import FastAPI
    import cirron as ci

    ci.profile(flush_interval=60)
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/predict")
    @ci.inference
    async def predict(n: int):
        with ci.scope("model", n=n):
            ci.mark("n", n)
            await asyncio.sleep(0.01)
        return {"n": n, "pid": os.getpid()}
"""

WORKERS = 2
#: Requests sent at least; more, up to MAX_REQUESTS, until each worker has answered one.
N, MAX_REQUESTS = 40, 400


def _serve(tmp_path: Path, app: str, worker_class: str, preload: bool) -> tuple[dict[int, int], Path, str, int]:
    (tmp_path / "gapp.py").write_text(textwrap.dedent(app))
    spool, port = tmp_path / "spool", free_port()
    args = ["-m", "gunicorn", "gapp:app", "--chdir", str(tmp_path), "--bind", f"127.0.0.1:{port}",
            "--workers", str(WORKERS), "--worker-class", worker_class, "--graceful-timeout", "20",
            "--log-level", "warning", *(["--preload"] if preload else [])]
    answered: dict[int, int] = {}  # n -> pid of the worker that answered
    with run_server(args, spool, tmp_path / "server.log", port=port, stop_signal=signal.SIGTERM) as srv:
        # a new connection per request: a kept-alive one stays with the worker that accepted it
        with httpx.Client(base_url=srv.base_url, timeout=20, headers={"Connection": "close"}) as client, \
                ThreadPoolExecutor(4) as pool:
            def send(n: int) -> None:
                reply = client.post("/predict", params={"n": n}).json()
                assert reply["n"] == n
                answered[n] = reply["pid"]

            n = 0
            while n < N or (len(set(answered.values())) < WORKERS and n < MAX_REQUESTS):
                list(pool.map(send, range(n, n + 8)))
                n += 8
    return answered, spool, srv.output(), srv.proc.returncode


@pytest.mark.parametrize(("worker_class", "preload"), [("sync", False), ("sync", True),
                                                       ("uvicorn.workers.UvicornWorker", False)])
def test_gunicorn_sigterm_keeps_every_finished_request_of_every_worker(tmp_path: Path, worker_class: str,
                                                                        preload: bool) -> None:
    # Without --preload each worker imports the app and has a session of its own; with it, the
    # arbiter's session is started before the fork and each worker records below a process root
    # of its own in that session.
    if worker_class.startswith("uvicorn"):
        pytest.importorskip("uvicorn.workers")
        pytest.importorskip("fastapi")
        app = ASGI_APP
    else:
        pytest.importorskip("flask")
        app = WSGI_APP
    answered, spool, output, status = _serve(tmp_path, app, worker_class, preload)
    assert status == 0, output  # gunicorn's own exit status after a SIGTERM stop
    assert "Traceback" not in output and "not kept" not in output, output
    assert len(set(answered.values())) == WORKERS, answered  # both workers served requests
    reqs, spans = read_requests(spool)
    # every finished request is on disk, closed, once, in the session of the worker that served it
    requests = {r.span["id"]: r.span for r in reqs}
    models = {s["attrs"]["n"]: s for s in spans if s["name"] == "model"}
    assert len(reqs) == len(answered) and sorted(models) == sorted(answered)
    for n, pid in answered.items():
        request = requests[models[n]["parent_id"]]
        assert request["end_ns"] is not None and models[n]["end_ns"] is not None
        assert request["pid"] == models[n]["pid"] == pid
    roots = [s for s in spans if s["name"] == ("cirron.process" if preload else "cirron.session")]
    assert sorted(r["attrs"]["pid"] for r in roots) == sorted(set(answered.values()))
    assert all(r["end_ns"] is not None for r in roots)
    if preload:  # one session: the arbiter's, which the worker roots hang from
        (session,) = [s for s in spans if s["name"] == "cirron.session"]
        assert all(r["parent_id"] == session["id"] for r in roots)
