"""How the fake provider counts and generates tokens: pure functions tests can call to predict output.

A "token" is a whitespace-separated word. The reply repeats the words of the last user message (or
``ok``) until it has ``completion_tokens`` words; each streamed chunk carries one of them.
"""

from __future__ import annotations

from typing import Any

PRIMING_TOKENS = 2
PER_MESSAGE_TOKENS = 4


def content_text(content: Any) -> str:
    """The text of a message's ``content`` (a string, or a list of parts with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """2 + Σ over messages of (4 + words in content)."""
    return PRIMING_TOKENS + sum(
        PER_MESSAGE_TOKENS + len(content_text(m.get("content")).split()) for m in messages
    )


def completion_tokens(request: dict[str, Any], configured_chunks: int) -> int:
    """``min(max_completion_tokens or max_tokens, configured_chunks)``."""
    cap = request.get("max_completion_tokens") or request.get("max_tokens")
    return min(int(cap), configured_chunks) if cap else configured_chunks


def reply_words(messages: list[dict[str, Any]], count: int) -> list[str]:
    """The ``count`` words of the reply."""
    source: list[str] = []
    for message in reversed(messages):
        if message.get("role") == "user":
            source = content_text(message.get("content")).split()
            break
    source = source or ["ok"]
    return [source[i % len(source)] for i in range(count)]
