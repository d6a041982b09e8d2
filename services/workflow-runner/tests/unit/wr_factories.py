"""Builders shared by the workflow-runner unit tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from workflow_runner.domain.people import Contact, User, UserRole
from workflow_runner.domain.workflows import Workflow

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
TENANT = "acme"


def user(
    name: str = "Ada Lovelace",
    phone: str = "+14155552671",
    role: UserRole = UserRole.AGENT,
    tenant: str = TENANT,
) -> User:
    return User.create(tenant=tenant, name=name, phone=phone, role=role, now=T0)


def contact(
    name: str = "Grace Hopper", phone: str | None = "+14155550132", tenant: str = TENANT, **extra: Any
) -> Contact:
    return Contact.create(tenant=tenant, now=T0, name=name, phone=phone, **extra)


def assign(step_id: str, *user_ids: uuid.UUID, only_unassigned: bool = False) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "assign_user",
        "user_ids": [str(u) for u in user_ids],
        "only_unassigned": only_unassigned,
    }


def sms(
    step_id: str,
    message: str = "Hi {{contact.first_name}}, {{user.name}} here",
    action_name: str = "Follow-up SMS",
) -> dict[str, Any]:
    return {"id": step_id, "type": "manual_sms", "action_name": action_name, "message": message}


def call(step_id: str, notes: str | None = None, action_name: str = "Intro call") -> dict[str, Any]:
    spec: dict[str, Any] = {"id": step_id, "type": "manual_call", "action_name": action_name}
    if notes is not None:
        spec["notes"] = notes
    return spec


def published_workflow(
    *specs: dict[str, Any], users: list[User], name: str = "Onboarding", tenant: str = TENANT
) -> Workflow:
    workflow = Workflow.create(tenant=tenant, name=name, steps=list(specs), now=T0)
    workflow.publish({u.id for u in users}, T0)
    return workflow
