from manual_actions.db import run_alembic_env
from workflow_runner.adapters.tables import metadata

run_alembic_env(metadata)
