"""Tenant-scoped bearer tokens with roles, stored hashed in the identity database.

Tokens are opaque strings ``ma_<token id>_<secret>``; only a hash of the secret is stored.
Every request resolves to a ``Principal`` (tenant, role, user id); routes declare the roles they
allow with ``require_roles``. A token never grants access to another tenant's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncEngine


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: Role
    user_id: uuid.UUID | None
    token_id: str


class IdentityStore:
    """Tenants and tokens. ``create_schema`` is idempotent."""

    def __init__(self, engine: AsyncEngine) -> None:
        raise NotImplementedError

    async def create_schema(self) -> None:
        raise NotImplementedError

    async def create_tenant(self, tenant: str, name: str) -> None:
        """Create the tenant; idempotent for the same id."""
        raise NotImplementedError

    async def issue_token(self, tenant: str, role: Role, user_id: uuid.UUID | None = None,
                          label: str = "") -> str:
        """Return a new plaintext token (shown once); store only its hash."""
        raise NotImplementedError

    async def revoke_token(self, token_id: str) -> None:
        raise NotImplementedError

    async def authenticate(self, token: str) -> Principal | None:
        """The principal for a valid, unrevoked token of an existing tenant, else None."""
        raise NotImplementedError


def require_roles(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency: 401 problem+json without a valid bearer token, 403 when its role is not
    in ``roles``. Reads the IdentityStore from ``request.app.state.identity``."""
    raise NotImplementedError
