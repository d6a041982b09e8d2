"""What the system does to actions by itself as time passes: expire them, end lapsed leases, wake
snoozed actions and send scheduled SMS when due. Each change is a lifecycle event like any other.

``run_once`` handles one batch in one transaction; the maintenance loop calls it until a batch
comes back short, then sleeps. Rows are taken with SKIP LOCKED, so several replicas share the work
and nobody working the queue waits for it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from action_queue import metrics
from action_queue.domain import DomainError, ManualAction
from action_queue.domain.checks import blocked_reason, current_phone
from action_queue.handlers.ports import UnitOfWork
from action_queue.handlers.publishing import publish
from manual_actions.contracts import Payload

log = logging.getLogger(__name__)


async def _work(uow: UnitOfWork, action: ManualAction, now: datetime) -> list[Payload]:
    """The messages the system's own change of ``action`` at ``now`` produces (empty: nothing to do)."""
    housekeeping = action.housekeeping(now)
    if housekeeping is not None:
        return [housekeeping]
    if action.sms_due(now):
        contact = await uow.contacts.get(action.tenant, action.contact.id)
        settings = await uow.settings.get(action.tenant)
        reason = blocked_reason(action, contact, now, settings.quiet_hours)
        if reason is not None:  # the checks at the moment of work apply to a scheduled SMS too
            metrics.BLOCKED.labels(type=action.type.value).inc()
            return [action.skip(None, f"scheduled SMS not sent: {reason}", now)]
        try:
            event, command = action.send_sms(action.scheduled_by, uuid.uuid4(), now=now,
                                             to=current_phone(action, contact))
        except DomainError as exc:
            # The SMS cannot be handed over (e.g. the contact's number is unusable): never drop it
            # silently — the action is skipped with the reason, visible in the API and the event.
            return [action.skip(None, f"scheduled SMS not sent: {exc.detail}", now)]
        return [event, command]
    return []


async def run_once(uow: UnitOfWork, now: datetime, *, limit: int = 500, tenant: str | None = None) -> int:
    """Apply the due work of up to ``limit`` actions at ``now``; return how many actions changed."""
    changed = 0
    async with uow:
        for action in await uow.actions.due(now, limit=limit, tenant=tenant):
            messages = await _work(uow, action, now)
            if not messages:
                continue
            await uow.actions.save(action)
            for message in messages:
                await publish(uow, action, message)
            metrics.MAINTENANCE.labels(type=messages[0].message_type).inc()
            changed += 1
        await uow.commit()
    return changed
