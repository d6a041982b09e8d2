"""Rebuild actions from the action-lifecycle topic alone: the fold another team would write.

``rebuild`` takes the topic's envelopes in the order they were read (one action's events are on
one partition, so they arrive in sequence order) and returns every action as action-queue stores
it. It uses ``ManualAction.apply``, the very code that changes the stored actions, so the result
equals the database whenever every event reached the topic.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from action_queue.domain.model import ManualAction
from manual_actions.contracts import ActionQueued, Envelope


class RebuildGap(Exception):
    """An event's sequence skips one (an event is missing) or names an action never queued."""


def rebuild(envelopes: Iterable[Envelope[Any]], *,
            tenant: str | None = None) -> dict[uuid.UUID, ManualAction]:
    """Fold lifecycle envelopes (of ``tenant`` only, when given) into actions by id.

    An event whose sequence is not after the action's version is a duplicate and has no effect;
    one that skips a sequence number raises ``RebuildGap``.
    """
    actions: dict[uuid.UUID, ManualAction] = {}
    for envelope in envelopes:
        if tenant is not None and envelope.tenant != tenant:
            continue
        data = envelope.data
        action_id = uuid.UUID(envelope.subject)
        action = actions.get(action_id)
        if isinstance(data, ActionQueued):
            if action is None:
                actions[action_id] = ManualAction.from_queued(envelope.tenant, data, envelope.sequence)
            continue
        if action is None:
            raise RebuildGap(f"{envelope.type} (sequence {envelope.sequence}) for action {action_id}, "
                             "which was never queued on the topic")
        if envelope.sequence <= action.version:
            continue
        if envelope.sequence != action.version + 1:
            raise RebuildGap(f"action {action_id}: sequence {envelope.sequence} follows {action.version}")
        action.apply(data)
    return actions
