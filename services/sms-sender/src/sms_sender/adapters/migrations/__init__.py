"""Alembic migrations of sms-sender's database (run at start-up by ``manual_actions.db.run_migrations``)."""
