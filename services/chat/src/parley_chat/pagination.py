"""Cursor pagination shared by chat's lists. Cursors are opaque to clients: the keyset of the last row
returned, base64url-encoded JSON."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from parley_common.errors import Problem
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def invalid_cursor() -> Problem:
    return Problem(400, "invalid_cursor", "The cursor is not one this API returned.")


def encode_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> object:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise invalid_cursor() from None


async def newest_first_page(
    session: AsyncSession, statement: Select[T], model: Any, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """A page of ``statement``'s rows, newest first by (``created_at``, ``id``) of ``model``."""
    if cursor:
        decoded = decode_cursor(cursor)
        try:
            created, last_id = datetime.fromisoformat(decoded[0]), UUID(decoded[1])  # type: ignore[index]
        except (TypeError, ValueError, KeyError, IndexError):
            raise invalid_cursor() from None
        statement = statement.where(tuple_(model.created_at, model.id) < (created, last_id))
    statement = statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows: list[T] = list((await session.execute(statement)).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor([last.created_at.isoformat(), str(last.id)])  # type: ignore[attr-defined]
