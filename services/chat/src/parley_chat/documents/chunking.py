"""Documents cut into excerpts small enough for the embedding model (it reads at most 256 tokens)."""

from __future__ import annotations


def chunk_text(text: str, words: int, overlap: int) -> list[str]:
    """Consecutive excerpts of ``words`` words, each repeating the last ``overlap`` words of the one
    before, so a sentence cut at a boundary is whole in one of them. Whitespace is normalised."""
    tokens = text.split()
    step = max(words - overlap, 1)
    chunks = []
    for start in range(0, len(tokens), step):
        chunks.append(" ".join(tokens[start : start + words]))
        if start + words >= len(tokens):
            break
    return chunks
