"""Storing PlaceCall commands and placing them through Twilio (the ``Dispatcher`` target).

A call rings the agent first; when the agent answers, Twilio fetches ``/twilio/voice/connect``,
whose TwiML dials the contact (see ``handlers.calls``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from twilio.rest import Client

from dialer import metrics
from dialer.adapters.tables import outgoing_calls
from dialer.domain.calls import NOT_PLACED_STATUS, CallResult
from manual_actions.contracts import CallCompleted, PlaceCall, topics
from manual_actions.kafka import BatchHandler
from manual_actions.twilio_support import (
    DispatchFailure,
    FailureKind,
    OutgoingRow,
    TwilioSettings,
    command_intake,
    stage_result,
)

SOURCE = "dialer"
CONNECT_PATH = "/twilio/voice/connect"
STATUS_CALLBACK_PATH = "/twilio/call-status"
STATUS_CALLBACK_EVENTS = ["initiated", "ringing", "answered", "completed"]


def _row_values(command: PlaceCall) -> Mapping[str, object]:
    return {"to": command.to, "agent_phone": command.agent_phone, "requested_by": command.requested_by}


def place_call_intake(engine: AsyncEngine, *, stored: Callable[[], None] | None = None) -> BatchHandler:
    """Consumer handler for call-commands: one ``outgoing_calls`` row per command id, committed."""
    return command_intake(engine, outgoing_calls, PlaceCall, _row_values, stored=stored)


class CallTarget:
    """The dispatcher's work for a call: ``calls.create`` to the agent; CallCompleted(failed) on failure."""

    operation = "calls.create"

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings

    def send(self, client: Client, row: OutgoingRow) -> str:
        command = str(row["command_id"])
        call = client.calls.create(
            to=row["agent_phone"],
            from_=self._settings.twilio_from_number,
            url=self._settings.public_url(CONNECT_PATH, command_id=command),
            method="POST",
            status_callback=self._settings.public_url(STATUS_CALLBACK_PATH, command_id=command),
            status_callback_event=STATUS_CALLBACK_EVENTS,
            status_callback_method="POST",
        )
        return str(call.sid)

    async def accepted(self, conn: AsyncConnection, row: OutgoingRow, sid: str) -> None:
        metrics.CALLS_PLACED.inc()

    async def failed(self, conn: AsyncConnection, row: OutgoingRow, failure: DispatchFailure) -> None:
        # CallCompleted has no reason field: the reason stays in the row's last_error and the log.
        result = CallResult.UNKNOWN if failure.kind is FailureKind.UNKNOWN else CallResult.FAILED
        now = datetime.now(UTC)
        await conn.execute(
            update(outgoing_calls)
            .where(outgoing_calls.c.command_id == row["command_id"])
            .values(result=result.value, result_at=func.now(), duration_seconds=0)
        )
        await stage_result(
            conn,
            outgoing_calls,
            row["command_id"],
            CallCompleted(command_id=row["command_id"], action_id=row["action_id"], call_sid=None,
                          call_status=NOT_PLACED_STATUS, duration_seconds=0, ended_at=now),
            topic=topics.CALL_RESULTS,
            source=SOURCE,
        )
        metrics.CALLS_NOT_PLACED.labels(failure.kind.value).inc()
        metrics.CALLS_COMPLETED.labels(NOT_PLACED_STATUS).inc()
