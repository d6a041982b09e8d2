"""manual_actions.db against the real PostgreSQL: database creation, Alembic from code, engines."""

from __future__ import annotations

import asyncio
import io
import textwrap
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Connection, MetaData, Table, Text, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.db import (
    alembic_config,
    asyncpg_dsn,
    create_engine,
    driver_connection,
    ensure_database,
    run_migrations,
    session_factory,
)
from manual_actions.outbox import inbox_table, outbox_table

pytestmark = pytest.mark.integration

ENV_PY = """
from manual_actions.db import run_alembic_env
from sqlalchemy import Column, MetaData, Table, Text
from manual_actions.outbox import inbox_table, outbox_table

metadata = MetaData()
Table("widgets", metadata, Column("id", Text, primary_key=True), Column("tenant", Text, nullable=False),
      Column("colour", Text, nullable=True))
outbox_table(metadata)
inbox_table(metadata)

run_alembic_env(metadata)
"""

V1 = '''
"""widgets and the outbox/inbox tables"""
import sqlalchemy as sa
from alembic import op
from manual_actions.outbox import create_outbox_tables, drop_outbox_tables

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("widgets", sa.Column("id", sa.Text, primary_key=True),
                    sa.Column("tenant", sa.Text, nullable=False))
    create_outbox_tables()


def downgrade():
    drop_outbox_tables()
    op.drop_table("widgets")
'''

V2 = '''
"""widget colour"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.add_column("widgets", sa.Column("colour", sa.Text, nullable=True))


def downgrade():
    op.drop_column("widgets", "colour")
'''


def migrations_dir(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(textwrap.dedent(ENV_PY))
    (root / "versions" / "0001_init.py").write_text(textwrap.dedent(V1))
    (root / "versions" / "0002_colour.py").write_text(textwrap.dedent(V2))
    return root


def expected_metadata() -> MetaData:
    metadata = MetaData()
    Table(
        "widgets",
        metadata,
        Column("id", Text, primary_key=True),
        Column("tenant", Text, nullable=False),
        Column("colour", Text, nullable=True),
    )
    outbox_table(metadata)
    inbox_table(metadata)
    return metadata


def fresh_database_url(stack: Any, prefix: str) -> str:
    """A URL for a database that does not exist yet, on the stack's server."""
    server = make_url(stack.database_url("postgres"))
    return server.set(database=f"{prefix}_{uuid.uuid4().hex[:10]}").render_as_string(hide_password=False)


async def database_exists(url: str) -> bool:
    parsed = make_url(url)
    conn = await asyncpg.connect(asyncpg_dsn(parsed.set(database="postgres")))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", parsed.database))
    finally:
        await conn.close()


async def test_ensure_database_creates_it_once_even_when_racing(stack: Any) -> None:
    url = fresh_database_url(stack, "test_db_create")
    assert not await database_exists(url)
    await asyncio.gather(*(ensure_database(url) for _ in range(4)))
    assert await database_exists(url)
    await ensure_database(url)  # already there: nothing to do


async def test_concurrent_migrations_run_once_and_match_the_table_definitions(
    stack: Any, tmp_path: Path
) -> None:
    url = fresh_database_url(stack, "test_db_migrate")
    await ensure_database(url)
    scripts = migrations_dir(tmp_path)

    # Three replicas starting at once: the advisory lock serialises them, the later ones find
    # the database at head and do nothing (without it they would collide creating the tables).
    await asyncio.gather(*(run_migrations(scripts, url) for _ in range(3)))
    await run_migrations(scripts, url)

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            differences = await conn.run_sync(_compare, expected_metadata())
    finally:
        await engine.dispose()
    assert version == "0002"
    # create_outbox_tables() in a migration builds exactly what outbox_table()/inbox_table() describe.
    assert differences == []


def _compare(conn: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return [d for d in compare_metadata(context, metadata) if not _is_alembic_version(d)]


def _is_alembic_version(difference: Any) -> bool:
    return isinstance(difference, tuple) and "alembic_version" in repr(difference)


def test_offline_mode_writes_the_sql_without_a_database(tmp_path: Path) -> None:
    scripts = migrations_dir(tmp_path)
    config = alembic_config(scripts, "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE outbox" in sql
    assert "CREATE INDEX ix_outbox_unpublished ON outbox (id) WHERE published_at IS NULL" in sql
    assert "CREATE TABLE inbox" in sql
    assert "ALTER TABLE widgets ADD COLUMN colour TEXT" in sql

    config.output_buffer = io.StringIO()
    command.downgrade(config, "0002:base", sql=True)
    down = config.output_buffer.getvalue()
    assert "DROP TABLE inbox" in down
    assert "DROP TABLE outbox" in down


async def test_sessions_keep_objects_after_commit(stack: Any) -> None:
    engine = create_engine(stack.database_url("test_db_engine"), pool_size=2)
    try:
        sessions = session_factory(engine)
        assert sessions.kw["expire_on_commit"] is False
        async with sessions() as session:
            assert await session.scalar(text("SELECT 41 + 1")) == 42
    finally:
        await engine.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert isinstance(pid, int)
        return pid


async def _terminate(url: str, pid: int) -> None:
    killer = create_engine(url, pool_size=1)
    try:
        async with killer.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}) is True
    finally:
        await killer.dispose()


async def test_an_idle_pooled_connection_that_died_is_replaced_before_use(stack: Any) -> None:
    url = stack.database_url("test_db_engine")
    engine = create_engine(url, pool_size=1, ping_idle_after=0.2)
    try:
        first = await _backend_pid(engine)
        await _terminate(url, first)  # as a server restart would, while the connection sits in the pool
        await asyncio.sleep(0.3)
        second = await _backend_pid(engine)  # pinged, found dead, replaced: no error
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_used_moments_ago_is_not_pinged(stack: Any) -> None:
    # The hot path's saving: within ``ping_idle_after`` no ping, so a connection killed meanwhile
    # fails the next statement, and the pool discards it so the statement after that succeeds.
    url = stack.database_url("test_db_engine")
    engine = create_engine(url, pool_size=1, ping_idle_after=60)
    try:
        first = await _backend_pid(engine)
        await _terminate(url, first)
        with pytest.raises(DBAPIError) as failure:
            await _backend_pid(engine)
        assert failure.value.connection_invalidated
        assert await _backend_pid(engine) != first
    finally:
        await engine.dispose()


async def test_driver_connection_works_inside_the_transaction_even_before_any_statement(stack: Any) -> None:
    url = stack.database_url("test_db_driver")
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS copied (value text)"))
            await conn.execute(text("TRUNCATE copied"))
        async with engine.connect() as conn:
            async with conn.begin() as transaction:
                driver = await driver_connection(conn)  # before any statement of this transaction
                assert driver.is_in_transaction()
                await driver.copy_records_to_table("copied", records=[("kept only if committed",)])
                await transaction.rollback()
            assert await conn.scalar(text("SELECT count(*) FROM copied")) == 0
            await conn.rollback()
            driver = await driver_connection(conn)  # no transaction begun: nothing to join
            assert not driver.is_in_transaction()
    finally:
        await engine.dispose()


async def test_a_driver_statement_binds_as_sqlalchemy_does_and_listeners_see_it(stack: Any) -> None:
    from sqlalchemy import bindparam, event, literal, select
    from sqlalchemy.dialects.postgresql import JSONB, insert

    from manual_actions.db import DriverStatement

    metadata = MetaData()
    notes = Table("driver_notes", metadata, Column("id", Text, primary_key=True),
                  Column("body", JSONB, nullable=True))
    url = stack.database_url("test_db_driver")
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(notes.delete())
        inserted = insert(notes).values(id=bindparam("id"), body=bindparam("body", type_=JSONB)).returning(
            notes.c.id, notes.c.body, literal(7).label("seven"))
        statement = DriverStatement(inserted)
        seen: list[tuple[str, Any, Any]] = []

        def before(conn: Any, cursor: Any, sql: str, parameters: Any, context: Any, many: bool) -> None:
            context.started = True
            seen.append((sql, parameters, cursor))

        def after(conn: Any, cursor: Any, sql: str, parameters: Any, context: Any, many: bool) -> None:
            assert context.started  # the same context object reaches both listeners
            seen.append(("after", None, None))

        async with engine.connect() as conn:
            async with conn.begin():
                row = await statement.fetchrow(conn, {"id": "a", "body": {"x": [1, None]}})
                assert row is not None
                # The JSONB value went through SQLAlchemy's bind processor (JSON text) and comes back
                # decoded; the bound literal kept its value.
                assert (row["id"], row["body"], row["seven"]) == ("a", {"x": [1, None]}, 7)
                event.listen(engine.sync_engine, "before_cursor_execute", before)
                event.listen(engine.sync_engine, "after_cursor_execute", after)
                try:
                    row = await statement.fetchrow(conn, {"id": "b", "body": None})
                finally:
                    event.remove(engine.sync_engine, "before_cursor_execute", before)
                    event.remove(engine.sync_engine, "after_cursor_execute", after)
                assert row is not None and row["body"] is None  # JSON null, as SQLAlchemy binds None
                with pytest.raises(KeyError, match="'body'"):
                    await statement.fetchrow(conn, {"id": "c"})
            # Committed with SQLAlchemy's transaction, which the driver statement joined.
            assert await conn.scalar(select(notes.c.body["x"]).where(notes.c.id == "a")) == [1, None]
        sql = statement.arguments(engine.dialect, {"id": "b", "body": None})[0]
        assert [s[0] for s in seen] == [sql, "after"]
        assert seen[0][1][0] == "b" and isinstance(seen[0][2], asyncpg.Connection)
    finally:
        await engine.dispose()


def test_a_driver_statement_refuses_expanding_parameters() -> None:
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql

    from manual_actions.db import DriverStatement

    widgets = Table("widgets_expanding", MetaData(), Column("id", Text, primary_key=True))
    statement = DriverStatement(select(widgets.c.id).where(widgets.c.id.in_(["a", "b"])))
    with pytest.raises(ValueError, match="expanding"):
        statement.arguments(postgresql.asyncpg.dialect(), {})
