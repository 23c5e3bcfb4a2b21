"""Parley's notify service: email for Parley events (welcome, quota thresholds, plan changes, disabled webhooks)."""
