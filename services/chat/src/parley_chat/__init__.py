"""Parley's chat service: conversations and OpenAI-compatible completions, events through an outbox."""
