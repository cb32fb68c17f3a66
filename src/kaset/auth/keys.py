"""API keys: random, shown once, stored as a sha256 hash, owned by users, verified through a cache.

Why sha256 and not a password hash (scrypt, argon2): a key carries 256 bits from `secrets`, so
there is nothing to brute-force that stretching would protect; slow hashing exists for
low-entropy human passwords. A plain sha256 keeps verification at microseconds, and the stored
hash is still useless to someone who reads the database.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import func, select, update

from kaset.auth import audit
from kaset.auth.cache import AuthCache
from kaset.auth.principal import Actor, Principal, utc
from kaset.errors import AuthenticationFailed, InvalidRequest, NotFound
from kaset.quotas.policy import Limits
from kaset.store.db import Database
from kaset.store.tables import ApiKey, User

KEY_PREFIX = "ksk-"
# Longer than any key this server issues (ksk- + 43) or a sensible preset bootstrap key.
MAX_KEY_CHARS = 256
MAX_ALLOWED_MODELS = 100


@dataclass(frozen=True)
class KeyInfo:
    """A key's record (never the key itself)."""

    id: int
    prefix: str
    label: str
    user_id: int
    username: str
    role: str
    allowed_models: list[str] | None
    expires_at: datetime | None
    created_at: datetime | None
    revoked_at: datetime | None
    limits: Limits | None = None

    @property
    def name(self) -> str:
        return self.label

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def status(self) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _info(row: ApiKey, user: User) -> KeyInfo:
    return KeyInfo(row.id, row.prefix, row.label, row.user_id, user.username, user.role,
                   list(row.allowed_models) if row.allowed_models is not None else None,
                   utc(row.expires_at), utc(row.created_at), utc(row.revoked_at), Limits.from_dict(row.limits))


def clean_allowlist(models: Iterable[str] | None) -> list[str] | None:
    if models is None:
        return None
    cleaned = list(dict.fromkeys(m.strip() for m in models))
    if not cleaned or any(not m or len(m) > 200 for m in cleaned):
        raise InvalidRequest("allowed_models must be a non-empty list of model ids or aliases (1-200 characters "
                             "each); leave it out (null) to allow every model.", param="allowed_models")
    if len(cleaned) > MAX_ALLOWED_MODELS:
        raise InvalidRequest(f"allowed_models takes at most {MAX_ALLOWED_MODELS} models.", param="allowed_models")
    return cleaned


class KeyStore:
    def __init__(self, db: Database, cache_ttl_s: float = 300.0, cache: AuthCache | None = None) -> None:
        self.db = db
        self.cache = cache or AuthCache(cache_ttl_s)
        # The request path's dict, bound once: a cache hit is a hash, this lookup and a clock read.
        # Misses are not cached: a bad key costs a query, which the rate limiter is there to bound.
        self._cache = self.cache.keys

    async def create(self, user_id: int, *, actor: Actor, label: str = "", allowed_models: Iterable[str] | None = None,
                     expires_at: datetime | None = None, key: str | None = None,
                     limits: Limits | None = None) -> tuple[str, KeyInfo]:
        """Create a key for a user; returns the plain key (show it once) and its record."""
        allowlist = clean_allowlist(allowed_models)
        if expires_at is not None:
            expires_at = utc(expires_at)
            assert expires_at is not None
            if expires_at <= datetime.now(UTC):
                raise InvalidRequest("expires_at must be in the future.", param="expires_at")
        if len(label) > 200:
            raise InvalidRequest("label is limited to 200 characters.", param="label")
        key = key or new_key()
        async with self.db.sessions() as session, session.begin():
            user = await session.get(User, user_id)
            if user is None or user.disabled_at is not None:
                raise NotFound(f"No active user with id {user_id}.", param="user_id")
            row = ApiKey(key_hash=hash_key(key), prefix=key[:10], user_id=user_id, label=label,
                         allowed_models=allowlist, expires_at=expires_at,
                         limits=limits.to_dict() if limits is not None else None)
            session.add(row)
            await session.flush()
            audit.record(session, actor, "key.create", "key", row.id, {
                "user_id": user_id, "username": user.username, "label": label, "prefix": row.prefix,
                "allowed_models": allowlist, "expires_at": expires_at.isoformat() if expires_at else None,
                "limits": limits.to_dict() if limits is not None else None})
            await session.refresh(row)
            info = _info(row, user)
        return key, info

    async def count(self) -> int:
        async with self.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)

    async def get(self, key_id: int) -> KeyInfo:
        async with self.db.sessions() as session:
            found = (await session.execute(select(ApiKey, User).join(User, User.id == ApiKey.user_id)
                                           .where(ApiKey.id == key_id))).first()
        if found is None:
            raise NotFound(f"No key with id {key_id}.")
        return _info(*found)

    async def list(self, user_id: int | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        query = select(ApiKey, User).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self.db.sessions() as session:
            return [_info(key, user) for key, user in (await session.execute(query)).all()]

    async def revoke(self, key_id: int, *, actor: Actor, owner_id: int | None = None) -> KeyInfo:
        """Revoke a key (only the owner's when `owner_id` is given). Every replica drops it within 1 s."""
        async with self.db.sessions() as session, session.begin():
            query = (update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                     .values(revoked_at=datetime.now(UTC), updated_at=func.now())
                     .returning(ApiKey.key_hash))
            if owner_id is not None:
                query = query.where(ApiKey.user_id == owner_id)
            revoked = (await session.execute(query)).scalars().all()
            if not revoked:
                raise NotFound(f"No active key with id {key_id}.")
            audit.record(session, actor, "key.revoke", "key", key_id)
        await self.cache.invalidate(key_hashes=revoked)
        return await self.get(key_id)

    async def set_limits(self, key_id: int, limits: Limits | None, *, actor: Actor,
                         owner_id: int | None = None) -> KeyInfo:
        """Set a key's limits (None: the server's defaults); every replica sees them within 1 s."""
        async with self.db.sessions() as session, session.begin():
            row = await session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None or (owner_id is not None and row.user_id != owner_id):
                raise NotFound(f"No active key with id {key_id}.")
            before = row.limits
            row.limits = limits.to_dict() if limits is not None else None
            row.updated_at = func.now()  # the poll's change feed
            audit.record(session, actor, "key.limits", "key", key_id, {"from": before, "to": row.limits})
            key_hash = row.key_hash
        await self.cache.invalidate(key_hashes=[key_hash])
        return await self.get(key_id)

    async def verify(self, key: str) -> Principal:
        key_hash = hash_key(key)
        hit = self._cache.get(key_hash)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return await self._verify_slow(key_hash)

    async def _verify_slow(self, key_hash: str) -> Principal:
        generation = self.cache.generation
        principal = await self.cache.redis_get(key_hash)
        from_db = principal is None
        if principal is None:
            principal = await self._load(key_hash)
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            raise _expired(principal)
        if from_db and not await self.cache.redis_put(key_hash, principal):
            return principal  # invalidated while we read it: serve this request, cache nothing
        # An invalidation that arrived while we were reading may concern this key: do not cache.
        if self.cache.generation == generation:
            self._cache[key_hash] = (principal, self.cache.deadline(principal))
        return principal

    async def _load(self, key_hash: str) -> Principal:
        async with self.db.sessions() as session:
            found = (await session.execute(select(ApiKey, User).join(User, User.id == ApiKey.user_id)
                                           .where(ApiKey.key_hash == key_hash))).first()
        if found is None:
            raise AuthenticationFailed(
                "Incorrect API key provided. Check the key, or ask an operator for a new one "
                "(kaset keys create)."
            )
        row, user = found
        if row.revoked_at is not None:
            raise AuthenticationFailed(
                f"This API key ({row.prefix}…) was revoked on {utc(row.revoked_at):%Y-%m-%d %H:%M} UTC. "
                "Ask an operator for a new one.", code="api_key_revoked")
        if user.disabled_at is not None:
            raise AuthenticationFailed(f"The account '{user.username}' that owns this API key is disabled.",
                                       code="account_disabled")
        return Principal(user_id=user.id, username=user.username, role=user.role, key_id=row.id,
                         key_prefix=row.prefix, label=row.label,
                         allowed_models=frozenset(row.allowed_models) if row.allowed_models is not None else None,
                         expires_at=utc(row.expires_at), limits=Limits.from_dict(row.limits),
                         user_limits=Limits.from_dict(user.limits))


def _expired(principal: Principal) -> AuthenticationFailed:
    assert principal.expires_at is not None
    return AuthenticationFailed(
        f"This API key ({principal.key_prefix}…) expired on {principal.expires_at:%Y-%m-%d %H:%M} UTC. "
        "Ask an operator for a new one.", code="api_key_expired")
