"""Identity administration: users and keys (admin role), a developer's own keys, the audit log.

Every change is written to the audit log in the same transaction (kaset.auth.audit), with the
acting user, key and request id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Query, Request, Response

from kaset.api.deps import (
    AdminDep,
    DatabaseDep,
    IdentityDep,
    KeyManagerDep,
    request_id,
    require_admin,
    require_key_manager,
)
from kaset.api.policy import PLAIN, apply_policy
from kaset.api.responses import json_response
from kaset.api.schemas.admin import (
    AuditList,
    AuditObject,
    CreatedKey,
    CreateKey,
    CreateOwnKey,
    CreateUser,
    KeyList,
    KeyObject,
    UpdateKey,
    UpdateUser,
    UserList,
    UserObject,
)
from kaset.auth import audit
from kaset.auth.identity import Identity
from kaset.auth.principal import Actor, Principal
from kaset.errors import InvalidRequest
from kaset.quotas.policy import Limits, LimitsModel

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
own_keys = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_key_manager)])


def _actor(request: Request, principal: Principal) -> Actor:
    return principal.actor(request_id(request))


def _expiry(body: CreateOwnKey) -> datetime | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise InvalidRequest("Give expires_in or expires_at, not both.", param="expires_in")
    if body.expires_in is not None:
        return datetime.now(UTC) + timedelta(seconds=body.expires_in)
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise InvalidRequest("expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z).", param="expires_at")
    return body.expires_at


def _limits(model: LimitsModel | None) -> Limits | None:
    limits = model.to_limits() if model is not None else None
    return None if limits is None or limits.empty else limits


async def _create_key(identity: Identity, actor: Actor, user_id: int, body: CreateOwnKey) -> Response:
    key, info = await identity.keys.create(user_id, actor=actor, label=body.label,
                                           allowed_models=body.allowed_models, expires_at=_expiry(body),
                                           limits=_limits(body.limits))
    created = CreatedKey(**KeyObject.of(info).model_dump(), key=key)
    return json_response(created, status_code=201, headers={"Cache-Control": "no-store"})


# --- users ------------------------------------------------------------------------------------


@router.get("/users", response_model=UserList)
async def list_users(identity: IdentityDep, include_disabled: bool = False) -> UserList:
    return UserList(data=[UserObject.of(u) for u in await identity.users.list(include_disabled)])


@router.post("/users", response_model=UserObject, status_code=201)
async def create_user(body: CreateUser, request: Request, principal: AdminDep, identity: IdentityDep) -> UserObject:
    user = await identity.users.create(body.username, body.role, password=body.password,
                                       limits=_limits(body.limits), actor=_actor(request, principal))
    return UserObject.of(user)


@router.get("/users/{user_id}", response_model=UserObject)
async def get_user(user_id: int, identity: IdentityDep) -> UserObject:
    return UserObject.of(await identity.users.get(user_id))


@router.patch("/users/{user_id}", response_model=UserObject)
async def update_user(user_id: int, body: UpdateUser, request: Request, principal: AdminDep,
                      identity: IdentityDep) -> UserObject:
    user = await identity.users.update(user_id, role=body.role, password=body.password, disabled=body.disabled,
                                       set_limits="limits" in body.model_fields_set, limits=_limits(body.limits),
                                       actor=_actor(request, principal))
    return UserObject.of(user)


@router.delete("/users/{user_id}", response_model=UserObject)
async def delete_user(user_id: int, request: Request, principal: AdminDep, identity: IdentityDep) -> UserObject:
    """Disable the user and revoke all their keys (the record stays, for the audit trail)."""
    return UserObject.of(await identity.users.delete(user_id, actor=_actor(request, principal)))


# --- keys -------------------------------------------------------------------------------------


@router.get("/keys", response_model=KeyList)
async def list_keys(identity: IdentityDep, user_id: int | None = None, include_revoked: bool = False) -> KeyList:
    return KeyList(data=[KeyObject.of(k) for k in await identity.keys.list(user_id, include_revoked)])


@router.post("/keys", response_model=CreatedKey, status_code=201)
async def create_key(body: CreateKey, request: Request, principal: AdminDep, identity: IdentityDep) -> Response:
    """Create a key for a user (by user_id or username). The key is in this response only."""
    if (body.user_id is None) == (body.username is None):
        raise InvalidRequest("Give the owner as user_id or username (one of them).", param="user_id")
    user_id = body.user_id if body.user_id is not None else (
        await identity.users.by_username(body.username or "")).id
    return await _create_key(identity, _actor(request, principal), user_id, body)


@router.get("/keys/{key_id}", response_model=KeyObject)
async def get_key(key_id: int, identity: IdentityDep) -> KeyObject:
    return KeyObject.of(await identity.keys.get(key_id))


@router.patch("/keys/{key_id}", response_model=KeyObject)
async def update_key(key_id: int, body: UpdateKey, request: Request, principal: AdminDep,
                     identity: IdentityDep) -> KeyObject:
    """Set a key's limits; every gateway replica applies them within a second."""
    info = await identity.keys.set_limits(key_id, _limits(body.limits), actor=_actor(request, principal))
    return KeyObject.of(info)


@router.delete("/keys/{key_id}", response_model=KeyObject)
async def revoke_key(key_id: int, request: Request, principal: AdminDep, identity: IdentityDep) -> KeyObject:
    """Revoke a key; every gateway replica refuses it within a second."""
    return KeyObject.of(await identity.keys.revoke(key_id, actor=_actor(request, principal)))


# --- audit ------------------------------------------------------------------------------------


@router.get("/audit", response_model=AuditList)
async def audit_log(db: DatabaseDep, limit: int = Query(100, ge=1, le=1000), before_id: int | None = None,
                    action: str | None = None, actor_user_id: int | None = None) -> AuditList:
    """Newest first; for the next page pass the smallest id seen as before_id."""
    rows = await audit.entries(db, limit=limit, before_id=before_id, action=action, actor_user_id=actor_user_id)
    return AuditList(data=[AuditObject.of(r) for r in rows])


# --- a developer's own keys ---------------------------------------------------------------------


@own_keys.get("", response_model=KeyList)
async def list_own_keys(principal: KeyManagerDep, identity: IdentityDep, include_revoked: bool = False) -> KeyList:
    return KeyList(data=[KeyObject.of(k) for k in await identity.keys.list(principal.user_id, include_revoked)])


@own_keys.post("", response_model=CreatedKey, status_code=201)
async def create_own_key(body: CreateOwnKey, request: Request, principal: KeyManagerDep,
                         identity: IdentityDep) -> Response:
    """A new key for yourself. The key is in this response only."""
    return await _create_key(identity, _actor(request, principal), principal.user_id, body)


@own_keys.patch("/{key_id}", response_model=KeyObject)
async def update_own_key(key_id: int, body: UpdateKey, request: Request, principal: KeyManagerDep,
                         identity: IdentityDep) -> KeyObject:
    """Set limits on one of your keys (your account's own limits still apply on top)."""
    info = await identity.keys.set_limits(key_id, _limits(body.limits), owner_id=principal.user_id,
                                          actor=_actor(request, principal))
    return KeyObject.of(info)


@own_keys.delete("/{key_id}", response_model=KeyObject)
async def revoke_own_key(key_id: int, request: Request, principal: KeyManagerDep,
                         identity: IdentityDep) -> KeyObject:
    """Revoke one of your keys (another user's key is 'not found', so ids reveal nothing)."""
    info = await identity.keys.revoke(key_id, owner_id=principal.user_id, actor=_actor(request, principal))
    return KeyObject.of(info)


apply_policy(router, PLAIN)


apply_policy(own_keys, PLAIN)
