"""Issue 16: ``ci.profile()`` at module level under uvicorn, stopped with SIGTERM or SIGINT.

uvicorn owns its signals: it installs its handlers after the app module (and our ``ci.profile()``)
is imported, shuts down gracefully, puts the earlier handlers back and raises the signal again.
Every request that finished before the signal must be on disk, and the exit status must be the
one uvicorn has without cirron.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving_helpers import free_port, read_requests, run_server  # noqa: E402

APP = """
    import os
    from fastapi import FastAPI
    import cirron as ci

    if os.environ.get("WITH_CIRRON") == "1":
        ci.profile(flush_interval=60)  # module level, no lifespan: the signal path must write
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/predict")
    @ci.inference
    def predict(n: int):
        with ci.scope("model"):
            ci.mark("n", n)
        return {"n": n}
"""

N = 30


def _serve(tmp_path: Path, sig: int, with_cirron: bool) -> tuple[int, Path, str]:
    (tmp_path / "modapp.py").write_text(textwrap.dedent(APP))
    spool, port = tmp_path / "spool", free_port()
    args = ["-m", "uvicorn", "modapp:app", "--app-dir", str(tmp_path), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    with run_server(args, spool, tmp_path / "server.log", port=port, stop_signal=sig,
                    WITH_CIRRON="1" if with_cirron else "0") as srv:
        with httpx.Client(base_url=srv.base_url, timeout=20) as client:
            for i in range(N):
                assert client.post("/predict", params={"n": i}).json() == {"n": i}
    return srv.proc.returncode, spool, srv.output()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_level_profile_under_uvicorn_keeps_every_finished_request(tmp_path: Path, sig: int) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "ci").mkdir()
    without, _, _ = _serve(tmp_path / "plain", sig, with_cirron=False)
    status, spool, output = _serve(tmp_path / "ci", sig, with_cirron=True)
    assert status == without, output  # the exit status uvicorn has without cirron
    assert "Traceback" not in output and "not kept" not in output, output
    reqs, spans = read_requests(spool)
    assert len(reqs) == N and all(r.span["end_ns"] is not None for r in reqs)
    request_ids = {r.span["id"] for r in reqs}
    models = [s for s in spans if s["name"] == "model"]
    assert len(models) == N and all(s["parent_id"] in request_ids for s in models)
