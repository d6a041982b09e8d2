"""Database plumbing: engines, sessions, and Alembic migrations run from code."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, AsyncSession


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncpg engine with pre-ping, sized for one service process."""
    raise NotImplementedError


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that do not expire objects on commit."""
    raise NotImplementedError


async def run_migrations(migrations_dir: Path, url: str) -> None:
    """Upgrade the database at ``url`` to head using the Alembic scripts in ``migrations_dir``.

    ``migrations_dir`` holds ``env.py`` and ``versions/``; no alembic.ini is needed. Safe to call
    from several processes at once (serialised by a PostgreSQL advisory lock).
    """
    raise NotImplementedError


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (connects to ``postgres``)."""
    raise NotImplementedError
