"""Fixtures of the dialer integration tests.

The harness is shared with sms-sender's tests (both run a ``TwilioService`` the same way); it lives
in ``services/sms-sender/tests/twilio_harness.py`` and is put on the import path here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dialer.entrypoints.main import SPEC
from dialer.settings import DialerSettings
from manual_actions.contracts import topics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sms-sender" / "tests"))
from twilio_harness import Harness, running, settings_for


@pytest.fixture(scope="module")
async def dialer(stack: Any) -> AsyncIterator[Harness]:
    settings = settings_for(DialerSettings, stack, "dialer_it")
    async with running(SPEC, settings, stack, topics.CALL_RESULTS) as harness:
        yield harness
