"""Parley's usage service: the token ledger, fed by usage events."""
