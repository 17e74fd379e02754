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


@pytest.fixture
def no_heap_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route must come from the request's scope or the module's app, not the last resort."""
    from cirron._record import instrument

    def fail(wrapper: object) -> None:
        raise AssertionError("the route was looked up among the referrers")

    monkeypatch.setattr(instrument, "_route_among_referrers", fail)


def test_route_comes_from_the_request_scope(prof, no_heap_walk: None) -> None:
    pytest.importorskip("httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    c = prof.c
    api = FastAPI()

    @api.get("/v1/items/{item_id}")  # async: the router's frames hold the scope
    @c.inference(name="item")
    async def get_item(item_id: int) -> dict:
        return {"id": item_id}

    @c.inference(name="health")  # plain Starlette, sync (in a worker thread): its Request argument holds it
    def health(request: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    web = Starlette(routes=[Mount("/ops", routes=[Route("/health/{probe}", health)])])
    with TestClient(api) as client:
        assert client.get("/v1/items/7").json() == {"id": 7}
    with TestClient(web) as client:
        assert client.get("/ops/health/live").json() == {"ok": True}
    routes = sorted((s["attrs"]["endpoint"], s["attrs"].get("route")) for s in _requests(prof.spans()))
    assert routes == [("health", "/health/{probe}"), ("item", "/v1/items/{item_id}")]  # the path within its Mount


def test_sync_endpoint_route_comes_from_its_modules_app(prof, no_heap_walk: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync FastAPI endpoint without a Request: the app its module holds (as ``uvicorn mod:app``)."""
    import sys
    import types

    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    mod = types.ModuleType("cirron_test_served_app")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    mod.ci = prof.c
    exec(compile(
        "from fastapi import FastAPI\n"
        "app = FastAPI()\n"
        "@app.post('/v2/complete/{n}')\n"
        "@ci.inference(name='complete')\n"
        "def complete(n: int) -> dict:\n"
        "    return {'n': n}\n",
        "<cirron_test_served_app>", "exec"), mod.__dict__)
    with TestClient(mod.app) as client:
        assert client.post("/v2/complete/3").json() == {"n": 3}
        assert client.post("/v2/complete/4").json() == {"n": 4}
    routes = [s["attrs"].get("route") for s in _requests(prof.spans())]
    assert routes == ["/v2/complete/{n}"] * 2


def test_a_route_is_never_reported_without_its_prefix(prof) -> None:
    """An endpoint of a router included under a prefix: its full template, or none at all."""
    pytest.importorskip("httpx")
    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient

    c = prof.c
    api, router = FastAPI(), APIRouter()

    @router.post("/complete/{n}")
    @c.inference(name="complete")
    async def complete(n: int) -> dict:
        return {"n": n}

    api.include_router(router, prefix="/v2")
    with TestClient(api) as client:
        assert client.post("/v2/complete/3").json() == {"n": 3}
    (req,) = _requests(prof.spans())
    assert req["attrs"].get("route") in (None, "/v2/complete/{n}")


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
