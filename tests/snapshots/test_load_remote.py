"""ci.load() of s3:// and https:// URLs: a real moto S3 server and a real HTTP server, both local."""

from __future__ import annotations

import http.server
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("fsspec")
from netutil import free_port  # noqa: E402

from cirron import Cirron, CirronConfigError  # noqa: E402

pa = pytest.importorskip("pyarrow")


def _spans(c: Cirron) -> list[dict]:
    return [n for n in c.trace(format="dict")["roots"] if n["name"] == "load"]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a port: nothing to wait on but the connection itself
    raise TimeoutError(f"nothing listened on {port} within {timeout} s")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("data")
        yield fs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_s3_urls_return_the_local_types(s3, spool_dir: Path) -> None:  # noqa: ANN001
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    s3.pipe("data/a.npy", _npy_bytes(arr))
    s3.pipe("data/t.csv", b"x,y\n1,2\n3,4\n")
    s3.pipe("data/readme.txt", b"hello")
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=[])
    np.testing.assert_array_equal(c.load("s3://data/a.npy"), arr)
    table = c.load("s3://data/t.csv")
    assert isinstance(table, pa.Table) and table.column("y").to_pylist() == [2, 4]
    assert c.load("s3://data/readme.txt") == "s3://data/readme.txt"
    spans = _spans(c)
    c.shutdown()
    assert [(s["attrs"]["source"], s["attrs"]["url"], s["attrs"]["bytes"]) for s in spans] == [
        ("s3", "s3://data/a.npy", len(_npy_bytes(arr))), ("s3", "s3://data/t.csv", 12),
        ("s3", "s3://data/readme.txt", 5)]


def test_s3_alias_from_the_project_file_and_a_missing_object(s3, tmp_path: Path, spool_dir: Path) -> None:  # noqa: ANN001
    s3.pipe("data/w.npy", _npy_bytes(np.ones(3)))
    (tmp_path / "cirron.yaml").write_text("name: p\nversion: '1'\nframework: pytorch\ntype: regression\n"
                                          "data:\n  weights: {uri: 's3://data/w.npy'}\n")
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=[])
    assert c.load("weights").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(CirronConfigError, match="no such object"):
        c.load("s3://data/missing.npy")
    spans = _spans(c)
    c.shutdown()
    assert spans[0]["attrs"]["dataset"] == "weights" and spans[0]["attrs"]["url"] == "s3://data/w.npy"
    assert spans[1]["attrs"]["error"].startswith("CirronConfigError")


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def _send(self, body: bool) -> None:
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(False)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base():  # noqa: ANN201
    pytest.importorskip("aiohttp")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Files.files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_https_style_urls_and_credentials_never_written(http_base, spool_dir: Path) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    base, files = http_base
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2, 3]}), buf)
    files["/t.parquet"] = buf.getvalue()
    c = Cirron(spool_dir=spool_dir, output="none")
    c.profile(frameworks=[])
    host = base.removeprefix("http://")
    table = c.load(f"http://user:s3cret@{host}/t.parquet?token=abc")
    assert table.column("a").to_pylist() == [1, 2, 3]
    spans = _spans(c)
    c.shutdown()
    (span,) = spans
    assert span["attrs"]["url"] == f"{base}/t.parquet" and span["attrs"]["source"] == "http"
    assert "s3cret" not in str(span) and "token" not in str(span)
    assert span["attrs"]["bytes"] == len(files["/t.parquet"])
