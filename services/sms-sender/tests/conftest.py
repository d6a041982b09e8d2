"""Fixtures of the sms-sender integration tests (see ``twilio_harness``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from twilio_harness import Harness, running, settings_for

from manual_actions.contracts import topics
from sms_sender.entrypoints.main import SPEC
from sms_sender.settings import SmsSenderSettings


@pytest.fixture(scope="module")
async def sms(stack: Any) -> AsyncIterator[Harness]:
    settings = settings_for(SmsSenderSettings, stack, "sms_sender_it").model_copy(
        update={"reconcile_delay_seconds": 0.5, "reconcile_poll_interval_seconds": 0.2}
    )
    async with running(SPEC, settings, stack, topics.SMS_RESULTS) as harness:
        yield harness
