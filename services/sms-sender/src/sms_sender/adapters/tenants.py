"""Which tenants exist, read from the identity store (``IDENTITY_DATABASE_URL``).

The incoming-message webhook names its tenant in the URL and carries no bearer token (Twilio
signs it instead), so the tenant is checked here: an unknown one is refused before anything is
stored. Read only; the identity store's owner creates its schema and its tenants.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.auth import tenants
from manual_actions.auth.store import TENANT_ID_PATTERN


class TenantDirectory:
    """``exists(tenant)`` against the identity store's ``tenants`` table.

    A tenant found is remembered for ``cache_ttl`` seconds (tenants are never deleted, and
    Twilio's webhooks for one tenant come in bursts); a tenant not found is asked again on the
    next request, so a tenant created a moment ago is accepted at once.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache_ttl: float = 60.0,
        cache_max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._cache_ttl = cache_ttl
        self._cache_max_entries = cache_max_entries
        self._clock = clock
        self._known: dict[str, float] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def exists(self, tenant: str) -> bool:
        """True when ``tenant`` is a tenant of the identity store. Raises on a database error."""
        if not TENANT_ID_PATTERN.fullmatch(tenant):
            return False
        now = self._clock()
        expires = self._known.get(tenant)
        if expires is not None and expires > now:
            return True
        async with self._engine.connect() as conn:
            found = await conn.scalar(select(tenants.c.id).where(tenants.c.id == tenant))
        if found is None:
            self._known.pop(tenant, None)
            return False
        if len(self._known) >= self._cache_max_entries:
            self._known.clear()
        self._known[tenant] = now + self._cache_ttl
        return True
