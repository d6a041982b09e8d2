"""Storing SendSms commands and sending them through Twilio (the ``Dispatcher`` target)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from twilio.rest import Client

from manual_actions.contracts import SendSms, SmsFailed, topics
from manual_actions.kafka import BatchHandler
from manual_actions.twilio_support import (
    DispatchFailure,
    FailureKind,
    OutgoingRow,
    TwilioSettings,
    command_intake,
    stage_result,
)
from sms_sender import metrics
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.domain.sms import failure_reason, result_for_failure
from sms_sender.settings import SmsSenderSettings

SOURCE = "sms-sender"
STATUS_CALLBACK_PATH = "/twilio/sms-status"


def _row_values(command: SendSms) -> Mapping[str, object]:
    return {"to": command.to, "body": command.body, "requested_by": command.requested_by}


def send_sms_intake(engine: AsyncEngine, *, stored: Callable[[], None] | None = None) -> BatchHandler:
    """Consumer handler for sms-commands: one ``outgoing_sms`` row per command id, committed."""
    return command_intake(engine, outgoing_sms, SendSms, _row_values, stored=stored)


class SmsTarget:
    """What the dispatcher does for an SMS: ``messages.create`` and SmsFailed when it fails.

    With ``SmsSenderSettings`` (always, in sms-sender), a request whose outcome is unknown is not
    reported at once: it is left for ``handlers.reconcile`` to look up at Twilio after
    ``RECONCILE_DELAY_SECONDS`` (decision 0017), which reports it sent, failed, or still unknown.
    """

    operation = "messages.create"

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        self._reconcile_delay = (
            settings.reconcile_delay_seconds if isinstance(settings, SmsSenderSettings) else None
        )

    def send(self, client: Client, row: OutgoingRow) -> str:
        message = client.messages.create(
            to=row["to"],
            from_=self._settings.twilio_from_number,
            body=row["body"],
            status_callback=self._settings.public_url(
                STATUS_CALLBACK_PATH, command_id=str(row["command_id"])
            ),
        )
        return str(message.sid)

    async def accepted(self, conn: AsyncConnection, row: OutgoingRow, sid: str) -> None:
        metrics.SMS_ACCEPTED.inc()

    async def failed(self, conn: AsyncConnection, row: OutgoingRow, failure: DispatchFailure) -> None:
        if failure.kind is FailureKind.UNKNOWN and self._reconcile_delay is not None:
            await conn.execute(
                update(outgoing_sms)
                .where(outgoing_sms.c.command_id == row["command_id"])
                .values(
                    reconcile_at=func.now() + timedelta(seconds=self._reconcile_delay),
                    reconcile_lookups=0,
                    error_code=failure.error_code,
                )
            )
            metrics.SMS_RECONCILIATIONS.labels("started").inc()
            return
        await stage_failure(conn, row, failure)


async def stage_failure(conn: AsyncConnection, row: OutgoingRow, failure: DispatchFailure) -> None:
    """Record ``failure`` as the row's result and stage its SmsFailed, in the caller's transaction."""
    result = result_for_failure(failure)
    reason = failure_reason(failure)
    await conn.execute(
        update(outgoing_sms)
        .where(outgoing_sms.c.command_id == row["command_id"])
        .values(result=result.value, result_at=func.now(), error_code=failure.error_code, reconcile_at=None)
    )
    await stage_result(
        conn,
        outgoing_sms,
        row["command_id"],
        SmsFailed(
            command_id=row["command_id"],
            action_id=row["action_id"],
            reason=reason,
            error_code=failure.error_code,
            failed_at=datetime.now(UTC),
        ),
        topic=topics.SMS_RESULTS,
        source=SOURCE,
    )
    metrics.SMS_FAILED.labels(failure.kind.value).inc()
