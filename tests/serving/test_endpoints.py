"""Endpoints told apart: every request span has an ``endpoint`` attr (``@ci.inference(name=)``,
else the function's qualified name) and, where the framework says it, a ``route`` template;
``cirron traces view`` shows the endpoint and ``--name`` matches it; OTLP carries both."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirron_cli.app import app as cli


def _requests(spans: list[dict]) -> list[dict]:
    return [s for s in spans if s["name"] == "request"]


def test_endpoint_is_the_name_or_the_qualified_name(prof) -> None:
    c = prof.c

    @c.inference(name="chat")
    def answer(q: str) -> str:
        return q

    class Model:
        @c.inference
        def predict(self, x: int) -> int:
            return x

    @c.inference
    async def embed(x: int) -> list:
        return [x]

    import asyncio

    answer("hi")
    Model().predict(1)
    asyncio.run(embed(2))
    endpoints = sorted(s["attrs"]["endpoint"] for s in _requests(prof.spans()))
    here = "test_endpoint_is_the_name_or_the_qualified_name.<locals>"
    assert endpoints == ["chat", f"{here}.Model.predict", f"{here}.embed"]


def test_bad_name_is_a_config_error(prof) -> None:
    from cirron._errors import CirronConfigError

    with pytest.raises(CirronConfigError, match="non-empty str"):
        prof.c.inference(name="")
    with pytest.raises(CirronConfigError, match="non-empty str"):
        prof.c.inference(name=3)


def test_fastapi_routes_are_recorded(prof) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    c = prof.c
    api = FastAPI()

    @api.get("/v1/items/{item_id}")
    @c.inference
    async def get_item(item_id: int) -> dict:
        return {"id": item_id}

    @api.post("/v1/chat")
    @c.inference(name="chat")
    def chat() -> dict:
        return {"ok": True}

    with TestClient(api) as client:
        for i in range(3):
            assert client.get(f"/v1/items/{i}").json() == {"id": i}
        assert client.post("/v1/chat").json() == {"ok": True}
    reqs = _requests(prof.spans())
    routes = sorted((s["attrs"]["endpoint"], s["attrs"].get("route")) for s in reqs)
    assert routes == [("chat", "/v1/chat")] + [
        ("test_fastapi_routes_are_recorded.<locals>.get_item", "/v1/items/{item_id}")] * 3


def test_flask_rules_are_recorded(prof) -> None:
    flask = pytest.importorskip("flask")
    c = prof.c
    web = flask.Flask("t")

    @web.route("/predict/<int:n>")
    @c.inference(name="predict")
    def predict(n: int) -> dict:
        return {"n": n}

    client = web.test_client()
    assert client.get("/predict/4").get_json() == {"n": 4}
    (req,) = _requests(prof.spans())
    assert req["attrs"]["endpoint"] == "predict" and req["attrs"]["route"] == "/predict/<int:n>"


def test_a_direct_call_has_no_route(prof) -> None:
    c = prof.c

    @c.inference
    def plain() -> int:
        return 1

    plain()
    (req,) = _requests(prof.spans())
    assert "route" not in req["attrs"]


def test_view_shows_and_matches_the_endpoint(prof, tmp_path: Path) -> None:
    c = prof.c

    @c.inference(name="chat")
    def chat() -> dict:
        with c.scope("tokenize"):
            pass
        return {}

    @c.inference(name="embed")
    def embed() -> dict:
        return {}

    chat()
    embed()
    c.shutdown()
    runner = CliRunner()
    r = runner.invoke(cli, ["traces", "view", "--no-color", "--spool", str(prof.spool)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert any(line.startswith("  request chat — ") for line in lines)
    assert any(line.startswith("  request embed — ") for line in lines)
    assert "endpoint=" not in r.stdout  # shown once, in the label
    r = runner.invoke(cli, ["traces", "view", "--no-color", "--name", "embed", "--spool", str(prof.spool)])
    assert "request embed" in r.stdout and "request chat" not in r.stdout
    r = runner.invoke(cli, ["traces", "view", "--json", "--name", "chat", "--spool", str(prof.spool)])
    assert '"endpoint":"chat"' in r.stdout.replace(" ", "") and "embed" not in r.stdout
