"""When a call is reported (pure functions, no I/O)."""

from __future__ import annotations

import pytest

from dialer.domain.calls import CallResult, duration_seconds, should_report


@pytest.mark.parametrize("status", ["completed", "busy", "no-answer", "failed", "canceled"])
def test_a_final_status_is_reported_once(status: str) -> None:
    assert should_report(None, status)
    assert not should_report(CallResult.REPORTED, status)
    assert not should_report(CallResult.FAILED, status)


@pytest.mark.parametrize("status", ["queued", "initiated", "ringing", "in-progress"])
def test_progress_statuses_are_not_reported(status: str) -> None:
    assert not should_report(None, status)


def test_a_call_reported_unknown_is_corrected_by_its_final_status() -> None:
    assert should_report(CallResult.UNKNOWN, "completed")


@pytest.mark.parametrize(("raw", "expected"), [("42", 42), ("0", 0), (None, 0), ("", 0), ("-3", 0)])
def test_duration_seconds(raw: str | None, expected: int) -> None:
    assert duration_seconds(raw) == expected
