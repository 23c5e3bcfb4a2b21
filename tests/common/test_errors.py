"""Errors: problem+json on Parley's routes, OpenAI's envelope on OpenAI-compatible ones."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from parley_common.api import create_service_app
from parley_common.errors import PROBLEM_JSON, Problem
from pydantic import BaseModel


class Body(BaseModel):
    name: str


def make_app() -> FastAPI:
    app = create_service_app(service="test", openai_prefixes=("/v1/chat/completions",))

    @app.post("/v1/things")
    async def create_thing(body: Body) -> dict[str, str]:
        if body.name == "taken":
            raise Problem(409, "name_taken", "That name is taken.")
        if body.name == "boom":
            raise RuntimeError("database password is hunter2")
        return {"name": body.name}

    @app.post("/v1/chat/completions")
    async def completions(body: Body) -> dict[str, str]:
        raise Problem(429, "rate_limit_exceeded", "Slow down.", headers={"retry-after": "3"})

    return app


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_problem_json_for_a_domain_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things", json={"name": "taken"}, headers={"x-request-id": "abc-1"})
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {
        "type": "https://parley.dev/problems/name_taken",
        "title": "Conflict",
        "status": 409,
        "detail": "That name is taken.",
        "instance": "/v1/things",
        "request_id": "abc-1",
    }
    assert response.headers["x-request-id"] == "abc-1"


async def test_validation_errors_list_every_problem(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things", json={"nom": 1})
    assert response.status_code == 422
    body = response.json()
    assert body["type"].endswith("/validation_error")
    assert body["errors"][0]["loc"] == ["body", "name"]


async def test_unexpected_errors_reveal_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things", json={"name": "boom"})
    assert response.status_code == 500
    assert "hunter2" not in response.text
    assert response.json()["type"].endswith("/internal_error")


async def test_openai_routes_use_openai_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"name": "x"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {
        "error": {
            "message": "Slow down.",
            "type": "rate_limit_exceeded",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    invalid = await client.post("/v1/chat/completions", json={})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["type"] == "invalid_request_error"
    assert invalid.json()["error"]["param"] == "name"


async def test_health_and_metrics_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    await client.post("/v1/things", json={"name": "a"})
    metrics = (await client.get("/metrics")).text
    assert (
        'parley_http_requests_total{method="POST",route="/v1/things",service="test",status="200"}' in metrics
    )
