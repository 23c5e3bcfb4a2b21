"""Parley's gateway: the only public door (identity, plans, limits) in front of the services."""
