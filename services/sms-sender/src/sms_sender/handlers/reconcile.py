"""Reconciliation: before an SMS whose request had an unknown outcome is reported failed, ask Twilio.

A request interrupted by a crash, a timeout or a 5xx may or may not have created the SMS
(decision 0009: it is never resent). ``SmsTarget.failed`` leaves such a row with ``reconcile_at``
set instead of reporting it; this loop then looks it up with the SDK
(``messages.page(to=, from_=, date_sent_after=)``, or ``messages(sid).fetch()`` once the sid is
known) and settles it in one transaction with its result event:

* Twilio has it, sent or delivered: SmsSent (the action is done; no person needs to check);
* Twilio has it, failed or undelivered: SmsFailed with the delivery reason;
* Twilio has it, not final yet: the row becomes ``accepted`` with its sid and is looked at again
  (status callbacks reach us from now on anyway);
* Twilio shows no such SMS: SmsFailed "unknown outcome, not resent", as before reconciliation;
* Twilio cannot be asked: retried with backoff, then reported unknown.

A status callback that arrives first settles the row itself (``handlers.callbacks``); the loop
re-checks under the row's lock and publishes nothing then. Every row reaches one result event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from twilio.rest import Client

from manual_actions.contracts import SmsFailed, SmsSent, topics
from manual_actions.twilio_support import (
    DispatchFailure,
    DispatchStatus,
    FailureKind,
    OutgoingRow,
    describe_twilio_error,
    lock_row,
    stage_result,
)
from sms_sender import metrics
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.domain.reconcile import ListedMessage, creation_window, find_sent_message
from sms_sender.domain.sms import SmsResult, delivery_failure_reason, result_for_status
from sms_sender.handlers.sending import SOURCE, stage_failure
from sms_sender.settings import SmsSenderSettings

logger = logging.getLogger("sms_sender.reconcile")

# Rows looked up per pass.
_BATCH = 20


def _listed(message: Any) -> ListedMessage:
    return ListedMessage(
        sid=str(message.sid),
        direction=str(message.direction) if message.direction is not None else None,
        body=message.body,
        date_created=message.date_created,
        status=str(message.status) if message.status is not None else None,
        error_code=message.error_code,
    )


class Reconciler:
    """The reconciliation loop of sms-sender (one per process; safe with several replicas).

    Each pass claims up to 20 due rows by moving their ``reconcile_at`` past the time a lookup
    can take (FOR UPDATE SKIP LOCKED: a replica never looks up the same row at once; a process
    that dies mid-lookup leaves the row due again later), asks Twilio with no transaction open,
    then settles each row under its lock.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        client: Client,
        settings: SmsSenderSettings,
        *,
        name: str = "sms-reconciler",
    ) -> None:
        self._engine = engine
        self._client = client
        self._settings = settings
        self._name = name
        self._stopping = asyncio.Event()
        self._skew = timedelta(seconds=settings.reconcile_clock_skew_seconds)
        self._timeout = timedelta(seconds=settings.twilio_request_timeout_seconds)
        # A claimed row is due again after this long if its lookup never finished.
        self._lease = timedelta(seconds=2 * settings.twilio_request_timeout_seconds + 30)

    async def run(self) -> None:
        """Reconcile due rows until ``stop()``; errors are logged and the loop goes on."""
        self._stopping.clear()
        while not self._stopping.is_set():
            try:
                worked = await self.reconcile_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s pass failed; retrying later", self._name)
                worked = 0
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self._settings.reconcile_poll_interval_seconds
                    )

    async def stop(self) -> None:
        self._stopping.set()

    async def reconcile_due(self) -> int:
        """Look up and settle the rows due now; returns how many were claimed."""
        t = outgoing_sms
        due = (
            select(t.c.command_id)
            .where(t.c.reconcile_at <= func.now())
            .order_by(t.c.reconcile_at)
            .limit(_BATCH)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self._engine.begin() as conn:
            claimed = (
                (
                    await conn.execute(
                        update(t)
                        .where(t.c.command_id.in_(due))
                        .values(reconcile_at=func.now() + self._lease)
                        .returning(t)
                    )
                )
                .mappings()
                .all()
            )
        for row in claimed:
            await self.reconcile(dict(row))
        return len(claimed)

    async def reconcile(self, row: OutgoingRow) -> None:
        """Look ``row`` up at Twilio and settle it (see the module docstring)."""
        sid: str | None = row["twilio_sid"]
        messages: list[ListedMessage] = []
        lookup_error: BaseException | None = None
        try:
            if sid:
                messages = [await asyncio.to_thread(self._fetch, sid)]
            else:
                messages = await asyncio.to_thread(self._list, row)
        except Exception as exc:  # any failure to ask is retried, then reported unknown
            lookup_error = exc
        command_id: uuid.UUID = row["command_id"]
        log_extra = {"command_id": str(command_id), "tenant": row["tenant_id"]}
        async with self._engine.begin() as conn:
            current = await lock_row(conn, outgoing_sms, command_id)
            assert current is not None, "outgoing rows are never deleted"
            if current["result"] is not None or current["reconcile_at"] is None:
                # A status callback settled it while we were asking.
                await self._done(conn, command_id)
                metrics.SMS_RECONCILIATIONS.labels("callback").inc()
                return
            if current["twilio_sid"] and not sid:
                # A callback gave the sid meanwhile (not a final status): fetch it next pass.
                await self._again(conn, command_id, after=timedelta(0), lookups=current["reconcile_lookups"])
                return
            lookups = current["reconcile_lookups"] + 1
            if lookup_error is not None:
                description = describe_twilio_error(lookup_error)[0]
                if lookups < self._settings.reconcile_max_lookups:
                    delay = timedelta(seconds=self._settings.reconcile_poll_interval_seconds * 2**lookups)
                    await self._again(conn, command_id, after=delay, lookups=lookups)
                    metrics.SMS_RECONCILIATIONS.labels("lookup_failed").inc()
                    logger.warning(
                        "could not look up an unknown sms at twilio; retrying",
                        extra={**log_extra, "error": description, "retry_in_seconds": delay.total_seconds()},
                    )
                    return
                metrics.SMS_RECONCILIATIONS.labels("gave_up").inc()
                logger.error(
                    "could not look up an unknown sms at twilio; reported unknown",
                    extra={**log_extra, "error": description, "lookups": lookups},
                )
                await self._report_unknown(
                    conn, current, f"and Twilio could not be asked about it ({description})"
                )
                return
            match = messages[0] if sid else await self._match(conn, current, messages)
            if match is None:
                metrics.SMS_RECONCILIATIONS.labels("not_found").inc()
                logger.error(
                    "unknown sms not found in twilio's message list; reported unknown", extra=log_extra
                )
                await self._report_unknown(conn, current, "and Twilio's message list does not show it")
                return
            await self._settle_found(conn, current, match, lookups, log_extra)

    # -- internals ---------------------------------------------------------------------------------

    def _list(self, row: OutgoingRow) -> list[ListedMessage]:
        """One page (the newest 50) of our messages to the row's number since its request began."""
        start, _ = creation_window(row["claimed_at"], self._timeout, self._skew)
        page = self._client.messages.page(
            to=row["to"],
            from_=self._settings.twilio_from_number,
            # The SDK writes the wall-clock fields with a "Z": give it UTC.
            date_sent_after=start.astimezone(UTC),
            page_size=50,
        )
        return [_listed(message) for message in page]

    def _fetch(self, sid: str) -> ListedMessage:
        return _listed(self._client.messages(sid).fetch())

    async def _match(
        self, conn: AsyncConnection, row: OutgoingRow, messages: list[ListedMessage]
    ) -> ListedMessage | None:
        sids = [m.sid for m in messages]
        known = (
            set(
                (
                    await conn.execute(
                        select(outgoing_sms.c.twilio_sid).where(
                            outgoing_sms.c.twilio_sid.in_(sids),
                            outgoing_sms.c.command_id != row["command_id"],
                        )
                    )
                ).scalars()
            )
            if sids
            else set()
        )
        return find_sent_message(
            messages,
            body=row["body"],
            window=creation_window(row["claimed_at"], self._timeout, self._skew),
            known_sids=known,
        )

    async def _settle_found(
        self,
        conn: AsyncConnection,
        row: OutgoingRow,
        message: ListedMessage,
        lookups: int,
        log_extra: dict[str, str],
    ) -> None:
        t = outgoing_sms
        command_id = row["command_id"]
        status = message.status or ""
        result = result_for_status(None, status)
        now = datetime.now(UTC)
        await conn.execute(
            update(t)
            .where(t.c.command_id == command_id)
            .values(
                status=DispatchStatus.ACCEPTED.value,
                twilio_sid=message.sid,
                twilio_status=status,
                updated_at=func.now(),
            )
        )
        logger.warning(
            "an sms whose outcome was unknown is at twilio",
            extra={**log_extra, "sid": message.sid, "twilio_status": status},
        )
        if result is SmsResult.SENT:
            await conn.execute(
                update(t).where(t.c.command_id == command_id).values(result=result.value, result_at=now)
            )
            await self._done(conn, command_id)
            await stage_result(
                conn,
                t,
                command_id,
                SmsSent(
                    command_id=command_id,
                    action_id=row["action_id"],
                    message_sid=message.sid,
                    to=row["to"],
                    delivery_status=status,
                    sent_at=now,
                ),
                topic=topics.SMS_RESULTS,
                source=SOURCE,
            )
            metrics.SMS_SENT.inc()
            metrics.SMS_RECONCILIATIONS.labels("found_sent").inc()
        elif result is SmsResult.FAILED:
            await conn.execute(
                update(t)
                .where(t.c.command_id == command_id)
                .values(result=result.value, result_at=now, error_code=message.error_code)
            )
            await self._done(conn, command_id)
            await stage_result(
                conn,
                t,
                command_id,
                SmsFailed(
                    command_id=command_id,
                    action_id=row["action_id"],
                    message_sid=message.sid,
                    reason=delivery_failure_reason(status, message.error_code),
                    error_code=message.error_code,
                    failed_at=now,
                ),
                topic=topics.SMS_RESULTS,
                source=SOURCE,
            )
            metrics.SMS_FAILED.labels("undelivered").inc()
            metrics.SMS_RECONCILIATIONS.labels("found_failed").inc()
        else:
            # Twilio has it and has not finished: its status callbacks reach us from now on; look
            # again later in case one is lost, then leave it to them.
            metrics.SMS_RECONCILIATIONS.labels("found_pending").inc()
            if lookups < self._settings.reconcile_max_lookups:
                delay = timedelta(seconds=max(self._settings.reconcile_delay_seconds, 1.0))
                await self._again(conn, command_id, after=delay, lookups=lookups)
            else:
                await self._done(conn, command_id)

    async def _report_unknown(self, conn: AsyncConnection, row: OutgoingRow, why: str) -> None:
        failure = DispatchFailure(
            FailureKind.UNKNOWN,
            f"{row['last_error'] or 'the request was interrupted'}; {why}",
            row["error_code"],
        )
        await stage_failure(conn, row, failure)

    async def _again(
        self, conn: AsyncConnection, command_id: uuid.UUID, *, after: timedelta, lookups: int
    ) -> None:
        await conn.execute(
            update(outgoing_sms)
            .where(outgoing_sms.c.command_id == command_id)
            .values(reconcile_at=func.now() + after, reconcile_lookups=lookups)
        )

    async def _done(self, conn: AsyncConnection, command_id: uuid.UUID) -> None:
        await conn.execute(
            update(outgoing_sms).where(outgoing_sms.c.command_id == command_id).values(reconcile_at=None)
        )
