"""Test support shared by every service's tests: real services, real processes, isolation.

Load it with ``pytest_plugins = ["parley_common.testing.plugin"]``. Nothing here mocks Parley's own code:
fixtures hand out real PostgreSQL databases, RabbitMQ vhosts and Redis key prefixes, and start real
processes that they stop again by PID.
"""
