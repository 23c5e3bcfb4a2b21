from parley_common.db.migrations import run_env

from parley_webhooks.models import Model

run_env(Model.metadata)
