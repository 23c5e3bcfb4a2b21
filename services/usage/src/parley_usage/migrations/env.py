from parley_common.db.migrations import run_env

from parley_usage.models import Model

run_env(Model.metadata)
