"""JWT sign-in: tokens, expiry, refresh, wrong types, tampering; password hashing; the secret file."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest
from sqlalchemy import func, select

from kaset.auth import tokens as tokens_module
from kaset.auth.identity import Identity
from kaset.auth.passwords import hash_password, verify_password
from kaset.auth.tokens import ALGORITHM, ISSUER, load_secret
from kaset.errors import AuthenticationFailed, InvalidRequest
from kaset.store.tables import RefreshToken
from tests.auth.conftest import ACTOR, SECRET


async def _signed_in(identity: Identity, role: str = "developer") -> tuple[int, str, str]:
    user = await identity.users.create("ivy", role, actor=ACTOR, password="s3cret-passphrase")
    pair = await identity.tokens.login("Ivy", "s3cret-passphrase")  # usernames are case-insensitive
    assert pair.expires_in == 15 * 60 and pair.refresh_expires_in == 7 * 24 * 3600
    return user.id, pair.access_token, pair.refresh_token


def _forge(claims: dict[str, object], secret: str = SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "iat": now, "exp": now + 60, **claims}, secret, algorithm=ALGORITHM)


async def test_access_token_authenticates_with_live_role(identity: Identity) -> None:
    await identity.users.create("root", "admin", actor=ACTOR)
    user_id, access, _ = await _signed_in(identity)
    principal = await identity.authenticate(access)
    assert (principal.user_id, principal.role, principal.via, principal.key_id) == (user_id, "developer", "jwt", None)
    await identity.users.update(user_id, role="consumer", actor=ACTOR)
    assert (await identity.authenticate(access)).role == "consumer"  # not the role written in the token
    await identity.users.update(user_id, disabled=True, actor=ACTOR)
    with pytest.raises(AuthenticationFailed, match="disabled"):
        await identity.authenticate(access)


async def test_wrong_password_and_unknown_user_get_the_same_answer(identity: Identity) -> None:
    await _signed_in(identity)
    messages = set()
    for username, password in (("ivy", "wrong-password"), ("nobody", "s3cret-passphrase"), ("ivy", "")):
        with pytest.raises(AuthenticationFailed) as caught:
            await identity.tokens.login(username, password)
        messages.add(caught.value.message)
    assert messages == {"Incorrect username or password."}
    await identity.users.create("keyonly", "consumer", actor=ACTOR)  # no password: cannot sign in
    with pytest.raises(AuthenticationFailed):
        await identity.tokens.login("keyonly", "")


async def test_expired_access_token_says_to_refresh(identity: Identity) -> None:
    user_id, _, _ = await _signed_in(identity)
    expired = _forge({"sub": str(user_id), "typ": "access", "exp": int(time.time()) - 1})
    with pytest.raises(AuthenticationFailed, match="refresh") as caught:
        await identity.authenticate(expired)
    assert caught.value.code == "token_expired"


async def test_refresh_issues_new_tokens_and_types_are_not_interchangeable(identity: Identity) -> None:
    user_id, access, refresh = await _signed_in(identity)
    pair = await identity.tokens.refresh(refresh)
    assert (await identity.authenticate(pair.access_token)).user_id == user_id
    with pytest.raises(AuthenticationFailed, match="refresh token"):
        await identity.authenticate(refresh)  # a refresh token is not an access token
    with pytest.raises(AuthenticationFailed, match="access token"):
        await identity.tokens.refresh(access)
    expired = _forge({"sub": str(user_id), "typ": "refresh", "exp": int(time.time()) - 1})
    with pytest.raises(AuthenticationFailed, match="sign in again"):
        await identity.tokens.refresh(expired)


async def test_refresh_rotates_and_a_reused_token_signs_out_its_whole_sign_in(
        identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, first = await _signed_in(identity)
    other = (await identity.tokens.login("ivy", "s3cret-passphrase")).refresh_token  # another device
    second = (await identity.tokens.refresh(first)).refresh_token
    assert second != first
    # Within the grace window the replaced token still works (two tabs refreshing at once).
    third = (await identity.tokens.refresh(first)).refresh_token
    monkeypatch.setattr(tokens_module, "REUSE_GRACE_S", 0.0)
    with pytest.raises(AuthenticationFailed, match="already used") as caught:
        await identity.tokens.refresh(first)  # replaced, used again: copied by someone
    assert caught.value.code == "token_reused"
    for descendant in (second, third):
        with pytest.raises(AuthenticationFailed, match="sign in again") as revoked:
            await identity.tokens.refresh(descendant)
        assert revoked.value.code == "token_revoked"
    # The other sign-in (its own family) is untouched.
    assert (await identity.tokens.refresh(other)).access_token


async def test_sign_out_ends_the_sign_in(identity: Identity) -> None:
    user_id, _, first = await _signed_in(identity)
    second = (await identity.tokens.refresh(first)).refresh_token
    await identity.tokens.revoke(first)  # any token of the sign-in ends all of it
    with pytest.raises(AuthenticationFailed) as caught:
        await identity.tokens.refresh(second)
    assert caught.value.code == "token_revoked"
    # An expired token can still sign out (nothing to do); a forged one cannot.
    await identity.tokens.revoke(_forge({"sub": str(user_id), "typ": "refresh", "exp": int(time.time()) - 5,
                                         "jti": "gone"}))
    with pytest.raises(AuthenticationFailed):
        await identity.tokens.revoke(_forge({"sub": str(user_id), "typ": "refresh"}, secret="y" * 64))


async def test_a_refresh_token_the_server_never_recorded_is_refused(identity: Identity) -> None:
    user_id, _, _ = await _signed_in(identity)
    # Validly signed, but not in the table: issued before rotation existed, or made with a leaked secret.
    unknown = _forge({"sub": str(user_id), "typ": "refresh", "jti": "never-issued"})
    with pytest.raises(AuthenticationFailed) as caught:
        await identity.tokens.refresh(unknown)
    assert caught.value.code == "token_revoked"


async def test_expired_refresh_tokens_are_forgotten_at_the_next_sign_in(identity: Identity) -> None:
    user_id, _, _ = await _signed_in(identity)
    identity.tokens.refresh_ttl_s = -1  # the next one is born expired
    await identity.tokens.login("ivy", "s3cret-passphrase")
    identity.tokens.refresh_ttl_s = 3600
    await identity.tokens.login("ivy", "s3cret-passphrase")
    async with identity.users.db.sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(RefreshToken)
                                    .where(RefreshToken.user_id == user_id))
    assert rows == 2  # the first sign-in's token and the last one; the expired one is gone


async def test_refresh_is_refused_for_a_disabled_user(identity: Identity) -> None:
    await identity.users.create("root", "admin", actor=ACTOR)
    user_id, _, refresh = await _signed_in(identity)
    await identity.users.delete(user_id, actor=ACTOR)
    with pytest.raises(AuthenticationFailed, match="disabled"):
        await identity.tokens.refresh(refresh)


async def test_forged_tampered_and_malformed_tokens_are_refused(identity: Identity) -> None:
    user_id, access, _ = await _signed_in(identity, role="consumer")
    header, payload, signature = access.split(".")
    as_admin = _forge({"sub": str(user_id), "typ": "access", "role": "admin"}, secret="x" * 64)
    unsigned = jwt.encode({"iss": ISSUER, "sub": str(user_id), "typ": "access", "iat": 0, "exp": 2**40},
                          key=None, algorithm="none")  # type: ignore[arg-type]
    bad = [
        as_admin,                                     # signed with another secret
        unsigned,                                     # alg=none
        f"{header}.{payload}.{signature[::-1]}",      # tampered signature
        f"{header}.{payload[:-4]}AAAA.{signature}",   # tampered payload
        "eyJ.eyJ.x", "eyJhbGciOiJIUzI1NiJ9.' OR 1=1 --.x",
        _forge({"typ": "access"}),                    # no subject
        _forge({"sub": "1 OR 1=1", "typ": "access"}),
        _forge({"sub": str(user_id), "typ": "access", "iss": "someone-else"}),
        "eyJ" + "A" * 5000 + ".a.b",                  # oversized
    ]
    for token in bad:
        with pytest.raises(AuthenticationFailed):
            await identity.authenticate(token)


async def test_password_policy_and_hashing(identity: Identity) -> None:
    with pytest.raises(InvalidRequest, match="at least 8"):
        await identity.users.create("short", "consumer", actor=ACTOR, password="1234567")
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapl", stored)
    assert not verify_password("anything", None)
    assert not verify_password("anything", "scrypt$not$a$hash")
    assert hash_password("same") != hash_password("same")  # salted


def test_secret_file_is_created_once_with_0600(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path)
    path = tmp_path / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 64
    assert load_secret(None, tmp_path) == first
    path.chmod(0o644)
    assert load_secret(None, tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret("y" * 40, tmp_path) == "y" * 40
    with pytest.raises(ValueError, match="at least 32"):
        load_secret("too-short", tmp_path)
