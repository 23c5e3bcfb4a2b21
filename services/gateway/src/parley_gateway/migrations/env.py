from parley_common.db.migrations import run_env

from parley_gateway.models import Model

run_env(Model.metadata)
