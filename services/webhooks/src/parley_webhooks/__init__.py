"""Parley's webhooks service: signed outbound webhooks (arrives with the webhooks work)."""
