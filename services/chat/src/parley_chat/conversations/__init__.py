"""Conversations: stored history, owner-scoped, and turns that call the model with it."""
