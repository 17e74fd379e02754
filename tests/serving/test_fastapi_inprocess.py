"""FastAPI in process (TestClient): parameters, dependencies and responses go through unchanged."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import Depends, FastAPI, Header  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from cirron._record.instrument import current_request_id  # noqa: E402


class Item(BaseModel):
    name: str
    qty: int = 1


def settings() -> dict:
    return {"unit": "kg"}


def test_fastapi_sees_the_original_parameters(prof) -> None:
    c = prof.c
    app = FastAPI()

    @app.post("/items/{item_id}")
    @c.inference
    async def create(item_id: int, item: Item, verbose: bool = False, x_tenant: str = Header("none"),
                     cfg: dict = Depends(settings)) -> dict:
        c.mark("item_id", item_id)
        return {"item_id": item_id, "item": item.model_dump(), "verbose": verbose, "tenant": x_tenant,
                "unit": cfg["unit"], "rid": current_request_id()}

    @app.get("/sync")
    @c.inference
    def sync_endpoint(n: int) -> dict:  # run in FastAPI's thread pool
        c.mark("n", n)
        return {"n": n, "rid": current_request_id()}

    @app.get("/sse")
    @c.inference
    def sse(n: int) -> StreamingResponse:
        def body():
            for i in range(n):
                yield f"data: {i}\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    with TestClient(app) as client:
        r = client.post("/items/7?verbose=true", json={"name": "apple"}, headers={"x-tenant": "t1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["item"] == {"name": "apple", "qty": 1} and body["verbose"] is True
        assert (body["tenant"], body["unit"]) == ("t1", "kg")
        bad = client.post("/items/notanint", json={"name": "x"})
        assert bad.status_code == 422  # validation still runs before the handler (no request span)
        s = client.get("/sync", params={"n": 3}).json()
        text = client.get("/sse", params={"n": 4}).text
        assert text.count("data: ") == 4
        schema = client.get("/openapi.json").json()
        params = {p["name"] for p in schema["paths"]["/items/{item_id}"]["post"]["parameters"]}
        assert params == {"item_id", "verbose", "x-tenant"}

    reqs = prof.requests()
    assert len(reqs) == 3
    by_id = {r.id: r for r in reqs}
    assert by_id[body["rid"]].points("item_id") == [7]
    assert by_id[s["rid"]].points("n") == [3]
    (stream,) = [r for r in reqs if "stream_end" in r.attrs]
    assert stream.attrs["stream_end"] == "exhausted" and stream.summary["chunks"] == 4
