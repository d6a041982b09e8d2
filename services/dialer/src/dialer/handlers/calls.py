"""Twilio's voice webhooks: the TwiML that bridges the agent to the contact, and call status callbacks."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.twiml.voice_response import VoiceResponse

from dialer import metrics
from dialer.adapters.tables import call_status_callbacks, outgoing_calls
from dialer.domain.calls import CallResult, duration_seconds, should_report
from dialer.handlers.placing import SOURCE
from manual_actions.contracts import CallCompleted, topics
from manual_actions.twilio_support import record_callback, stage_result

logger = logging.getLogger(__name__)


async def bridge_twiml(engine: AsyncEngine, command_id: uuid.UUID, caller_id: str) -> str:
    """TwiML for the answered agent: dial the contact of ``command_id`` showing ``caller_id``.

    For an unknown command the agent hears a short message and the call ends (Twilio would
    otherwise play its generic application error).
    """
    t = outgoing_calls
    async with engine.begin() as conn:
        contact = (
            await conn.execute(
                update(t)
                .where(t.c.command_id == command_id)
                .values(connected_at=func.coalesce(t.c.connected_at, func.now()), updated_at=func.now())
                .returning(t.c.to)
            )
        ).scalar_one_or_none()
    response = VoiceResponse()
    if contact is None:
        logger.warning("voice connect for an unknown command", extra={"command_id": str(command_id)})
        response.say("Sorry, this call is no longer available.")
        response.hangup()
        return str(response)
    metrics.CONNECTS.inc()
    response.dial(contact, caller_id=caller_id)
    return str(response)


async def handle_call_status(
    engine: AsyncEngine, command_id: uuid.UUID, status: str, params: Mapping[str, str]
) -> bool:
    """Record one callback (``status`` is its CallStatus, ``params`` all its verified form
    parameters); the first final status publishes CallCompleted with the call's duration. Returns
    False when no such command exists (nothing is recorded).
    """
    t = outgoing_calls
    async with engine.begin() as conn:
        row = await record_callback(
            conn, t, call_status_callbacks, command_id,
            sid=params.get("CallSid") or None, status=status, params=params,
        )
        if row is None:
            return False
        current = CallResult(row["result"]) if row["result"] else None
        report = should_report(current, status)
        if report:
            duration = duration_seconds(params.get("CallDuration"))
            now = datetime.now(UTC)
            await conn.execute(
                update(t).where(t.c.command_id == command_id).values(
                    result=CallResult.REPORTED.value, result_at=now, duration_seconds=duration
                )
            )
            await stage_result(
                conn, t, command_id,
                CallCompleted(command_id=command_id, action_id=row["action_id"], call_sid=row["twilio_sid"],
                              call_status=status, duration_seconds=duration, ended_at=now),
                topic=topics.CALL_RESULTS, source=SOURCE,
            )
    metrics.STATUS_CALLBACKS.labels(status if status in metrics.CALL_STATUSES else "other").inc()
    if report:
        metrics.CALLS_COMPLETED.labels(status).inc()
    return True

