"""Merge-field templates for manual steps. The engine lives in ``manual_actions.templates`` (shared
with action-queue, which renders templates again with current contact data); this module
re-exports it and keeps workflow-runner's ``merge_values(contact, user)`` over its own entities.
"""

from __future__ import annotations

from manual_actions.templates import (
    CUSTOM_PREFIX,
    KNOWN_FIELDS,
    MergeField,
    Segment,
    Template,
    TemplateError,
    Text,
    parse_template,
    render,
)
from manual_actions.templates import merge_values as merge_mapping_values
from workflow_runner.domain.people import Contact, User

__all__ = [
    "CUSTOM_PREFIX",
    "KNOWN_FIELDS",
    "MergeField",
    "Segment",
    "Template",
    "TemplateError",
    "Text",
    "merge_values",
    "parse_template",
    "render",
]


def merge_values(contact: Contact, user: User | None) -> dict[str, str]:
    """The values available to templates for this contact and assignee (missing ones render as "")."""
    return merge_mapping_values(
        {"name": contact.name, "first_name": contact.first_name, "last_name": contact.last_name,
         "phone": contact.phone, "email": contact.email, "custom_fields": contact.custom_fields},
        {"name": user.name, "first_name": user.first_name} if user else None,
    )
