"""Each test module gets its own database, vhost and processes (see tests/webhooks/fixtures.py)."""

from tests.webhooks.fixtures import isolated, module_processes, receiver

__all__ = ["isolated", "module_processes", "receiver"]
