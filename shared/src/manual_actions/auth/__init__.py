"""Tenant-scoped bearer tokens with roles, stored hashed in the identity database.

Tokens are opaque strings ``ma_<token id>_<secret>``; only a hash of the secret is stored.
Every request resolves to a ``Principal`` (tenant, role, user id); routes declare the roles they
allow with ``require_roles``. A token never grants access to another tenant's data.

Wiring in a service::

    app.state.identity = IdentityStore(create_engine(settings.identity_database_url,
                                                       pool_size=IDENTITY_POOL_SIZE))

    @router.get("/actions")
    async def list_actions(principal: Annotated[Principal, Depends(current_principal)]): ...

    @router.post("/actions/{id}/reassign")
    async def reassign(principal: Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER))]): ...

Tokens are issued with the ``ma-admin`` command (``manual_actions.auth.cli``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError

from manual_actions.auth.store import (
    IDENTITY_POOL_SIZE,
    IdentityStore,
    Principal,
    Role,
    TokenInfo,
    UnknownTenantError,
    UnknownTokenError,
    api_tokens,
    metadata,
    parse_token,
    tenants,
)
from manual_actions.http import problem
from manual_actions.logging import bind_log_context

__all__ = [
    "IDENTITY_POOL_SIZE",
    "IdentityStore",
    "Principal",
    "Role",
    "TokenInfo",
    "UnknownTenantError",
    "UnknownTokenError",
    "api_tokens",
    "authorize",
    "bearer_scheme",
    "current_principal",
    "metadata",
    "parse_token",
    "require_roles",
    "tenants",
]

# auto_error=False: a missing header must produce our problem+json 401, not FastAPI's default.
# Declaring the scheme still documents it in the OpenAPI schema ("Authorize" in /docs).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    bearerFormat="ma_<token id>_<secret>",
    description="A tenant's API token, issued with `ma-admin token create`.",
)


async def _principal_from_request(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None:
        raise problem(
            401,
            "Unauthorized",
            "Send an API token in the header 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    store = getattr(request.app.state, "identity", None)
    if not isinstance(store, IdentityStore):
        raise RuntimeError("app.state.identity must be set to an IdentityStore before serving requests")
    try:
        principal = await store.authenticate(credentials.credentials)
    except (DBAPIError, OSError) as exc:
        raise problem(
            503,
            "Identity store unavailable",
            "The token could not be checked; retry shortly.",
            headers={"Retry-After": "5"},
        ) from exc
    if principal is None:
        raise problem(
            401,
            "Unauthorized",
            "The bearer token is unknown, malformed or revoked.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    request.state.principal = principal
    # Every log line for the rest of this request names the tenant (the HTTP middleware resets it).
    bind_log_context(tenant=principal.tenant)
    return principal


#: The bearer-token scheme, for a dependency of a service's own that authorizes with ``authorize``
#: (the scheme is what documents the token in the OpenAPI schema).
bearer_scheme = _bearer


async def authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, allowed: tuple[Role, ...]
) -> Principal:
    """What ``require_roles(*allowed)`` does, callable from a service's own dependency that takes
    ``credentials`` from ``Depends(bearer_scheme)`` (one dependency instead of a chain of them: each
    one FastAPI resolves costs a hot route measurable CPU). 401/403 problem+json as there."""
    principal = await _principal_from_request(request, credentials)
    if principal.role not in allowed:
        names = " or ".join(role.value for role in allowed)
        raise problem(
            403,
            "Forbidden",
            f"This operation requires role {names}; the token has role {principal.role.value}.",
            required_roles=[role.value for role in allowed],
            role=principal.role.value,
        )
    return principal


def require_roles(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency: 401 problem+json without a valid bearer token, 403 when its role is not
    in ``roles``. Reads the IdentityStore from ``request.app.state.identity``.

    401 responses carry ``WWW-Authenticate: Bearer``; 403 responses list ``required_roles``.
    The principal is returned and also left on ``request.state.principal``.
    """
    if not roles:
        raise ValueError("require_roles needs at least one role; use current_principal to allow all")
    allowed = tuple(Role(role) for role in roles)

    async def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        return await authorize(request, credentials, allowed)

    dependency.__name__ = f"require_roles_{'_'.join(role.value for role in allowed)}"
    return dependency


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency for routes every role may call: 401 problem+json without a valid token."""
    return await _principal_from_request(request, credentials)
