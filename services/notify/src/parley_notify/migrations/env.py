from parley_common.db.migrations import run_env

from parley_notify.models import Model

run_env(Model.metadata)
