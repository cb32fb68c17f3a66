"""The audit log: one row per administrative action, written in the same transaction as the action,
so an action and its record commit (or roll back) together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaset.auth.principal import Actor, utc
from kaset.store.db import Database
from kaset.store.tables import AuditEntry


@dataclass(frozen=True)
class AuditRecord:
    id: int
    created_at: datetime | None
    actor: str
    actor_user_id: int | None
    actor_key_id: int | None
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any] | None
    request_id: str | None


def record(session: AsyncSession, actor: Actor, action: str, target_type: str, target_id: object = None,
           details: dict[str, Any] | None = None) -> None:
    """Add an audit row to the caller's transaction. Never put secrets (keys, passwords) in `details`."""
    session.add(AuditEntry(actor=actor.name[:200], actor_user_id=actor.user_id, actor_key_id=actor.key_id,
                           action=action, target_type=target_type,
                           target_id=None if target_id is None else str(target_id)[:64], details=details,
                           request_id=actor.request_id[:128] if actor.request_id else None))


async def entries(db: Database, *, limit: int = 100, before_id: int | None = None, action: str | None = None,
                  actor_user_id: int | None = None) -> list[AuditRecord]:
    """Newest first; page with `before_id` (the smallest id of the previous page)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if actor_user_id is not None:
        query = query.where(AuditEntry.actor_user_id == actor_user_id)
    async with db.sessions() as session:
        return [AuditRecord(r.id, utc(r.created_at), r.actor, r.actor_user_id, r.actor_key_id, r.action,
                            r.target_type, r.target_id, r.details, r.request_id)
                for r in await session.scalars(query)]
