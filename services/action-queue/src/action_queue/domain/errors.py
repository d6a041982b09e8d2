"""Domain errors. Entrypoints render them as problem+json; the status each maps to is noted here."""

from __future__ import annotations

import uuid


class DomainError(Exception):
    """Base of every rule violation the domain reports."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ActionNotFound(DomainError):
    """No such action visible to the caller (404). Also raised for other tenants' actions and,
    for agents, for actions assigned to someone else, so existence never leaks."""

    def __init__(self, action_id: uuid.UUID) -> None:
        super().__init__(f"manual action {action_id} not found")
        self.action_id = action_id


class InvalidTransition(DomainError):
    """The action's current status (or type) does not allow the requested change (409)."""

    def __init__(self, action_id: uuid.UUID, status: str, attempted: str, detail: str | None = None) -> None:
        super().__init__(detail or f"cannot {attempted} manual action {action_id} while it is {status}")
        self.action_id = action_id
        self.status = status
        self.attempted = attempted


class ReservedByAnother(DomainError):
    """Someone else holds a live reservation on the action (409)."""

    def __init__(self, action_id: uuid.UUID, reserved_by: uuid.UUID | None) -> None:
        super().__init__(f"manual action {action_id} is reserved by user {reserved_by}")
        self.action_id = action_id
        self.reserved_by = reserved_by


class InvalidField(DomainError):
    """A value the action needs is absent or unusable (422); ``field`` names it, e.g. ``contact.phone``."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class NotAllowed(DomainError):
    """The caller may not do this at all, whatever the action (403)."""


class BlockedAtWork(DomainError):
    """A check at the moment of work blocked the SMS or call; the action was skipped with ``reason``
    (409, after the skip is committed)."""

    def __init__(self, action_id: uuid.UUID, reason: str) -> None:
        super().__init__(f"manual action {action_id} was skipped: {reason}")
        self.action_id = action_id
        self.reason = reason


class StaleResult(DomainError):
    """A result (SmsSent, SmsFailed, CallCompleted) that no longer applies: the action moved on or the
    result belongs to an earlier command. Consumers log and count it; it is not an error of the message."""
