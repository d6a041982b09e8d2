"""IdentityStore and the role dependencies against the real PostgreSQL (``stack`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack.testing import eventually
from manual_actions.auth import (
    IdentityStore,
    Principal,
    Role,
    UnknownTenantError,
    UnknownTokenError,
    api_tokens,
    current_principal,
    parse_token,
    require_roles,
)
from manual_actions.auth.store import LISTENER_APPLICATION_NAME
from manual_actions.http import PROBLEM_JSON, create_app

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
async def engine(stack: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.database_url("identity_test"))
    await IdentityStore(engine).create_schema()
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> IdentityStore:
    return IdentityStore(engine)


def split(token: str) -> tuple[str, str]:
    parsed = parse_token(token)
    assert parsed is not None, token
    return parsed


def new_tenant_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def tenant(store: IdentityStore) -> str:
    tenant_id = new_tenant_id()
    await store.create_tenant(tenant_id, f"Tenant {tenant_id}")
    return tenant_id


async def test_create_schema_and_tenant_are_idempotent(store: IdentityStore) -> None:
    await store.create_schema()
    await store.create_schema()
    tenant_id = new_tenant_id()
    await store.create_tenant(tenant_id, "First name")
    await store.create_tenant(tenant_id, "Renamed")
    token = await store.issue_token(tenant_id, Role.ADMIN)
    assert (await store.authenticate(token)) is not None


async def test_tenant_ids_are_validated(store: IdentityStore) -> None:
    for bad in ("", "has space", "-leading", "x" * 65, "semi;colon"):
        with pytest.raises(ValueError):
            await store.create_tenant(bad, "Bad")


async def test_token_format_and_only_a_hash_is_stored(store: IdentityStore, engine: AsyncEngine) -> None:
    tenant_id = await tenant(store)
    user = uuid.uuid4()
    token = await store.issue_token(tenant_id, Role.AGENT, user_id=user, label="agent phone")

    parsed = parse_token(token)
    assert token.startswith("ma_") and parsed is not None
    token_id, secret = parsed
    assert len(secret) >= 43  # token_urlsafe(32): 256 random bits
    async with engine.connect() as conn:
        row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == token_id))).mappings().one()
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(dict(row))
    stored = (row["tenant_id"], row["role"], row["user_id"], row["label"])
    assert stored == (tenant_id, "agent", user, "agent phone")

    principal = await store.authenticate(token)
    assert principal == Principal(tenant=tenant_id, role=Role.AGENT, user_id=user, token_id=token_id)


async def test_invalid_tokens_are_rejected(store: IdentityStore) -> None:
    tenant_id = await tenant(store)
    token = await store.issue_token(tenant_id, Role.ADMIN)
    token_id, secret = split(token)
    forged_secret = f"ma_{token_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    unknown_id = f"ma_{'0' * 16}_{secret}"
    for candidate in (forged_secret, unknown_id, "", "ma_", "Bearer " + token, token + "x", "x" * 5000):
        assert await store.authenticate(candidate) is None, candidate


async def test_tokens_of_two_tenants_give_distinct_principals(store: IdentityStore) -> None:
    first, second = await tenant(store), await tenant(store)
    token_a = await store.issue_token(first, Role.MANAGER)
    token_b = await store.issue_token(second, Role.MANAGER)

    principal_a, principal_b = await store.authenticate(token_a), await store.authenticate(token_b)
    assert principal_a is not None and principal_b is not None
    assert (principal_a.tenant, principal_b.tenant) == (first, second)
    # One tenant's token id with the other's secret is not a valid token of either.
    id_a, _ = split(token_a)
    _, secret_b = split(token_b)
    assert await store.authenticate(f"ma_{id_a}_{secret_b}") is None


async def test_unknown_tenant_and_token_are_errors(store: IdentityStore) -> None:
    with pytest.raises(UnknownTenantError):
        await store.issue_token(new_tenant_id(), Role.ADMIN)
    with pytest.raises(UnknownTokenError):
        await store.revoke_token("0123456789abcdef")


async def test_revocation_reaches_other_processes_within_the_cache_ttl(engine: AsyncEngine) -> None:
    clock = FakeClock()
    api_process = IdentityStore(engine, cache_ttl=5.0, clock=clock)
    admin_process = IdentityStore(engine)
    tenant_id = await tenant(admin_process)
    token = await admin_process.issue_token(tenant_id, Role.AGENT)
    token_id, _ = split(token)

    assert await api_process.authenticate(token) is not None  # now cached for 5 s
    await admin_process.revoke_token(token_id)
    await admin_process.revoke_token(token_id)  # twice is fine

    assert await admin_process.authenticate(token) is None  # the revoking process: at once
    clock.now += 4.0
    assert await api_process.authenticate(token) is not None  # documented: up to the TTL
    clock.now += 1.5
    assert await api_process.authenticate(token) is None  # after the TTL: rejected


async def _api_and_admin_processes(
    engine: AsyncEngine,
) -> tuple[FakeClock, IdentityStore, IdentityStore, str]:
    """An API process's store (its clock, caching 5 s, or 300 s while listening), an admin
    process's store, and a new tenant."""
    clock = FakeClock()
    api_process = IdentityStore(engine, cache_ttl=5.0, listening_cache_ttl=300.0, clock=clock)
    admin_process = IdentityStore(engine)
    return clock, api_process, admin_process, await tenant(admin_process)


@contextlib.asynccontextmanager
async def _listening(store: IdentityStore) -> AsyncIterator[None]:
    """``store`` listening for revocations during the block, as a service's background loop."""
    listener = asyncio.create_task(store.listen_for_revocations(ping_interval=0.2, retry_interval=0.1))
    try:
        await eventually(lambda: store._listening, what="the store listening for revocations")
        yield
    finally:
        await store.stop_listening()
        await asyncio.wait_for(listener, timeout=5)  # returns, as a service's shutdown expects


async def test_a_listening_process_caches_long_and_drops_a_token_revoked_elsewhere_at_once(
    engine: AsyncEngine,
) -> None:
    clock, api_process, admin_process, tenant_id = await _api_and_admin_processes(engine)
    token = await admin_process.issue_token(tenant_id, Role.AGENT)
    other = await admin_process.issue_token(tenant_id, Role.AGENT)
    async with _listening(api_process):
        assert await api_process.authenticate(token) is not None
        assert await api_process.authenticate(other) is not None
        clock.now += 200  # beyond cache_ttl, within listening_cache_ttl: still cached, no lookup
        assert await api_process.authenticate(token) is not None

        await admin_process.revoke_token(split(token)[0])

        async def refused() -> bool:  # once the notification arrived on the listening connection
            return await api_process.authenticate(token) is None

        await eventually(refused, what="the revoked token refused by the listening process")
        assert await api_process.authenticate(other) is not None  # only the revoked token dropped
    assert not api_process._listening


async def test_a_lookup_that_overlaps_a_revocation_is_cached_only_briefly(engine: AsyncEngine) -> None:
    # The lookup read the token as valid, then a revocation was announced before its answer was
    # cached: caching that answer for the long TTL would keep the revoked token working.
    clock, api_process, admin_process, tenant_id = await _api_and_admin_processes(engine)
    token = await admin_process.issue_token(tenant_id, Role.AGENT)
    async with _listening(api_process):
        real_lookup = api_process._lookup

        async def lookup_then_revocation(token_id: str, secret: str) -> Principal | None:
            found = await real_lookup(token_id, secret)
            await admin_process.revoke_token(token_id)
            await eventually(lambda: api_process._revocations_seen, what="the revocation announced")
            return found

        api_process._lookup = lookup_then_revocation  # type: ignore[method-assign]
        assert await api_process.authenticate(token) is not None  # the answer read before
        api_process._lookup = real_lookup  # type: ignore[method-assign]
        clock.now += 6  # past cache_ttl: looked up again, and refused
        assert await api_process.authenticate(token) is None


async def test_losing_the_listening_connection_clears_the_cache_and_listening_resumes(
    engine: AsyncEngine,
) -> None:
    _, api_process, admin_process, tenant_id = await _api_and_admin_processes(engine)
    token = await admin_process.issue_token(tenant_id, Role.AGENT)
    async with _listening(api_process):
        assert await api_process.authenticate(token) is not None
        async with engine.connect() as conn:  # as a restart of the identity database would
            await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = :name"), {"name": LISTENER_APPLICATION_NAME})
            await conn.commit()
        # Entries cached for long may have missed a revocation.
        await eventually(lambda: not api_process._cache, what="the cache cleared")
        await eventually(lambda: api_process._listening, what="listening again within the retry interval")


async def test_revoking_through_the_same_instance_drops_its_cache(store: IdentityStore) -> None:
    tenant_id = await tenant(store)
    token = await store.issue_token(tenant_id, Role.AGENT)
    assert await store.authenticate(token) is not None
    await store.revoke_token(split(token)[0])
    assert await store.authenticate(token) is None


async def test_list_tokens_shows_metadata_not_secrets(store: IdentityStore) -> None:
    tenant_id = await tenant(store)
    kept = await store.issue_token(tenant_id, Role.ADMIN, label="ops")
    revoked = await store.issue_token(tenant_id, Role.AGENT, label="old")
    await store.revoke_token(split(revoked)[0])

    infos = {info.label: info for info in await store.list_tokens(tenant_id)}
    assert set(infos) == {"ops", "old"}
    assert infos["ops"].id == split(kept)[0] and infos["ops"].revoked_at is None
    assert infos["old"].revoked_at is not None
    assert await store.list_tokens(new_tenant_id()) == []


# -- the FastAPI dependencies -----------------------------------------------------------------


def build_app(store: IdentityStore) -> FastAPI:
    app = create_app("auth-test")
    app.state.identity = store

    @app.get("/whoami")
    async def whoami(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, str]:
        return {"tenant": principal.tenant, "role": principal.role.value}

    @app.post("/settings")
    async def change_settings(
        principal: Annotated[Principal, Depends(require_roles(Role.ADMIN))],
    ) -> dict[str, str]:
        return {"tenant": principal.tenant}

    @app.post("/reassign")
    async def reassign(
        principal: Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER))],
    ) -> dict[str, str]:
        return {"tenant": principal.tenant}

    return app


@pytest.fixture
async def api(store: IdentityStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_missing_or_invalid_token_is_401_with_challenge(
    api: httpx.AsyncClient, store: IdentityStore
) -> None:
    tenant_id = await tenant(store)
    token = await store.issue_token(tenant_id, Role.ADMIN)
    cases = [
        {},
        {"Authorization": ""},
        {"Authorization": f"Basic {token}"},
        bearer("ma_0123456789abcdef_not-the-secret"),
        bearer("garbage"),
    ]
    for headers in cases:
        response = await api.get("/whoami", headers=headers)
        body = assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer"), headers
        assert body["title"] == "Unauthorized"


async def test_wrong_role_is_403_naming_the_required_roles(
    api: httpx.AsyncClient, store: IdentityStore
) -> None:
    tenant_id = await tenant(store)
    agent = await store.issue_token(tenant_id, Role.AGENT)
    manager = await store.issue_token(tenant_id, Role.MANAGER)

    body = assert_problem(await api.post("/reassign", headers=bearer(agent)), 403)
    assert body["required_roles"] == ["admin", "manager"]
    assert "admin or manager" in body["detail"] and "agent" in body["detail"]

    body = assert_problem(await api.post("/settings", headers=bearer(manager)), 403)
    assert body["required_roles"] == ["admin"]

    assert (await api.post("/reassign", headers=bearer(manager))).json() == {"tenant": tenant_id}
    assert (await api.get("/whoami", headers=bearer(agent))).json() == {"tenant": tenant_id, "role": "agent"}


async def test_each_token_sees_its_own_tenant(api: httpx.AsyncClient, store: IdentityStore) -> None:
    first, second = await tenant(store), await tenant(store)
    for tenant_id in (first, second):
        token = await store.issue_token(tenant_id, Role.ADMIN)
        response = await api.post("/settings", headers=bearer(token))
        assert response.json() == {"tenant": tenant_id}


async def test_unreachable_identity_database_is_503_not_500() -> None:
    # Nothing listens on port 1: the store cannot be asked, which is not the caller's fault.
    dead = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/identity")
    app = build_app(IdentityStore(dead))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.get("/whoami", headers=bearer("ma_0123456789abcdef_secret"))
    finally:
        await dead.dispose()
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"


def test_require_roles_needs_a_role() -> None:
    with pytest.raises(ValueError):
        require_roles()


async def test_tenant_exists_remembers_found_tenants_never_misses(engine: AsyncEngine) -> None:
    clock = FakeClock()
    webhook_process = IdentityStore(engine, tenant_cache_ttl=60.0, clock=clock)
    admin_process = IdentityStore(engine)
    tenant_id = new_tenant_id()

    assert not await webhook_process.tenant_exists(tenant_id)
    await admin_process.create_tenant(tenant_id, "Created after a miss")
    assert await webhook_process.tenant_exists(tenant_id)  # a miss is not remembered: found at once
    assert not await webhook_process.tenant_exists("not a tenant id!")  # malformed: no query needed

    # Found tenants are remembered for the TTL: the engine is not asked again meanwhile.
    queries: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        queries.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        clock.now += 59.0
        assert await webhook_process.tenant_exists(tenant_id)
        assert queries == []
        clock.now += 2.0
        assert await webhook_process.tenant_exists(tenant_id)
        assert len(queries) == 1 and "tenants" in queries[0]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)


async def test_lookups_leave_the_pooled_connection_transactional(stack: Any) -> None:
    # Token and tenant lookups run without a transaction (autocommit); the connection they return
    # to the pool must again roll back what a later transaction on it did not commit.
    engine = create_async_engine(stack.database_url("identity_test"), pool_size=1, max_overflow=0)
    store = IdentityStore(engine)
    tenant = new_tenant_id()
    try:
        await store.create_schema()
        await store.create_tenant(tenant, "Acme")
        token = await store.issue_token(tenant, Role.AGENT)
        assert await store.authenticate(token) is not None
        assert await store.tenant_exists(tenant)
        async with engine.connect() as conn, conn.begin() as transaction:
            await conn.execute(api_tokens.delete().where(api_tokens.c.id == split(token)[0]))
            await transaction.rollback()
        assert await IdentityStore(engine).authenticate(token) is not None  # the delete was undone
    finally:
        await engine.dispose()
