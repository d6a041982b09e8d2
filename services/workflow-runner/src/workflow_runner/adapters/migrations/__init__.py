"""Alembic migrations of the workflow-runner database (``env.py`` + ``versions/``; no alembic.ini).
Run at start-up by ``manual_actions.db.run_migrations``."""
