"""configure_logging: one parseable JSON object per line, with the fixed fields, context and extras."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from manual_actions.http import create_app
from manual_actions.logging import configure_logging, log_context


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the handler is removed afterwards so later tests are unaffected."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("logging-test", "DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    """Every line written so far must be a JSON object; the buffer is emptied."""
    out = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return [json.loads(line) for line in out.splitlines()]


def test_a_line_is_json_with_fixed_fields_and_extras(json_logs: io.StringIO) -> None:
    logging.getLogger("app.orders").info("queued %s actions", 3, extra={"workflow_id": "wf-1", "count": 3})

    [line] = lines(json_logs)
    assert line["message"] == "queued 3 actions"
    assert line["level"] == "INFO"
    assert line["service"] == "logging-test"
    assert line["logger"] == "app.orders"
    assert line["workflow_id"] == "wf-1" and line["count"] == 3
    logged_at = datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00"))
    assert str(line["time"]).endswith("Z") and logged_at.tzinfo == UTC
    assert abs((datetime.now(UTC) - logged_at).total_seconds()) < 60
    assert "msg" not in line and "args" not in line and "levelno" not in line


def test_exception_text_is_included(json_logs: io.StringIO) -> None:
    try:
        raise ValueError("bad phone")
    except ValueError:
        logging.getLogger("app").exception("could not send")

    [line] = lines(json_logs)
    assert line["level"] == "ERROR"
    assert "ValueError: bad phone" in str(line["exception"])
    assert "Traceback" in str(line["exception"])


def test_context_fields_and_reserved_names(json_logs: io.StringIO) -> None:
    with log_context(tenant="acme", request_id="r-1"):
        logging.getLogger("app").warning("inside", extra={"service": "forged"})
    logging.getLogger("app").warning("outside")

    inside, outside = lines(json_logs)
    assert inside["tenant"] == "acme" and inside["request_id"] == "r-1"
    assert inside["service"] == "logging-test" and inside["service_"] == "forged"
    assert "tenant" not in outside


def test_configure_is_idempotent_and_takes_over_uvicorn(json_logs: io.StringIO) -> None:
    configure_logging("logging-test", "INFO", stream=json_logs)
    configure_logging("logging-test", "INFO", stream=json_logs)
    logging.getLogger("uvicorn.error").info("Uvicorn running")
    logging.getLogger("app").debug("hidden at INFO")

    [line] = lines(json_logs)
    assert line["logger"] == "uvicorn.error"
    assert line["message"] == "Uvicorn running"


async def test_request_logs_carry_the_request_id(json_logs: io.StringIO) -> None:
    app = create_app("logging-test")

    @app.get("/work")
    async def do_work() -> dict[str, bool]:
        logging.getLogger("app.work").info("working")
        return {"ok": True}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.get("/work", headers={"X-Request-ID": "req-42"})

    records = lines(json_logs)
    work = next(r for r in records if r["logger"] == "app.work")
    access = next(r for r in records if r["logger"] == "manual_actions.http.access")
    assert response.headers["x-request-id"] == "req-42"
    assert work["request_id"] == "req-42" and access["request_id"] == "req-42"
    assert access["route"] == "/work" and access["status"] == 200 and "duration_ms" in access


def test_debug_level_does_not_let_aiokafka_print_record_values() -> None:
    import io
    import logging

    from manual_actions.logging import configure_logging

    stream = io.StringIO()
    configure_logging("test-service", "DEBUG", stream=stream)
    try:
        logging.getLogger("aiokafka.consumer.fetcher").debug("record value: %s", "+14155550123 Hi Ada")
        logging.getLogger("manual_actions.test").debug("our own debug line")
        written = stream.getvalue()
        assert "+14155550123" not in written
        assert "our own debug line" in written
    finally:
        configure_logging("test-service", "INFO")
