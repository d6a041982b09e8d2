"""Adapters: SQL tables, repositories and the unit of work, Alembic migrations."""
