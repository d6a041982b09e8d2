"""Twilio's message status callbacks: record each one, publish the result it settles (once)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.contracts import SmsFailed, SmsSent, topics
from manual_actions.twilio_support import record_callback, stage_result
from sms_sender import metrics
from sms_sender.adapters.tables import outgoing_sms, sms_status_callbacks
from sms_sender.domain.sms import SmsResult, delivery_failure_reason, result_for_status
from sms_sender.handlers.sending import SOURCE


def _error_code(params: Mapping[str, str]) -> int | None:
    raw = params.get("ErrorCode") or ""
    return int(raw) if raw.isdigit() else None


async def handle_status_callback(
    engine: AsyncEngine, command_id: uuid.UUID, status: str, params: Mapping[str, str]
) -> bool:
    """Record one callback (``status`` is its MessageStatus, ``params`` all its verified form
    parameters); stage SmsSent/SmsFailed when it settles the result. Returns False when no such
    command exists (nothing is recorded).
    """
    error_code = _error_code(params)
    t = outgoing_sms
    async with engine.begin() as conn:
        row = await record_callback(
            conn, t, sms_status_callbacks, command_id,
            sid=params.get("MessageSid") or None, status=status, params=params,
        )
        if row is None:
            return False
        current = SmsResult(row["result"]) if row["result"] else None
        result = result_for_status(current, status)
        now = datetime.now(UTC)
        if result is not None:
            await conn.execute(
                update(t).where(t.c.command_id == command_id).values(
                    result=result.value, result_at=now,
                    error_code=error_code if result is SmsResult.FAILED else row["error_code"],
                    reconcile_at=None,  # settled: nothing left for the reconciliation loop
                )
            )
        if result is SmsResult.SENT:
            await stage_result(
                conn, t, command_id,
                SmsSent(command_id=command_id, action_id=row["action_id"], message_sid=row["twilio_sid"],
                        to=row["to"], delivery_status=status, sent_at=now),
                topic=topics.SMS_RESULTS, source=SOURCE,
            )
        elif result is SmsResult.FAILED:
            await stage_result(
                conn, t, command_id,
                SmsFailed(command_id=command_id, action_id=row["action_id"], message_sid=row["twilio_sid"],
                          reason=delivery_failure_reason(status, error_code), error_code=error_code,
                          failed_at=now),
                topic=topics.SMS_RESULTS, source=SOURCE,
            )
    metrics.STATUS_CALLBACKS.labels(status if status in metrics.MESSAGE_STATUSES else "other").inc()
    if result is SmsResult.SENT:
        metrics.SMS_SENT.inc()
    elif result is SmsResult.FAILED:
        metrics.SMS_FAILED.labels("undelivered").inc()
    return True
