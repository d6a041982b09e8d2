"""The dashboard widget in a real browser (Debian's Chromium driven by Playwright).

A user opens the widget, types a token, and sees their tenant's pending counts; a bad token shows
the server's reason instead of numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from devstack.processes import ServiceProcesses
from manual_actions.contracts import ActionType
from tests.e2e.support import action_queued, api, eventually, produce, run_async

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
NO_VALUE = "\u2013"  # the en dash the widget shows before it has counts
# Without these Chromium keeps trying to reach Google's hosts, which this machine cannot.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_widget_shows_the_tenants_pending_calls_and_sms(
    stack: Any, services: ServiceProcesses, new_tenant: Any, page: Page
) -> None:
    tenant, admin_token = new_tenant()
    workflow_id = uuid.uuid4()
    for action_type in (ActionType.CALL, ActionType.CALL, ActionType.SMS):
        run_async(produce(stack.kafka_bootstrap, action_queued(tenant, workflow_id, action_type)))
    dashboard = api(services.url("dashboard"), admin_token)
    eventually(lambda: dashboard.get("/v1/pending").json().get("total") == 3, what="3 pending in the API")

    page.goto(services.url("dashboard") + "/")
    page.get_by_label("API token").fill(admin_token)
    page.get_by_role("button", name="Show").click()

    expect(page.locator("#total")).to_have_text("3")
    expect(page.locator("#calls")).to_have_text("2")
    expect(page.locator("#sms")).to_have_text("1")
    expect(page.get_by_role("alert")).to_have_text("")


def test_widget_shows_why_a_token_is_refused(services: ServiceProcesses, page: Page) -> None:
    page.goto(services.url("dashboard") + "/")
    page.get_by_label("API token").fill("ma_0000000000000000_not-a-real-secret")
    page.get_by_role("button", name="Show").click()

    expect(page.get_by_role("alert")).to_have_text(
        "Unauthorized: The bearer token is unknown, malformed or revoked."
    )
    expect(page.locator("#total")).to_have_text(NO_VALUE)
