"""Parley's webhooks service: signed outbound deliveries with retries, and inbound provider webhooks."""
