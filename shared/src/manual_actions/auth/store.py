"""The identity store: tenants and hashed API tokens in the identity database.

Why opaque hashed tokens in one shared database: ``docs/decisions/0006-identity-store-and-tokens.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    MetaData,
    Table,
    Text,
    Uuid,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from manual_actions.db import advisory_lock_key, asyncpg_dsn


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"


@dataclass(frozen=True)
class Principal:
    """Who is calling: every query a route runs is scoped by ``tenant``."""

    tenant: str
    role: Role
    user_id: uuid.UUID | None
    token_id: str


@dataclass(frozen=True)
class TokenInfo:
    """A token's metadata (never its secret)."""

    id: str
    tenant: str
    role: Role
    user_id: uuid.UUID | None
    label: str
    created_at: datetime
    revoked_at: datetime | None


class UnknownTenantError(LookupError):
    """A token was requested for a tenant that does not exist."""


class UnknownTokenError(LookupError):
    """No token has this id."""


metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("role", Text, nullable=False),
    Column("user_id", Uuid, nullable=True),
    # Hex SHA-256 of the secret part; the plaintext token exists only in the response to its creation.
    Column("secret_hash", Text, nullable=False),
    Column("label", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("role IN ('admin', 'manager', 'agent')", name="api_tokens_role_known"),
)

TOKEN_PREFIX = "ma"
# 8 random bytes as hex: unique enough as a key, never contains the "_" separator.
_TOKEN_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
# Tenant ids travel in events, partition keys, log lines and URLs: keep them plain.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Anything longer than a real token is rejected before hashing (a cheap guard against junk).
_MAX_TOKEN_LENGTH = 128
# Serialises concurrent create_schema calls (several services may start at once).
_SCHEMA_LOCK_KEY = advisory_lock_key("manual_actions.auth.schema")


def _hash_secret(secret: str) -> str:
    # A fast hash is enough: the secret is 256 random bits, so there is nothing to brute-force
    # that a slow KDF would protect (see decision 0006).
    return hashlib.sha256(secret.encode()).hexdigest()


log = logging.getLogger(__name__)

# Every revocation is announced on this PostgreSQL channel (payload: the token id), in the revoking
# transaction, so listening processes drop the token from their caches at once.
TOKEN_REVOKED_CHANNEL = "manual_actions_token_revoked"
# The listening connection's name in pg_stat_activity.
LISTENER_APPLICATION_NAME = "manual-actions token revocations"

# Connections of a service's identity engine: one per request that checks a token not in the cache,
# at the same time (beyond the pool, each check would open and close a connection of its own).
IDENTITY_POOL_SIZE = 5

# Built once (parameter ``token_id``): building the statement per request cost more CPU than running it.
_TOKEN_LOOKUP = (
    select(api_tokens.c.tenant_id, api_tokens.c.role, api_tokens.c.user_id, api_tokens.c.secret_hash)
    .join(tenants, tenants.c.id == api_tokens.c.tenant_id)
    .where(api_tokens.c.id == bindparam("token_id"), api_tokens.c.revoked_at.is_(None))
)


def parse_token(token: str) -> tuple[str, str] | None:
    """``(token id, secret)`` for a well-formed ``ma_<id>_<secret>`` string, else None."""
    if len(token) > _MAX_TOKEN_LENGTH:
        return None
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not _TOKEN_ID_PATTERN.fullmatch(token_id) or not secret:
        return None
    return token_id, secret


async def _autocommit(conn: AsyncConnection) -> None:
    """Run ``conn``'s statements without a transaction: a lookup is one SELECT, and the BEGIN and
    ROLLBACK around it would cost two more round trips (token checks are on every request's path).
    The pool gives the connection back in its default isolation level."""
    await conn.execution_options(isolation_level="AUTOCOMMIT")


@dataclass
class _CacheEntry:
    expires_at: float
    principal: Principal | None
    token_id: str | None


class IdentityStore:
    """Tenants and tokens. ``create_schema`` is idempotent.

    ``authenticate`` caches each answer (valid or not) per process, so a busy API does not query
    the identity database on every request: for ``cache_ttl`` seconds, or ``listening_cache_ttl``
    while ``listen_for_revocations`` runs. Revoking notifies every listening process in the
    revoking transaction (``TOKEN_REVOKED_CHANNEL``), and each drops the token from its cache at
    once; a process that does not listen (or lost its listening connection, which clears its
    cache) accepts a token revoked elsewhere for at most ``cache_ttl`` seconds. Revoking through
    this instance takes effect here at once. ``tenant_exists`` remembers a tenant it
    found for ``tenant_cache_ttl`` seconds (tenants are never deleted) and never remembers a
    miss. ``clock`` is injectable for tests.

    Creating a store opens no connection: the engine connects on first use, so a service that
    only sometimes needs the identity database (a webhook) starts without it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache_ttl: float = 5.0,
        listening_cache_ttl: float = 300.0,
        cache_max_entries: int = 10_000,
        tenant_cache_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._cache_ttl = cache_ttl
        self._listening_cache_ttl = listening_cache_ttl
        # True while a connection LISTENs on TOKEN_REVOKED_CHANNEL (see listen_for_revocations).
        self._listening = False
        # Bumped by every revocation this process learns of: a lookup that overlapped one is
        # cached only briefly (it may have read the token just before the revocation committed).
        self._revocations_seen = 0
        self._stop_listening = asyncio.Event()
        self._cache_max_entries = cache_max_entries
        self._tenant_cache_ttl = tenant_cache_ttl
        self._clock = clock
        # Keyed by SHA-256 of the whole token so no plaintext token is kept in memory longer
        # than the request that carried it.
        self._cache: dict[bytes, _CacheEntry] = {}
        # Tenant id -> when the fact "it exists" must be checked again.
        self._known_tenants: dict[str, float] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def create_schema(self) -> None:
        """Create the tables if missing; safe when several processes run it at once."""
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            await conn.run_sync(metadata.create_all)

    async def ping(self) -> None:
        """Readiness check: returns when the identity database answers, raises otherwise."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def create_tenant(self, tenant: str, name: str) -> None:
        """Create the tenant; idempotent for the same id (a new ``name`` replaces the old one).

        Raises ``ValueError`` for an id outside ``TENANT_ID_PATTERN``.
        """
        if not TENANT_ID_PATTERN.fullmatch(tenant):
            raise ValueError(
                f"tenant id {tenant!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )
        statement = insert(tenants).values(id=tenant, name=name)
        statement = statement.on_conflict_do_update(index_elements=[tenants.c.id], set_={"name": name})
        async with self._engine.begin() as conn:
            await conn.execute(statement)

    async def tenant_exists(self, tenant: str) -> bool:
        """True when ``tenant`` is a tenant of the identity store; raises on a database error.

        For callers that learn the tenant from somewhere other than a token (a webhook URL). An id
        outside ``TENANT_ID_PATTERN`` is False without a query. A tenant found is remembered for
        ``tenant_cache_ttl`` seconds; one not found is asked again next time, so a tenant created
        a moment ago (by any process) is accepted at once.
        """
        if not TENANT_ID_PATTERN.fullmatch(tenant):
            return False
        now = self._clock()
        expires = self._known_tenants.get(tenant)
        if expires is not None and expires > now:
            return True
        async with self._engine.connect() as conn:
            await _autocommit(conn)
            found = await conn.scalar(select(tenants.c.id).where(tenants.c.id == tenant))
        if found is None:
            self._known_tenants.pop(tenant, None)
            return False
        if len(self._known_tenants) >= self._cache_max_entries:
            self._known_tenants.clear()
        self._known_tenants[tenant] = now + self._tenant_cache_ttl
        return True

    async def issue_token(
        self, tenant: str, role: Role, user_id: uuid.UUID | None = None, label: str = ""
    ) -> str:
        """Return a new plaintext token (shown once); store only its hash.

        Raises ``UnknownTenantError`` if the tenant does not exist.
        """
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    api_tokens.insert().values(
                        id=token_id,
                        tenant_id=tenant,
                        role=Role(role).value,
                        user_id=user_id,
                        secret_hash=_hash_secret(secret),
                        label=label,
                    )
                )
        except IntegrityError as exc:
            if "api_tokens_tenant_id_fkey" in str(exc.orig) or "foreign key" in str(exc.orig).lower():
                raise UnknownTenantError(f"no tenant {tenant!r}") from exc
            raise
        return f"{TOKEN_PREFIX}_{token_id}_{secret}"

    async def revoke_token(self, token_id: str) -> None:
        """Mark the token revoked (revoking twice keeps the first time).

        Raises ``UnknownTokenError`` if no token has this id. Other processes stop accepting it
        once their cache entry expires (``cache_ttl``).
        """
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
            if result.rowcount == 0:
                exists = await conn.scalar(select(api_tokens.c.id).where(api_tokens.c.id == token_id))
                if exists is None:
                    raise UnknownTokenError(f"no token {token_id!r}")
            await conn.execute(text("SELECT pg_notify(:channel, :token_id)"),
                               {"channel": TOKEN_REVOKED_CHANNEL, "token_id": token_id})
        self._forget_token(token_id)

    def _forget_token(self, token_id: str) -> None:
        self._revocations_seen += 1
        for key in [key for key, entry in self._cache.items() if entry.token_id == token_id]:
            del self._cache[key]

    async def listen_for_revocations(self, *, ping_interval: float = 5.0,
                                     retry_interval: float = 1.0) -> None:
        """Background loop (until ``stop_listening`` or cancellation): keep a connection LISTENing
        on ``TOKEN_REVOKED_CHANNEL`` and drop each revoked token from this process's cache, so
        answers may be cached for ``listening_cache_ttl`` instead of ``cache_ttl``.

        The connection is pinged every ``ping_interval`` seconds (a LISTEN connection carries no
        other traffic, so a dead one would go unnoticed). When it is lost, or cannot be opened,
        the cache is cleared and the short ``cache_ttl`` applies until listening again (tried
        every ``retry_interval`` seconds): revocations missed meanwhile stay effective within
        ``cache_ttl``, as without listening."""
        dsn = asyncpg_dsn(self._engine.url)
        self._stop_listening.clear()

        def on_revoked(_conn: object, _pid: int, _channel: str, token_id: str) -> None:
            self._forget_token(token_id)

        while not self._stop_listening.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    dsn, server_settings={"application_name": LISTENER_APPLICATION_NAME})
                await conn.add_listener(TOKEN_REVOKED_CHANNEL, on_revoked)
                self._listening = True
                while not await self._stopped_within(ping_interval):
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=ping_interval)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if self._listening:
                    log.warning("stopped listening for token revocations; caching briefly",
                                extra={"error": repr(exc)})
            finally:
                if self._listening:
                    self._listening = False
                    self._cache.clear()  # entries cached for long may have missed a revocation
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
            await self._stopped_within(retry_interval)

    async def stop_listening(self) -> None:
        """Make ``listen_for_revocations`` return (at once; its connection is closed)."""
        self._stop_listening.set()

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_listening.wait(), timeout=seconds)
        return self._stop_listening.is_set()

    async def list_tokens(self, tenant: str) -> list[TokenInfo]:
        """The tenant's tokens, newest first, revoked ones included."""
        async with self._engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(api_tokens)
                        .where(api_tokens.c.tenant_id == tenant)
                        .order_by(api_tokens.c.created_at.desc(), api_tokens.c.id)
                    )
                )
                .mappings()
                .all()
            )
        return [
            TokenInfo(
                id=row["id"],
                tenant=row["tenant_id"],
                role=Role(row["role"]),
                user_id=row["user_id"],
                label=row["label"],
                created_at=row["created_at"],
                revoked_at=row["revoked_at"],
            )
            for row in rows
        ]

    async def authenticate(self, token: str) -> Principal | None:
        """The principal for a valid, unrevoked token of an existing tenant, else None."""
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at > now:
            return cached.principal
        parsed = parse_token(token)
        revocations_before = self._revocations_seen
        principal = await self._lookup(*parsed) if parsed else None
        long_enough = self._listening and self._revocations_seen == revocations_before
        ttl = self._listening_cache_ttl if long_enough else self._cache_ttl
        self._remember(key, _CacheEntry(now + ttl, principal, parsed[0] if parsed else None))
        return principal

    async def _lookup(self, token_id: str, secret: str) -> Principal | None:
        async with self._engine.connect() as conn:
            await _autocommit(conn)
            row = (await conn.execute(_TOKEN_LOOKUP, {"token_id": token_id})).mappings().first()
        if row is None:
            return None
        if not hmac.compare_digest(row["secret_hash"], _hash_secret(secret)):
            return None
        return Principal(
            tenant=row["tenant_id"], role=Role(row["role"]), user_id=row["user_id"], token_id=token_id
        )

    def _remember(self, key: bytes, entry: _CacheEntry) -> None:
        if len(self._cache) >= self._cache_max_entries:
            now = self._clock()
            for stale in [k for k, e in self._cache.items() if e.expires_at <= now]:
                del self._cache[stale]
            if len(self._cache) >= self._cache_max_entries:
                # Flooded with distinct tokens (likely junk): forget everything rather than grow.
                self._cache.clear()
        self._cache[key] = entry
