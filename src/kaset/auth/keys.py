"""API keys: random, shown once, stored as a sha256 hash, verified through a small cache.

Keys carry 256 bits of randomness, so a plain sha256 is a safe hash (no password-style
stretching needed) and verification costs microseconds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update

from kaset.errors import AuthenticationFailed, NotFound
from kaset.store.db import Database
from kaset.store.tables import ApiKey

KEY_PREFIX = "ksk-"
ROLES = ("admin", "user")


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    name: str
    role: str
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.prefix, row.name, row.role, row.created_at, row.revoked_at)


class KeyStore:
    def __init__(self, db: Database, cache_ttl_s: float = 300.0) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        # key hash -> (key, monotonic expiry). Misses are not cached: a bad key costs a query,
        # which the rate limiter (not this cache) is there to bound.
        self._cache: dict[str, tuple[KeyInfo, float]] = {}

    async def create(self, name: str = "", role: str = "user", key: str | None = None) -> tuple[str, KeyInfo]:
        """Create a key; returns the plain key (show it once) and its record."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key = key or new_key()
        row = ApiKey(key_hash=hash_key(key), prefix=key[:10], name=name, role=role)
        async with self.db.sessions() as session, session.begin():
            session.add(row)
        return key, _info(row)

    async def count(self) -> int:
        async with self.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)

    async def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        query = select(ApiKey).order_by(ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self.db.sessions() as session:
            return [_info(row) for row in await session.scalars(query)]

    async def revoke(self, key_id: int) -> None:
        async with self.db.sessions() as session, session.begin():
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
                .returning(ApiKey.key_hash)
            )
            revoked = result.scalars().all()
        if not revoked:
            raise NotFound(f"No active key with id {key_id}.")
        for key_hash in revoked:
            self._cache.pop(key_hash, None)

    async def verify(self, key: str) -> KeyInfo:
        key_hash = hash_key(key)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.db.sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        if row is None or row.revoked_at is not None:
            self._cache.pop(key_hash, None)
            raise AuthenticationFailed(
                "Incorrect API key provided. Check the key, or ask an operator for a new one "
                "(kaset keys create)."
            )
        info = _info(row)
        self._cache[key_hash] = (info, now + self.cache_ttl_s)
        return info
