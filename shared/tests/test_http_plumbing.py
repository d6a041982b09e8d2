"""create_app: problem+json for every error, readiness, metrics and request ids (in-process ASGI)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client import REGISTRY
from pydantic import BaseModel

from manual_actions.http import PROBLEM_JSON, add_readiness_check, create_app, problem


class NewContact(BaseModel):
    name: str
    phone: str
    priority: int = 0


def build_app() -> FastAPI:
    app = create_app("http-test")

    @app.post("/contacts", status_code=201)
    async def add_contact(contact: NewContact) -> dict[str, str]:
        return {"name": contact.name}

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        if item_id == 404:
            raise problem(404, "Item not found", f"No item {item_id} in this tenant", item_id=item_id)
        return {"item_id": item_id}

    @app.get("/legacy")
    async def legacy() -> None:
        raise HTTPException(409, "Already completed", headers={"X-Hint": "reload"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 leaked from a driver")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    return dict(body)


async def test_validation_error_is_422_problem_naming_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/contacts", json={"name": "Ada", "priority": "high"})

    body = assert_problem(response, 422)
    fields = [error["field"] for error in body["errors"]]  # type: ignore[attr-defined]
    assert fields == ["body.phone", "body.priority"]
    assert all(error["message"] for error in body["errors"])  # type: ignore[attr-defined]
    assert "body.phone" in str(body["detail"])
    assert "1 more" in str(body["detail"])
    assert body["instance"] == "/contacts"


async def test_validation_error_on_path_parameter(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/items/abc"), 422)
    assert body["errors"][0]["field"] == "path.item_id"  # type: ignore[index]


async def test_problem_exception_renders_status_title_detail_and_extras(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/items/404"), 404)
    assert body["title"] == "Item not found"
    assert body["detail"] == "No item 404 in this tenant"
    assert body["item_id"] == 404


async def test_http_exception_keeps_detail_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/legacy")
    body = assert_problem(response, 409)
    assert body["title"] == "Conflict"
    assert body["detail"] == "Already completed"
    assert response.headers["x-hint"] == "reload"


async def test_router_errors_are_problems_too(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/no-such-route"), 404)
    response = await client.delete("/contacts")
    assert_problem(response, 405)
    assert "POST" in response.headers["allow"]


async def test_unhandled_error_is_generic_500_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="manual_actions.http"):
        response = await client.get("/boom")

    body = assert_problem(response, 500)
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]
    crash_records = [r for r in caplog.records if r.exc_info]
    assert crash_records and "hunter2" in str(crash_records[0].exc_info[1])  # type: ignore[index]


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = await client.get("/health")
    assert len(generated.headers["x-request-id"]) == 32
    hostile = await client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "http-test"}


async def test_ready_runs_checks_and_names_the_failing_ones() -> None:
    async def ok() -> None:
        return None

    async def broken() -> None:
        raise ConnectionRefusedError("db host 10.0.0.7 refused")

    async def hung() -> None:
        await asyncio.sleep(10)

    app = create_app("ready-test", readiness_checks=[("database", ok)], readiness_timeout=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        healthy = await http.get("/ready")
        assert healthy.status_code == 200
        assert healthy.json() == {"status": "ready", "checks": {"database": "ok"}}

        add_readiness_check(app, "kafka", broken)
        add_readiness_check(app, "twilio", hung)
        response = await http.get("/ready")

    body = assert_problem(response, 503)
    assert body["failing"] == ["kafka", "twilio"]
    assert body["checks"] == {"database": "ok", "kafka": "ConnectionRefusedError", "twilio": "timeout"}
    assert "kafka" in str(body["detail"]) and "twilio" in str(body["detail"])
    assert "10.0.0.7" not in response.text


def _requests(route: str, status: str, method: str = "GET") -> float:
    value = REGISTRY.get_sample_value(
        "manual_actions_http_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    before_ok = _requests("/items/{item_id}", "200")
    before_missing = _requests("/items/{item_id}", "404")
    before_unmatched = _requests("unmatched", "404")

    for item in (1, 2, 3):
        await client.get(f"/items/{item}")
    await client.get("/items/404")
    await client.get("/random/path/123")
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert _requests("/items/{item_id}", "200") == before_ok + 3
    assert _requests("/items/{item_id}", "404") == before_missing + 1
    assert _requests("unmatched", "404") == before_unmatched + 1
    text = response.text
    assert 'manual_actions_http_requests_total{method="GET",route="/items/{item_id}",status="200"}' in text
    assert "manual_actions_http_request_duration_seconds_bucket" in text
    assert "/items/1" not in text  # raw paths never become label values
    assert 'manual_actions_service_info{service="http-test",version="0.1.0"} 1.0' in text
