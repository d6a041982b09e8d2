from manual_actions.db import run_alembic_env
from sms_sender.adapters.tables import metadata

run_alembic_env(metadata)
