from manual_actions.db import run_alembic_env

from dialer.adapters.tables import metadata

run_alembic_env(metadata)
