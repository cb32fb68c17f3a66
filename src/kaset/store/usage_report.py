"""Reading the daily usage rollups (written by the request-log flusher)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select

from kaset.store.db import Database
from kaset.store.log_tables import ROLLUP_SUMS, usage_daily


@dataclass(frozen=True)
class UsageScope:
    """Whose usage to read. Filters combine (AND); none set means everyone's."""

    key_id: int | None = None
    user_id: int | None = None

    @property
    def everyone(self) -> bool:
        return self.key_id is None and self.user_id is None


async def daily_usage(db: Database, scope: UsageScope, start: date, end: date, model: str | None = None,
                      limit: int = 10_000) -> list[dict[str, Any]]:
    """Rollup rows for days start..end (inclusive), oldest first, at most `limit` rows."""
    query = select(usage_daily).where(usage_daily.c.day >= start, usage_daily.c.day <= end)
    if scope.key_id is not None:
        query = query.where(usage_daily.c.key_id == scope.key_id)
    if scope.user_id is not None:
        query = query.where(usage_daily.c.user_id == scope.user_id)
    if model is not None:
        query = query.where(usage_daily.c.model == model)
    query = query.order_by(usage_daily.c.day, usage_daily.c.key_id, usage_daily.c.model).limit(limit)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [dict(row) for row in rows]


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {name: sum(row[name] for row in rows) for name in ROLLUP_SUMS}
