"""JWT sign-in (PyJWT, HS256): short-lived access tokens and longer refresh tokens.

Tokens say who the user is; what the user may do (role, disabled) is read live from the user
cache on every request, so a demotion or a disabled account takes effect within a second
instead of when the token expires.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from kaset.auth.principal import Principal
from kaset.auth.users import UserInfo, UserStore
from kaset.errors import AuthenticationFailed, NotFound

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
ISSUER = "kaset"
SECRET_FILE = "jwt_secret"
# HS256 wants a key at least as long as its 256-bit output (RFC 7518 3.2).
MIN_SECRET_BYTES = 32
MAX_TOKEN_CHARS = 4096


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

    def issue(self, user: UserInfo) -> TokenPair:
        now = int(time.time())
        common = {"iss": ISSUER, "sub": str(user.id), "iat": now}
        access = jwt.encode({**common, "typ": "access", "exp": now + self.access_ttl_s, "role": user.role,
                             "name": user.username}, self.secret, algorithm=ALGORITHM)
        refresh = jwt.encode({**common, "typ": "refresh", "exp": now + self.refresh_ttl_s,
                              "jti": secrets.token_urlsafe(12)}, self.secret, algorithm=ALGORITHM)
        return TokenPair(access, refresh, self.access_ttl_s, self.refresh_ttl_s)

    async def login(self, username: str, password: str) -> TokenPair:
        return self.issue(await self.users.check_password(username, password))

    async def refresh(self, token: str) -> TokenPair:
        user_id = self._decode(token, "refresh")
        # Fresh from the database: a refresh is rare and must not outlive a disabled account.
        try:
            user: UserInfo | None = await self.users.get(user_id)
        except NotFound:
            user = None
        if user is None or not user.active:
            raise AuthenticationFailed("This account is disabled or no longer exists.", code="account_disabled")
        return self.issue(user)

    async def verify_access(self, token: str) -> Principal:
        return await self.users.principal(self._decode(token, "access"))

    def _decode(self, token: str, kind: str) -> int:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationFailed("Malformed token: longer than any token this server issues.",
                                       code="invalid_token")
        try:
            claims = jwt.decode(token, self.secret, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "iss", "sub", "typ"]})
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
        return int(sub)
