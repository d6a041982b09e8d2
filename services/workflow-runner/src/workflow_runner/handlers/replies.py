"""Inbound SMS (SmsReceived from sms-sender): opt-out and opt-in keywords change the contact's SMS
opt-out; any other message is a reply. Opt-outs and replies reach the ``opted_out`` and
``replied`` goals of the contact's running enrollments (``goals``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from manual_actions.contracts.topics import CONTACTS
from workflow_runner.domain.workflows import Goal
from workflow_runner.handlers.commands import ReplyReceived
from workflow_runner.handlers.directory import contact_updated
from workflow_runner.handlers.goals import stop_for_goals
from workflow_runner.handlers.ports import ContactFilter, UnitOfWork

INBOX_CONSUMER = "workflow-runner"
OPT_OUT, OPT_IN, HELP = "opt_out", "opt_in", "help"
MAX_CONTACTS_PER_PHONE = 100

log = logging.getLogger(__name__)


async def replies_received(uow: UnitOfWork, events: Sequence[ReplyReceived]) -> int:
    """Apply inbound SMS in one transaction (inbox-deduplicated). Every contact of the tenant with
    the sender's number is affected. Returns how many enrollments were stopped."""
    stopped = 0
    async with uow:
        for event in events:
            if not await uow.first_time_seen(INBOX_CONSUMER, event.message_id):
                continue
            contacts = await uow.contacts.list(
                event.tenant, limit=MAX_CONTACTS_PER_PHONE, filters=ContactFilter(phone=event.from_phone)
            )
            if not contacts:
                log.info("inbound SMS from an unknown number", extra={"tenant": event.tenant})
            now = datetime.now(UTC)
            for found in contacts:
                if event.keyword in (OPT_OUT, OPT_IN):
                    contact = await uow.contacts.get(event.tenant, found.id, for_update=True)
                    if contact is None:
                        continue
                    wanted = event.keyword == OPT_OUT
                    if contact.opted_out.sms != wanted:
                        changed = contact.changed({"opted_out": {"sms": wanted}}, now)
                        await uow.contacts.update(changed)
                        await uow.publish(CONTACTS, contact_updated(changed, causation_id=event.message_id))
                    if wanted:
                        stopped += len(
                            await stop_for_goals(
                                uow,
                                event.tenant,
                                contact.id,
                                [Goal.OPTED_OUT],
                                now,
                                reason="the contact opted out by SMS",
                                causation_id=event.message_id,
                            )
                        )
                elif event.keyword != HELP:
                    stopped += len(
                        await stop_for_goals(
                            uow,
                            event.tenant,
                            found.id,
                            [Goal.REPLIED],
                            now,
                            reason="the contact replied by SMS",
                            causation_id=event.message_id,
                        )
                    )
        await uow.commit()
    return stopped
