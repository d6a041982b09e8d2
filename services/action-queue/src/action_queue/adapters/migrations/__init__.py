"""Alembic migrations of the action-queue database (``env.py`` + ``versions/``; no alembic.ini).
Run at start-up by ``manual_actions.db.run_migrations``."""
