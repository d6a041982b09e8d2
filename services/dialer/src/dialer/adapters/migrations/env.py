from dialer.adapters.tables import metadata
from manual_actions.db import run_alembic_env

run_alembic_env(metadata)
