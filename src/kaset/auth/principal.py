"""Who is calling: the principal behind an API key or a JWT, and the actor named in the audit log."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kaset.quotas.policy import Limits

ROLES = ("admin", "developer", "consumer")
Role = Literal["admin", "developer", "consumer"]


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (its column has no time zone); every value Kaset writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Built once per credential and cached, so it is immutable."""

    user_id: int
    username: str
    role: str
    # The key used, or None for a signed-in user (JWT).
    key_id: int | None = None
    key_prefix: str = ""
    label: str = ""
    # Model ids/aliases the key may call; None means every model (always None for JWTs).
    allowed_models: frozenset[str] | None = None
    expires_at: datetime | None = None
    # The key's own limits and its owner's (None: the server's defaults; see kaset.quotas).
    limits: Limits | None = None
    user_limits: Limits | None = None

    @property
    def id(self) -> int | None:
        """The key's id (what `request.state.key.id` meant before users existed)."""
        return self.key_id

    @property
    def via(self) -> Literal["key", "jwt"]:
        return "jwt" if self.key_id is None else "key"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def actor(self, request_id: str | None = None) -> Actor:
        return Actor(self.username, user_id=self.user_id, key_id=self.key_id, request_id=request_id)

    def to_json(self) -> str:
        return json.dumps({
            "u": self.user_id, "n": self.username, "r": self.role, "k": self.key_id, "p": self.key_prefix,
            "l": self.label, "a": sorted(self.allowed_models) if self.allowed_models is not None else None,
            "e": self.expires_at.isoformat() if self.expires_at else None,
            "q": self.limits.to_dict() if self.limits is not None else None,
            "uq": self.user_limits.to_dict() if self.user_limits is not None else None,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Principal:
        data: dict[str, Any] = json.loads(text)
        allowed = data.get("a")
        expires = data.get("e")
        return cls(user_id=int(data["u"]), username=str(data["n"]), role=str(data["r"]),
                   key_id=None if data.get("k") is None else int(data["k"]), key_prefix=str(data.get("p", "")),
                   label=str(data.get("l", "")), allowed_models=frozenset(allowed) if allowed is not None else None,
                   expires_at=datetime.fromisoformat(expires) if expires else None,
                   limits=Limits.from_dict(data.get("q")), user_limits=Limits.from_dict(data.get("uq")))


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performed an administrative action, as written to the audit log."""

    name: str
    user_id: int | None = None
    key_id: int | None = None
    request_id: str | None = None

    @classmethod
    def system(cls, what: str) -> Actor:
        return cls(f"system:{what}")

    @classmethod
    def cli(cls) -> Actor:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers)
            who = "unknown"
        return cls(f"cli:{who}")
