"""Users and their roles. Users are disabled, never deleted, so their keys and audit rows stay
attributable; disabling revokes their keys."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kaset.auth import audit
from kaset.auth.cache import AuthCache
from kaset.auth.passwords import check_policy, hash_password, verify_password
from kaset.auth.principal import ROLES, Actor, Principal, utc
from kaset.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from kaset.quotas.policy import Limits
from kaset.store.db import Database
from kaset.store.tables import ApiKey, User

USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,99}")


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: str
    has_password: bool
    created_at: datetime | None
    disabled_at: datetime | None
    limits: Limits | None = None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


def _info(row: User) -> UserInfo:
    return UserInfo(row.id, row.username, row.role, row.password_hash is not None, utc(row.created_at),
                    utc(row.disabled_at), Limits.from_dict(row.limits))


def clean_username(username: str) -> str:
    # Lower case: 'Alice' and 'alice' as two accounts is a trap for operators.
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise InvalidRequest("A username is 1-100 characters: letters, digits and . _ @ + - "
                             "(starting with a letter or digit).", param="username")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}.", param="role")
    return role


async def _hash(password: str) -> str:
    problem = check_policy(password)
    if problem:
        raise InvalidRequest(problem, param="password")
    # scrypt takes ~50 ms of CPU: off the event loop.
    return await asyncio.to_thread(hash_password, password)


class UserStore:
    def __init__(self, db: Database, cache: AuthCache) -> None:
        self.db = db
        self.cache = cache

    async def create(self, username: str, role: str, *, actor: Actor, password: str | None = None,
                     limits: Limits | None = None) -> UserInfo:
        name, role = clean_username(username), check_role(role)
        password_hash = await _hash(password) if password is not None else None
        try:
            async with self.db.sessions() as session, session.begin():
                row = User(username=name, role=role, password_hash=password_hash,
                            limits=limits.to_dict() if limits is not None else None)
                session.add(row)
                await session.flush()
                audit.record(session, actor, "user.create", "user", row.id,
                             {"username": name, "role": role, "password": password is not None,
                              "limits": row.limits})
                await session.refresh(row)
        except IntegrityError:
            raise Conflict(f"A user named '{name}' already exists.", param="username") from None
        return _info(row)

    async def count(self) -> int:
        async with self.db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def list(self, include_disabled: bool = False) -> list[UserInfo]:
        query = select(User).order_by(User.id)
        if not include_disabled:
            query = query.where(User.disabled_at.is_(None))
        async with self.db.sessions() as session:
            return [_info(row) for row in await session.scalars(query)]

    async def get(self, user_id: int) -> UserInfo:
        async with self.db.sessions() as session:
            row = await session.get(User, user_id)
        if row is None:
            raise NotFound(f"No user with id {user_id}.")
        return _info(row)

    async def by_username(self, username: str) -> UserInfo:
        async with self.db.sessions() as session:
            row = await session.scalar(select(User).where(User.username == username.strip().lower()))
        if row is None:
            raise NotFound(f"No user named '{username}'.", param="username")
        return _info(row)

    async def update(self, user_id: int, *, actor: Actor, role: str | None = None, password: str | None = None,
                     disabled: bool | None = None, set_limits: bool = False, limits: Limits | None = None) -> UserInfo:
        """Change a role, set a password, disable or re-enable, set limits (`set_limits`; None: the server's
        defaults). Disabling revokes the user's keys."""
        if role is not None:
            check_role(role)
        password_hash = await _hash(password) if password is not None else None
        async with self.db.sessions() as session, session.begin():
            row = await session.get(User, user_id)
            if row is None:
                raise NotFound(f"No user with id {user_id}.")
            changes: dict[str, object] = {}
            loses_admin = row.role == "admin" and row.disabled_at is None and (
                (role is not None and role != "admin") or disabled is True)
            if loses_admin:
                await _keep_an_admin(session, user_id)
            if role is not None and role != row.role:
                changes["role"] = {"from": row.role, "to": role}
                row.role = role
            if password_hash is not None:
                changes["password"] = "changed"
                row.password_hash = password_hash
            if set_limits and Limits.from_dict(row.limits) != limits:
                changes["limits"] = {"from": row.limits, "to": limits.to_dict() if limits is not None else None}
                row.limits = limits.to_dict() if limits is not None else None
            revoked: list[str] = []
            if disabled is True and row.disabled_at is None:
                changes["disabled"] = True
                row.disabled_at = datetime.now(UTC)
                revoked = await _revoke_all(session, user_id)
                changes["keys_revoked"] = len(revoked)
            elif disabled is False and row.disabled_at is not None:
                changes["disabled"] = False
                row.disabled_at = None
            if not changes:
                return _info(row)
            affected: list[str] = []
            if "role" in changes or "disabled" in changes or "limits" in changes:
                row.updated_at = func.now()  # the poll's change feed
                # Every cached copy of this user's keys (in Redis too) holds the old role or state.
                affected = list(await session.scalars(select(ApiKey.key_hash).where(ApiKey.user_id == user_id)))
            audit.record(session, actor, "user.update", "user", user_id, changes)
        await self.cache.invalidate(key_hashes=[*revoked, *affected], user_ids=[user_id])
        return await self.get(user_id)

    async def delete(self, user_id: int, *, actor: Actor) -> UserInfo:
        """Disable the user and revoke every key they own (the row stays for the audit trail)."""
        async with self.db.sessions() as session, session.begin():
            row = await session.get(User, user_id)
            if row is None or row.disabled_at is not None:
                raise NotFound(f"No active user with id {user_id}.")
            if row.role == "admin":
                await _keep_an_admin(session, user_id)
            row.disabled_at = datetime.now(UTC)
            row.updated_at = func.now()
            revoked = await _revoke_all(session, user_id)
            audit.record(session, actor, "user.delete", "user", user_id,
                         {"username": row.username, "keys_revoked": len(revoked)})
        await self.cache.invalidate(key_hashes=revoked, user_ids=[user_id])
        return await self.get(user_id)

    async def check_password(self, username: str, password: str) -> UserInfo:
        """The user, if the password is theirs and they are active. One message for every failure,
        so the answer does not reveal which usernames exist."""
        async with self.db.sessions() as session:
            row = await session.scalar(select(User).where(User.username == username.strip().lower()))
        stored = row.password_hash if row is not None else None
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or row is None or row.disabled_at is not None:
            raise AuthenticationFailed("Incorrect username or password.", code="invalid_credentials")
        return _info(row)

    async def principal(self, user_id: int) -> Principal:
        """The cached principal of a signed-in user (JWT): role and state are read live, not from the token."""
        hit = self.cache.users.get(user_id)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        generation = self.cache.generation
        async with self.db.sessions() as session:
            row = await session.get(User, user_id)
        if row is None or row.disabled_at is not None:
            raise AuthenticationFailed("This account is disabled or no longer exists.", code="account_disabled")
        principal = Principal(user_id=row.id, username=row.username, role=row.role,
                              user_limits=Limits.from_dict(row.limits))
        if self.cache.generation == generation:
            self.cache.users[user_id] = (principal, self.cache.deadline(principal))
        return principal


async def _keep_an_admin(session: AsyncSession, user_id: int) -> None:
    """Refuse to remove the last active admin: nobody could manage the server afterwards."""
    others = await session.scalar(select(func.count()).select_from(User).where(
        User.role == "admin", User.disabled_at.is_(None), User.id != user_id))
    if not others:
        raise Conflict("This is the last active admin; make another user admin first.")


async def _revoke_all(session: AsyncSession, user_id: int) -> list[str]:
    result = await session.execute(
        update(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), updated_at=func.now()).returning(ApiKey.key_hash))
    return list(result.scalars().all())
