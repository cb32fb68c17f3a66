"""Identity API types: sign-in tokens, users, API keys, audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kaset.auth.audit import AuditRecord
from kaset.auth.keys import KeyInfo
from kaset.auth.users import UserInfo
from kaset.quotas.policy import LimitsModel

RoleName = Literal["admin", "developer", "consumer"]
# A week short of ten years: "never" is what null is for.
MAX_EXPIRES_IN_S = 3650 * 24 * 3600

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- sign-in ----------------------------------------------------------------------------------


class TokenRequest(_Strict):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)
    # OAuth2's password grant sends it; accepted so OAuth2 clients (and /docs) work unchanged.
    grant_type: Literal["password"] | None = None


class RefreshRequest(_Strict):
    refresh_token: str = Field(min_length=1, max_length=4096)
    grant_type: Literal["refresh_token"] | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str
    refresh_expires_in: int = Field(description="Seconds the refresh token is valid.")


# --- users ------------------------------------------------------------------------------------


class UserObject(BaseModel):
    id: int
    object: Literal["user"] = "user"
    username: str
    role: str
    has_password: bool
    active: bool
    created_at: datetime | None
    disabled_at: datetime | None
    limits: LimitsModel | None = Field(default=None, description="Requests per minute, concurrent requests and "
                                       "daily budgets; null: the server's defaults.")

    @classmethod
    def of(cls, user: UserInfo) -> UserObject:
        return cls(id=user.id, username=user.username, role=user.role, has_password=user.has_password,
                   active=user.active, created_at=user.created_at, disabled_at=user.disabled_at,
                   limits=LimitsModel.of(user.limits))


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UserObject]


class CreateUser(_Strict):
    username: str = Field(min_length=1, max_length=100)
    role: RoleName = "consumer"
    password: str | None = Field(default=None, min_length=1, max_length=1024,
                                 description="Needed only to sign in for tokens; API keys work without one.")
    limits: LimitsModel | None = Field(default=None, description="Requests per minute, concurrent requests and "
                                       "daily budgets; null: the server's defaults.")


class UpdateUser(_Strict):
    role: RoleName | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    disabled: bool | None = Field(default=None, description="true disables the user and revokes their keys.")
    limits: LimitsModel | None = Field(default=None, description="Replaces the user's limits; null: back to the "
                                       "server's defaults; absent: unchanged.")


# --- keys -------------------------------------------------------------------------------------


class KeyObject(BaseModel):
    id: int
    object: Literal["api_key"] = "api_key"
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    label: str
    user_id: int
    username: str
    role: str
    allowed_models: list[str] | None = Field(description="null: every model.")
    expires_at: datetime | None
    created_at: datetime | None
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]
    limits: LimitsModel | None = Field(default=None, description="Requests per minute, concurrent requests and "
                                       "daily budgets; null: the server's defaults.")

    @classmethod
    def of(cls, info: KeyInfo) -> KeyObject:
        return cls(id=info.id, prefix=info.prefix, label=info.label, user_id=info.user_id, username=info.username,
                   role=info.role, allowed_models=info.allowed_models, expires_at=info.expires_at,
                   created_at=info.created_at, revoked_at=info.revoked_at, status=info.status,
                   limits=LimitsModel.of(info.limits))


class CreatedKey(KeyObject):
    key: str = Field(description="The API key. Shown only in this response; it is stored hashed.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


class CreateOwnKey(_Strict):
    label: str = Field(default="", max_length=200)
    allowed_models: list[str] | None = Field(default=None, max_length=100,
                                             description="Model ids or aliases; null (default) allows every model.")
    expires_in: int | None = Field(default=None, gt=0, le=MAX_EXPIRES_IN_S, description="Seconds from now.")
    expires_at: datetime | None = Field(default=None, description="Alternative to expires_in.")
    limits: LimitsModel | None = Field(default=None, description="Requests per minute, concurrent requests and "
                                       "daily budgets; null: the server's defaults.")


class CreateKey(CreateOwnKey):
    user_id: int | None = Field(default=None, description="The owner; or give username.")
    username: str | None = None


class UpdateKey(_Strict):
    limits: LimitsModel | None = Field(description="Replaces the key's limits; null: back to the server's defaults.")


# --- audit ------------------------------------------------------------------------------------


class AuditObject(BaseModel):
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

    @classmethod
    def of(cls, entry: AuditRecord) -> AuditObject:
        return cls(**entry.__dict__)


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditObject]
