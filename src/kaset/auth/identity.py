"""Identity: users, their API keys, JWT sign-in and the shared credential cache, wired together."""

from __future__ import annotations

import logging

from kaset.auth.cache import AuthCache
from kaset.auth.keys import MAX_KEY_CHARS, KeyStore
from kaset.auth.principal import Actor, Principal
from kaset.auth.tokens import SECRET_FILE, TokenService, load_secret, looks_like_jwt
from kaset.auth.users import UserStore
from kaset.config import Settings
from kaset.errors import AuthenticationFailed, Conflict
from kaset.store.db import Database

log = logging.getLogger(__name__)

BOOTSTRAP_USER = "admin"


class Identity:
    def __init__(self, db: Database, *, jwt_secret: str | None, cache_ttl_s: float = 300.0,
                 redis_url: str | None = None, redis_prefix: str = "kaset:auth:", access_ttl_s: int = 15 * 60,
                 refresh_ttl_s: int = 7 * 24 * 3600, poll_interval_s: float = 0.5) -> None:
        self.db = db
        self.cache = AuthCache(cache_ttl_s, redis_url=redis_url, prefix=redis_prefix)
        self.keys = KeyStore(db, cache=self.cache)
        self.users = UserStore(db, self.cache)
        self.tokens = TokenService(jwt_secret, self.users, access_ttl_s=access_ttl_s, refresh_ttl_s=refresh_ttl_s)
        self.poll_interval_s = poll_interval_s

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, sign_in: bool = True) -> Identity:
        """`sign_in=False` (the CLI): no token service, so no secret file is created as a side effect."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        shared = settings.redis_url or not settings.resolved_database_url.startswith("sqlite")
        if sign_in and secret is None and shared:
            # A shared database or Redis suggests several replicas; each would sign with its own file.
            log.warning("KASET_JWT_SECRET is not set: this replica signs tokens with %s; other replicas will "
                        "refuse them unless they share it", settings.data_dir / SECRET_FILE)
        return cls(db, jwt_secret=load_secret(secret, settings.data_dir) if sign_in else None,
                   cache_ttl_s=settings.key_cache_ttl_s, redis_url=settings.redis_url,
                   redis_prefix=settings.redis_prefix + "auth:",
                   access_ttl_s=settings.access_token_ttl_s, refresh_ttl_s=settings.refresh_token_ttl_s,
                   poll_interval_s=settings.auth_poll_interval_s)

    def start(self) -> None:
        """Background invalidation for a serving process (Redis listener, database poll)."""
        self.cache.start(self.db, self.poll_interval_s)

    async def close(self) -> None:
        await self.cache.close()

    async def authenticate(self, credential: str) -> Principal:
        """A bearer credential: a JWT (by its shape) or an API key."""
        if looks_like_jwt(credential):
            return await self.tokens.verify_access(credential)
        if len(credential) > MAX_KEY_CHARS:
            raise AuthenticationFailed("Malformed API key: longer than any key this server issues.")
        return await self.keys.verify(credential)

    async def bootstrap_admin(self, preset_key: str | None = None) -> str | None:
        """On a database with no users and no keys: create the 'admin' user and an admin key.

        Returns the new key when it was generated here (to show once), None otherwise.
        """
        if await self.users.count() > 0 or await self.keys.count() > 0:
            return None
        actor = Actor.system("bootstrap")
        try:
            user = await self.users.create(BOOTSTRAP_USER, "admin", actor=actor)
        except Conflict:
            # Another replica starting on the same database got there first.
            if await self.users.count() > 0:
                return None
            raise
        key, _ = await self.keys.create(user.id, actor=actor, label="admin (first start)", key=preset_key or None)
        return None if preset_key else key
