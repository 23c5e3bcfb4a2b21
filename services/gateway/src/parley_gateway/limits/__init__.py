"""Rate limits, concurrency leases and token quotas, exact across replicas (Redis) with a local fallback."""
