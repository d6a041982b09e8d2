"""The batch path of materialisation (``materialise.materialise_queued``), with the fakes: many
ActionQueued in one unit of work give exactly what applying them one by one gives."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from aq_factories import T0, action_queued, wrap
from aq_fakes import FakeUnitOfWork

from action_queue.domain import ActionStatus, Actor
from action_queue.handlers import materialise, queue
from manual_actions.contracts import SmsSent

TENANT = "acme"
AGENT = uuid.uuid4()
NOW = T0 + timedelta(hours=1)


async def test_a_batch_materialises_each_action_once_whatever_is_repeated() -> None:
    uow = FakeUnitOfWork()
    events = [action_queued(assignee=AGENT, priority=i % 3) for i in range(50)]
    envelopes = [wrap(e, tenant=TENANT, subject=e.action_id) for e in events]
    retry = wrap(events[7], tenant=TENANT, subject=events[7].action_id)  # same action, new envelope id
    await materialise.apply_batch(uow, [*envelopes, envelopes[3], retry])
    await materialise.apply_batch(uow, envelopes[:10])  # redelivered later
    assert set(uow.store) == {e.action_id for e in events}
    assert all(a.version == 1 and a.status is ActionStatus.QUEUED and a.tenant == TENANT
               for a in uow.store.values())
    assert {a.priority for a in uow.store.values()} == {0, 1, 2}
    assert uow.inbox == set()  # the action id is the idempotency key of ActionQueued
    assert uow.outbox == []


@pytest.mark.parametrize("where", ["stored before", "earlier in the batch"])
async def test_an_action_id_of_another_tenant_fails_the_batch_and_alone_only_itself(where: str) -> None:
    uow = FakeUnitOfWork()
    taken = action_queued(assignee=AGENT)
    before, after = action_queued(assignee=AGENT), action_queued(assignee=AGENT)
    batch = [wrap(before, tenant=TENANT, subject=before.action_id),
             wrap(taken, tenant="globex", subject=taken.action_id),
             wrap(after, tenant=TENANT, subject=after.action_id)]
    if where == "stored before":
        await materialise.apply_batch(uow, [wrap(taken, tenant=TENANT, subject=taken.action_id)])
    else:
        batch.insert(0, wrap(taken, tenant=TENANT, subject=taken.action_id))
    stored_before = set(uow.store)
    with pytest.raises(materialise.UnprocessableMessage, match="another tenant"):
        await materialise.apply_batch(uow, batch)
    assert set(uow.store) == stored_before  # rolled back as a whole
    # what the consumer does next: one message at a time, so only the offender is refused
    outcomes = []
    for envelope in batch:
        try:
            await materialise.apply_batch(uow, [envelope])
            outcomes.append("applied")
        except materialise.UnprocessableMessage:
            outcomes.append("refused")
    assert outcomes.count("refused") == 1 and batch[outcomes.index("refused")].tenant == "globex"
    assert uow.store[taken.action_id].tenant == TENANT
    assert {before.action_id, after.action_id} <= set(uow.store)


async def test_a_result_after_new_actions_in_the_same_batch_still_applies_in_order() -> None:
    uow = FakeUnitOfWork()
    first = action_queued(assignee=AGENT)
    await materialise.apply_batch(uow, [wrap(first, tenant=TENANT, subject=first.action_id)])
    sending = await queue.send_sms(uow, Actor(TENANT, AGENT, supervisor=False), first.action_id, body="Hi",
                                   now=NOW)
    command_id = sending.pending_command_id
    assert command_id is not None
    more = [action_queued(assignee=AGENT) for _ in range(3)]
    sent = wrap(SmsSent(command_id=command_id, action_id=first.action_id, message_sid="SM" + "b" * 32,
                        to="+14155550100", delivery_status="sent", sent_at=NOW),
                tenant=TENANT, subject=first.action_id, source="sms-sender")
    await materialise.apply_batch(uow, [wrap(more[0], tenant=TENANT, subject=more[0].action_id), sent,
                                        *(wrap(e, tenant=TENANT, subject=e.action_id) for e in more[1:])])
    assert uow.store[first.action_id].status is ActionStatus.COMPLETED
    assert all(uow.store[e.action_id].status is ActionStatus.QUEUED for e in more)
