"""Manual actions and their life cycle: plain Python, no I/O."""

from action_queue.domain.errors import (
    ActionNotFound,
    BlockedAtWork,
    DomainError,
    InvalidField,
    InvalidTransition,
    NotAllowed,
    ReservedByAnother,
    StaleResult,
)
from action_queue.domain.model import (
    DEFAULT_LEASE,
    ActionStatus,
    Actor,
    Contact,
    ManualAction,
    Transition,
    require_user,
)

__all__ = [
    "DEFAULT_LEASE",
    "ActionNotFound",
    "ActionStatus",
    "Actor",
    "BlockedAtWork",
    "Contact",
    "DomainError",
    "InvalidField",
    "InvalidTransition",
    "ManualAction",
    "NotAllowed",
    "ReservedByAnother",
    "StaleResult",
    "Transition",
    "require_user",
]
