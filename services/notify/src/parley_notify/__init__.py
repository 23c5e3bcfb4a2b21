"""Parley's notify service: email for Parley events (consumer arrives with the notifications work)."""
