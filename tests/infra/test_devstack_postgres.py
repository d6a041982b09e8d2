"""The session's PostgreSQL server: connections, the application role, database_url idempotence."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from devstack import Stack

pytestmark = pytest.mark.integration


def _dsn(url: str) -> str:
    # SQLAlchemy's driver suffix is not part of what asyncpg accepts.
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_database_url_creates_the_database_once(stack: Stack) -> None:
    name = f"devstack_{uuid.uuid4().hex[:8]}"
    first = stack.database_url(name)
    second = stack.database_url(name)
    assert first == second
    assert first.startswith("postgresql+asyncpg://manual_actions@127.0.0.1:")
    assert first.endswith(f"/{name}")

    conn = await asyncpg.connect(_dsn(first))
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        assert await conn.fetchval("SELECT current_user") == "manual_actions"
        await conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO probe VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM probe") == 1
        count = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        assert count == 1
    finally:
        await conn.close()

    # A third call after data exists must leave it alone.
    stack.database_url(name)
    conn = await asyncpg.connect(_dsn(first))
    try:
        assert await conn.fetchval("SELECT count(*) FROM probe") == 1
    finally:
        await conn.close()


async def test_application_role_is_a_local_superuser_and_test_server_skips_fsync(stack: Stack) -> None:
    conn = await asyncpg.connect(_dsn(stack.database_url("manual_actions")))
    try:
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'manual_actions'") is True
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SELECT current_setting('server_encoding')") == "UTF8"
    finally:
        await conn.close()


def test_database_names_are_checked(stack: Stack) -> None:
    with pytest.raises(ValueError, match="database name"):
        stack.database_url('evil"; DROP DATABASE postgres; --')
