"""Password hashing with the standard library's scrypt (memory-hard; no extra dependency).

argon2-cffi is not installed in this environment and PyPI's other options add nothing over
hashlib.scrypt for a gateway's handful of human users. Parameters are stored with each hash, so
they can be raised later without invalidating existing passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# n=2**14, r=8: 16 MiB and ~50 ms per hash on this hardware, OWASP's scrypt floor. Login is rare;
# the request path never hashes a password (keys use sha256, tokens HMAC).
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
MIN_LENGTH = 8
MAX_LENGTH = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check. A missing or unreadable hash still costs one scrypt, so response time
    does not tell an attacker whether the username exists or has a password."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = (stored or "").split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        params = int(n), int(r), int(p)
    except ValueError:
        hashlib.scrypt(password.encode("utf-8"), salt=b"\0" * 16, n=_N, r=_R, p=_P, dklen=_DKLEN)
        return False
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params[0], r=params[1], p=params[2],
                            dklen=len(expected), maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(digest, expected)


def check_policy(password: str) -> str | None:
    """Why the password is unacceptable, or None."""
    if len(password) < MIN_LENGTH:
        return f"The password must be at least {MIN_LENGTH} characters long."
    if len(password) > MAX_LENGTH:
        return f"The password must be at most {MAX_LENGTH} characters long."
    return None
