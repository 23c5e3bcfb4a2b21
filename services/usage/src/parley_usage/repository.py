"""Queries of the usage API, on the daily rollups (the ledger feeds them in its own transactions)."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley_usage.models import DailyRollup
from parley_usage.schemas import GroupBy, UsageFigures, UsageGroup

_SUMS = (
    func.coalesce(func.sum(DailyRollup.prompt_tokens), 0).label("prompt_tokens"),
    func.coalesce(func.sum(DailyRollup.completion_tokens), 0).label("completion_tokens"),
    func.coalesce(func.sum(DailyRollup.requests), 0).label("requests"),
    func.coalesce(func.sum(DailyRollup.cached_requests), 0).label("cached_requests"),
    func.coalesce(func.sum(DailyRollup.estimated_requests), 0).label("estimated_requests"),
    func.coalesce(func.sum(DailyRollup.cached_tokens), 0).label("cached_tokens"),
    func.coalesce(func.sum(DailyRollup.estimated_tokens), 0).label("estimated_tokens"),
)


def _figures(row: object) -> dict[str, int | float]:
    prompt, completion = int(row.prompt_tokens), int(row.completion_tokens)  # type: ignore[attr-defined]
    requests = int(row.requests)  # type: ignore[attr-defined]
    cached, estimated = int(row.cached_requests), int(row.estimated_requests)  # type: ignore[attr-defined]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "requests": requests,
        "cached_requests": cached,
        "estimated_requests": estimated,
        "cached_share": round(cached / requests, 6) if requests else 0.0,
        "estimated_share": round(estimated / requests, 6) if requests else 0.0,
        "cached_tokens": int(row.cached_tokens),  # type: ignore[attr-defined]
        "estimated_tokens": int(row.estimated_tokens),  # type: ignore[attr-defined]
    }


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @staticmethod
    def _in_range(user_id: UUID, start: date, end: date) -> tuple[ColumnElement[bool], ...]:
        return (DailyRollup.user_id == user_id, DailyRollup.day >= start, DailyRollup.day <= end)

    async def groups(self, user_id: UUID, start: date, end: date, group_by: GroupBy) -> list[UsageGroup]:
        key = DailyRollup.day if group_by == "day" else DailyRollup.model
        statement = (
            select(key.label("key"), *_SUMS)
            .where(*self._in_range(user_id, start, end))
            .group_by(key)
            .order_by(key)
        )
        rows = (await self.session.execute(statement)).all()
        return [UsageGroup(**{group_by: row.key}, **_figures(row)) for row in rows]

    async def total(self, user_id: UUID, start: date, end: date) -> UsageFigures:
        statement = select(*_SUMS).where(*self._in_range(user_id, start, end))
        row = (await self.session.execute(statement)).one()
        return UsageFigures(**_figures(row))

    async def has_usage(self, user_id: UUID) -> bool:
        """Whether the ledger has ever recorded a call of this user."""
        return bool(await self.session.scalar(select(exists().where(DailyRollup.user_id == user_id))))
