"""Database plumbing: engines, sessions, and Alembic migrations run from code.

Each service keeps its migrations in ``adapters/migrations/`` (``env.py`` + ``versions/``), with no
``alembic.ini``. Its ``env.py`` is three lines::

    from manual_actions.db import run_alembic_env
    from my_service.adapters.tables import metadata

    run_alembic_env(metadata)

and the process runs them at start-up, before serving::

    await ensure_database(settings.database_url)
    await run_migrations(Path(migrations.__file__).parent, settings.database_url)

``run_migrations`` takes a PostgreSQL advisory lock for the whole upgrade, so replicas that start
at the same time run the migrations once, one after the other (the later ones find the database
at head). The outbox and inbox tables come from ``manual_actions.outbox.create_outbox_tables()``
called in the service's first migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` derived from ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# Serialises concurrent ``run_migrations`` on one database (advisory locks are per database).
MIGRATIONS_LOCK_KEY = advisory_lock_key("manual_actions.db.migrations")


# A pooled connection that sat unused longer than this is checked with a ping before it is handed
# out (see create_engine).
PING_IDLE_AFTER_SECONDS = 5.0


def create_engine(url: str, *, pool_size: int = 10,
                  ping_idle_after: float = PING_IDLE_AFTER_SECONDS) -> AsyncEngine:
    """An asyncpg engine sized for one service process, whose pool pings a connection before
    handing it out when it was idle for more than ``ping_idle_after`` seconds.

    A dead connection found by the ping is replaced (up to three tries) instead of failing a
    request; that covers the common case of connections that sat idle while the server restarted
    or a proxy dropped them. A busy pool skips the ping: it cost one round trip (about 0.45 ms of
    this machine's CPU) on every unit of work of the hot endpoints. A connection that dies while
    busy fails its request; SQLAlchemy then sees the disconnect and discards every pooled
    connection made before it, so the following requests get fresh ones
    (docs/decisions/0022). JSON and JSONB values are encoded and decoded by orjson (``_json_text``).
    """
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                 json_serializer=_json_text, json_deserializer=orjson.loads)
    _ping_when_idle(engine.sync_engine.pool, ping_idle_after)
    return engine


def _json_text(value: Any) -> str:
    """JSON/JSONB parameters as text, by orjson (several times faster than ``json.dumps`` on the
    outbox envelopes and histories every transition writes). Non-string keys are written as
    strings, as ``json.dumps`` writes them."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _ping_when_idle(pool: Pool, idle_after: float) -> None:
    @event.listens_for(pool, "checkin")
    def remember_return(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned <= idle_after:
            return  # new, or used moments ago
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool discards this connection and checks out another one.
            raise DisconnectionError("pooled connection failed its ping") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that do not expire objects on commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under ``conn`` (for what SQLAlchemy does not offer, such as COPY),
    inside ``conn``'s transaction when one was begun: SQLAlchemy's asyncpg adapter sends BEGIN
    lazily, with its first statement, so before any statement the driver would run outside it
    (a temporary table ``ON COMMIT DELETE ROWS`` would empty at once, a COPY commit on its own)."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    if conn.in_transaction() and not raw.is_in_transaction():
        await conn.execute(text("SELECT 1"))
    return raw


class DriverStatement:
    """A SQLAlchemy Core statement compiled once per dialect and run on the asyncpg connection
    directly (``driver_connection``), for the few statements on a hot path where SQLAlchemy's
    execution (compiled-cache lookup, parameter construction, result wrapping, a greenlet switch
    each way) costs more CPU than the round trip (docs/decisions/0025).

    Parameters are given by bind name, as with ``AsyncConnection.execute``, and go through the same
    bind processors (JSONB as JSON text, and so on); bound literals of the statement keep their
    values. Rows are asyncpg ``Record`` objects: read by column label (``row["name"]``), with the
    values the driver decodes, which are those SQLAlchemy returns for these column types (its
    result processors for them are identities on asyncpg). Statements with expanding (``IN``)
    parameters are refused: they are compiled per call.

    The engine's ``before_cursor_execute`` / ``after_cursor_execute`` listeners still see each
    execution (statement counts and timings stay whole): the cursor they get is the asyncpg
    connection, the parameters are the positional arguments, the context is a plain object a
    listener may set attributes on, and a listener's return value is ignored.
    """

    def __init__(self, statement: Any) -> None:
        self._statement = statement
        self._compiled: dict[int, tuple[str, list[tuple[str, Any, Any]]]] = {}

    def _for(self, dialect: Any) -> tuple[str, list[tuple[str, Any, Any]]]:
        compiled = self._compiled.get(id(dialect))
        if compiled is None:
            statement = self._statement.compile(dialect=dialect)
            if statement.literal_execute_params or statement.post_compile_params:
                raise ValueError("a DriverStatement cannot have expanding or literal-execute parameters")
            processors = statement._bind_processors
            binds = statement.binds
            names = statement.positiontup or []
            compiled = self._compiled[id(dialect)] = (
                statement.string,
                [(name, processors.get(name),
                  _MISSING if binds[name].required else binds[name].effective_value) for name in names])
        return compiled

    def arguments(self, dialect: Any, parameters: dict[str, Any]) -> tuple[str, list[Any]]:
        """The SQL text for ``dialect`` and its positional arguments for ``parameters``."""
        sql, binds = self._for(dialect)
        arguments = []
        for name, process, default in binds:
            value = parameters.get(name, default)
            if value is _MISSING:
                raise KeyError(f"no value for the statement's parameter {name!r}")
            arguments.append(process(value) if process is not None else value)
        return sql, arguments

    async def fetchrow(self, conn: AsyncConnection, parameters: dict[str, Any], *,
                       driver: asyncpg.Connection | None = None) -> asyncpg.Record | None:
        """The first row of the statement run with ``parameters`` on ``conn``'s driver connection
        (inside ``conn``'s transaction, see ``driver_connection``); ``driver`` is that connection
        when the caller holds it already (it must be ``conn``'s)."""
        raw = driver if driver is not None else await driver_connection(conn)
        sql, arguments = self.arguments(conn.dialect, parameters)
        sync = conn.sync_connection
        if sync is None or not (sync._has_events or sync.engine._has_events):
            return await raw.fetchrow(sql, *arguments)
        context = DriverExecution()
        sync.dispatch.before_cursor_execute(sync, raw, sql, arguments, context, False)
        row = await raw.fetchrow(sql, *arguments)
        sync.dispatch.after_cursor_execute(sync, raw, sql, arguments, context, False)
        return row


class DriverExecution:
    """The execution context ``DriverStatement`` hands cursor-execute listeners: attributes only."""


_MISSING: Any = object()


def asyncpg_dsn(url: str | URL) -> str:
    """The ``postgresql://`` DSN asyncpg understands for a SQLAlchemy URL (``postgresql+asyncpg://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (connects to ``postgres``).

    Two processes creating the same database at once is fine: the loser's error is ignored.
    """
    parsed = make_url(url)
    name = parsed.database
    if not name:
        raise ValueError("database URL names no database")
    conn = await asyncpg.connect(asyncpg_dsn(parsed.set(database="postgres")))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        # Created concurrently by another process: PostgreSQL reports either error, depending on timing.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()


def alembic_config(migrations_dir: Path, url: str) -> Config:
    """An Alembic ``Config`` without an ini file: script location and URL set from code."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("path_separator", "os")
    # Config values go through ConfigParser interpolation, where '%' is special.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_on(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def run_migrations(migrations_dir: Path, url: str, *, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to head using the Alembic scripts in ``migrations_dir``.

    ``migrations_dir`` holds ``env.py`` and ``versions/``; no alembic.ini is needed. Safe to call
    from several processes at once (serialised by a PostgreSQL advisory lock).

    The whole upgrade runs in one transaction (PostgreSQL has transactional DDL) that first takes
    a transaction-level advisory lock: a second process waits, then sees the committed version
    and has nothing left to do. ``env.py`` must call ``run_alembic_env``, which uses the
    connection handed over here.
    """
    config = alembic_config(migrations_dir, url)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATIONS_LOCK_KEY})
            await conn.run_sync(_upgrade_on, config, revision)
    finally:
        await engine.dispose()


def _configure_and_run(
    connection: Connection, target_metadata: MetaData | None, options: dict[str, Any]
) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True, **options)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str, target_metadata: MetaData | None, options: dict[str, Any]) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATIONS_LOCK_KEY})
            await conn.run_sync(_configure_and_run, target_metadata, options)
    finally:
        await engine.dispose()


def run_alembic_env(target_metadata: MetaData | None, **configure_options: Any) -> None:
    """The body of every service's migrations ``env.py``.

    * Called through ``run_migrations``: migrates on the connection it hands over (in its
      transaction, under its advisory lock).
    * Called by the ``alembic`` command line (e.g. ``alembic revision --autogenerate`` with a
      ``-c`` pointing at a throwaway ini): opens its own async engine from ``sqlalchemy.url``.
    * Offline mode (``--sql``): writes the SQL instead of running it.

    ``configure_options`` are passed on to ``context.configure`` (e.g. ``include_object``).
    """
    config = context.config
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=target_metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **configure_options,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection, target_metadata, configure_options)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection handed over and no sqlalchemy.url configured")
    asyncio.run(_run_with_own_engine(url, target_metadata, configure_options))
