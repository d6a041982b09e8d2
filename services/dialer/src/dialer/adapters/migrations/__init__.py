"""Alembic migrations of the dialer's database (run at start-up by ``manual_actions.db.run_migrations``)."""
