"""JWT sign-in (PyJWT, HS256): short-lived access tokens and longer refresh tokens.

Tokens say who the user is; what the user may do (role, disabled) is read live from the user
cache on every request, so a demotion or a disabled account takes effect within a second
instead of when the token expires.

Refresh tokens rotate (OAuth 2.0 Security BCP, RFC 9700 4.14.2): each is recorded by its `jti`,
each use replaces it with a new one of the same family (one sign-in), and a replaced token
presented again after `REUSE_GRACE_S` means two parties hold it, so the whole family is revoked
and both must sign in again. The grace window lets a client's concurrent refreshes (two tabs,
a retried request) succeed. Signing out (`revoke`) ends the family at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaset.auth.principal import Principal, utc
from kaset.auth.users import UserInfo, UserStore
from kaset.errors import AuthenticationFailed, NotFound
from kaset.store.tables import RefreshToken

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
ISSUER = "kaset"
SECRET_FILE = "jwt_secret"
# HS256 wants a key at least as long as its 256-bit output (RFC 7518 3.2).
MIN_SECRET_BYTES = 32
MAX_TOKEN_CHARS = 4096
# How long a replaced refresh token may still be exchanged (concurrent refreshes of one client).
REUSE_GRACE_S = 30.0


def looks_like_jwt(credential: str) -> bool:
    """JWTs are three base64url parts and start with the encoded '{"': API keys have no dots."""
    return credential.startswith("eyJ") and credential.count(".") == 2


def load_secret(configured: str | None, data_dir: Path) -> str:
    """`KASET_JWT_SECRET`, else a secret generated once into <data_dir>/jwt_secret (mode 0600).

    Several gateway replicas must share one secret: set KASET_JWT_SECRET for them (or share the
    data directory).
    """
    if configured:
        if len(configured.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"KASET_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
        return configured
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once must not overwrite each other's secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); restricting it to 0600", path, mode)
            path.chmod(0o600)
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"{path} holds a secret shorter than {MIN_SECRET_BYTES} bytes; delete it to make "
                             "a new one (signed-in users will have to sign in again)") from None
        return secret
    secret = secrets.token_urlsafe(64)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    token_type: str = "bearer"


class TokenService:
    def __init__(self, secret: str | None, users: UserStore, access_ttl_s: int = 15 * 60,
                 refresh_ttl_s: int = 7 * 24 * 3600) -> None:
        self._secret = secret
        self.users = users
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s

    @property
    def secret(self) -> str:
        if self._secret is None:
            raise RuntimeError("sign-in tokens are not configured in this process")
        return self._secret

    async def issue(self, user: UserInfo, family: str | None = None) -> TokenPair:
        """A new pair; the refresh token joins `family` (a refresh) or starts one (a sign-in)."""
        now = int(time.time())
        common = {"iss": ISSUER, "sub": str(user.id), "iat": now}
        access = jwt.encode({**common, "typ": "access", "exp": now + self.access_ttl_s, "role": user.role,
                             "name": user.username}, self.secret, algorithm=ALGORITHM)
        jti = secrets.token_urlsafe(12)
        refresh = jwt.encode({**common, "typ": "refresh", "exp": now + self.refresh_ttl_s, "jti": jti},
                             self.secret, algorithm=ALGORITHM)
        issued = datetime.fromtimestamp(now, UTC)
        async with self.users.db.sessions() as session, session.begin():
            if family is None:  # a sign-in: also the moment to forget this user's expired tokens
                await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user.id,
                                                                 RefreshToken.expires_at < issued))
            session.add(RefreshToken(jti=jti, user_id=user.id, family=family or jti,
                                     expires_at=issued + timedelta(seconds=self.refresh_ttl_s)))
        return TokenPair(access, refresh, self.access_ttl_s, self.refresh_ttl_s)

    async def login(self, username: str, password: str) -> TokenPair:
        return await self.issue(await self.users.check_password(username, password))

    async def refresh(self, token: str) -> TokenPair:
        claims = self._claims(token, "refresh")
        family = await self._rotate(str(claims.get("jti") or ""))
        user_id = int(claims["sub"])
        # Fresh from the database: a refresh is rare and must not outlive a disabled account.
        try:
            user: UserInfo | None = await self.users.get(user_id)
        except NotFound:
            user = None
        if user is None or not user.active:
            raise AuthenticationFailed("This account is disabled or no longer exists.", code="account_disabled")
        return await self.issue(user, family)

    async def _rotate(self, jti: str) -> str:
        """Mark the token replaced and return its family, or refuse it (revoked, reused)."""
        now = datetime.now(UTC)
        reused = False
        async with self.users.db.sessions() as session, session.begin():
            row = await session.get(RefreshToken, jti, with_for_update=True) if jti else None
            if row is None or row.revoked_at is not None:
                raise AuthenticationFailed("This refresh token is no longer valid (signed out, or from before an "
                                           "upgrade); sign in again.", code="token_revoked")
            replaced = utc(row.replaced_at)
            if replaced is not None and (now - replaced).total_seconds() > REUSE_GRACE_S:
                reused = True
                await _revoke_family(session, row.family, now)
            elif replaced is None:
                row.replaced_at = now
            family = row.family
            user_id = row.user_id
        if reused:  # raised after the commit: the revocation must stick
            log.warning("refresh token reuse for user %s: every session of that sign-in is signed out", user_id)
            raise AuthenticationFailed(
                "This refresh token was already used, so it may have been copied: every session of this "
                "sign-in has been signed out. Sign in again.", code="token_reused")
        return family

    async def revoke(self, token: str) -> None:
        """Sign out: the token's whole family stops refreshing. An expired token is accepted (there
        is nothing left to end), a forged or malformed one is not."""
        claims = self._claims(token, "refresh", verify_exp=False)
        async with self.users.db.sessions() as session, session.begin():
            row = await session.get(RefreshToken, str(claims.get("jti") or ""))
            if row is not None:
                await _revoke_family(session, row.family, datetime.now(UTC))

    async def verify_access(self, token: str) -> Principal:
        return await self.users.principal(self._decode(token, "access"))

    def _decode(self, token: str, kind: str) -> int:
        return int(self._claims(token, kind)["sub"])

    def _claims(self, token: str, kind: str, verify_exp: bool = True) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationFailed("Malformed token: longer than any token this server issues.",
                                       code="invalid_token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM], issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "sub", "typ"], "verify_exp": verify_exp})
        except jwt.ExpiredSignatureError:
            hint = "POST /v1/auth/refresh with your refresh token" if kind == "access" else "sign in again"
            raise AuthenticationFailed(f"The {kind} token has expired; {hint}.", code="token_expired") from None
        except jwt.InvalidTokenError:
            raise AuthenticationFailed(f"Invalid {kind} token.", code="invalid_token") from None
        if claims.get("typ") != kind:
            raise AuthenticationFailed(f"This is a {claims.get('typ')} token; send the {kind} token here.",
                                       code="invalid_token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.isdigit():
            raise AuthenticationFailed(f"Invalid {kind} token.", code="invalid_token")
        return claims


async def _revoke_family(session: AsyncSession, family: str, now: datetime) -> None:
    """Every refresh token of one sign-in stops working."""
    await session.execute(update(RefreshToken).where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
                          .values(revoked_at=now))
