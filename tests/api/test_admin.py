"""Identity over HTTP: admin API, own keys, sign-in tokens, allowlists, bad credentials, audit log.

A small gateway of its own (only the `echo` model, real SQLite, real auth) so these tests need
no model files and start in a second.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from kaset.app import create_app
from kaset.auth.tokens import ALGORITHM, ISSUER
from kaset.cli import app as cli_app
from kaset.config import Settings
from tests.fixtures.gateway import CHAT, Gateway, error_of, gw

__all__ = ["gw"]

# --- users and roles ----------------------------------------------------------------------------


def test_admin_manages_users(gw: Gateway) -> None:
    dev = gw.user("developer")
    assert (dev["role"], dev["active"], dev["has_password"]) == ("developer", True, False)
    assert dev["username"] in [u["username"] for u in gw.admin("GET", "/v1/admin/users").json()["data"]]
    response = gw.admin("POST", "/v1/admin/users", json={"username": dev["username"].upper(), "role": "consumer"})
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"
    assert gw.admin("POST", "/v1/admin/users", json={"username": "x", "role": "root"}).status_code == 422
    assert gw.admin("POST", "/v1/admin/users", json={"username": "bad name!", "role": "consumer"}).status_code == 400
    patched = gw.admin("PATCH", f"/v1/admin/users/{dev['id']}", json={"role": "consumer", "password": "pass-word-1"})
    assert patched.status_code == 200 and patched.json()["role"] == "consumer" and patched.json()["has_password"]
    assert gw.admin("GET", "/v1/admin/users/999999").status_code == 404


def test_the_last_admin_cannot_be_removed(gw: Gateway) -> None:
    me = gw.call("GET", "/v1/admin/users", gw.admin_key).json()["data"][0]
    assert me["username"] == "admin"
    response = gw.admin("DELETE", f"/v1/admin/users/{me['id']}")
    assert response.status_code == 409 and "last active admin" in error_of(response)["message"]
    assert gw.admin("PATCH", f"/v1/admin/users/{me['id']}", json={"role": "developer"}).status_code == 409


@pytest.mark.parametrize("role", ["developer", "consumer"])
def test_admin_routes_refuse_other_roles(gw: Gateway, role: str) -> None:
    user = gw.user(role, password="pass-word-1")
    key = gw.key(user["id"])["key"]
    token = gw.sign_in(user["username"], "pass-word-1")["access_token"]
    for credential in (key, token):
        for method, path in (("GET", "/v1/admin/users"), ("POST", "/v1/admin/users"), ("GET", "/v1/admin/keys"),
                             ("DELETE", "/v1/admin/keys/1"), ("PATCH", f"/v1/admin/users/{user['id']}"),
                             ("GET", "/v1/admin/audit")):
            response = gw.call(method, path, credential, json={"role": "admin"})
            assert response.status_code == 403, (method, path, response.text)
            assert error_of(response)["code"] == "insufficient_role"
        own = gw.call("GET", "/v1/keys", credential)
        assert own.status_code == (200 if role == "developer" else 403)
        assert gw.chat(credential).status_code == 200  # every role may call models


def test_admin_routes_need_credentials(gw: Gateway) -> None:
    for path in ("/v1/admin/users", "/v1/admin/keys", "/v1/keys"):
        response = gw.call("GET", path)
        assert response.status_code == 401 and error_of(response)["code"] == "missing_api_key"


# --- keys -------------------------------------------------------------------------------------


def test_key_lifecycle_through_the_admin_api(gw: Gateway) -> None:
    consumer = gw.user("consumer")
    created = gw.key(consumer["id"], label="field tablet", allowed_models=["echo"], expires_in=3600)
    assert created["key"].startswith("ksk-") and created["status"] == "active"
    assert created["allowed_models"] == ["echo"] and created["label"] == "field tablet"
    listed = gw.admin("GET", f"/v1/admin/keys?user_id={consumer['id']}").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    assert gw.chat(created["key"]).status_code == 200
    revoked = gw.admin("DELETE", f"/v1/admin/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    response = gw.chat(created["key"])
    assert response.status_code == 401 and error_of(response)["code"] == "api_key_revoked"
    assert gw.admin("DELETE", f"/v1/admin/keys/{created['id']}").status_code == 404
    by_name = gw.admin("POST", "/v1/admin/keys", json={"username": consumer["username"]})
    assert by_name.status_code == 201 and by_name.json()["user_id"] == consumer["id"]
    both = gw.admin("POST", "/v1/admin/keys", json={"user_id": consumer["id"], "username": "x"})
    assert both.status_code == 400
    twice = gw.admin("POST", "/v1/admin/keys", json={"user_id": consumer["id"], "expires_in": 60,
                                                      "expires_at": "2030-01-01T00:00:00Z"})
    assert twice.status_code == 400


def test_expired_key_is_refused_with_a_clear_message(gw: Gateway) -> None:
    user = gw.user("consumer")
    key = gw.key(user["id"], expires_in=1)["key"]
    assert gw.chat(key).status_code == 200
    time.sleep(1.1)
    response = gw.chat(key)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "api_key_expired" and "expired on" in error["message"]


def test_developer_manages_only_own_keys(gw: Gateway) -> None:
    dev = gw.user("developer")
    dev_key = gw.key(dev["id"])["key"]
    other = gw.key(gw.user("developer")["id"])
    mine = gw.call("POST", "/v1/keys", dev_key, json={"label": "ci", "allowed_models": ["echo"], "expires_in": 600})
    assert mine.status_code == 201 and mine.json()["user_id"] == dev["id"]
    assert gw.call("POST", "/v1/keys", dev_key, json={"user_id": other["user_id"]}).status_code == 422
    ids = {k["id"] for k in gw.call("GET", "/v1/keys", dev_key).json()["data"]}
    assert mine.json()["id"] in ids and other["id"] not in ids
    assert gw.call("DELETE", f"/v1/keys/{other['id']}", dev_key).status_code == 404
    assert gw.chat(other["key"]).status_code == 200
    assert gw.call("DELETE", f"/v1/keys/{mine.json()['id']}", dev_key).status_code == 200
    assert gw.chat(mine.json()["key"]).status_code == 401


def test_deleting_a_user_revokes_their_keys_and_tokens(gw: Gateway) -> None:
    user = gw.user("developer", password="pass-word-1")
    key = gw.key(user["id"])["key"]
    tokens = gw.sign_in(user["username"], "pass-word-1")
    assert gw.chat(key).status_code == 200 and gw.chat(tokens["access_token"]).status_code == 200
    deleted = gw.admin("DELETE", f"/v1/admin/users/{user['id']}")
    assert deleted.status_code == 200 and not deleted.json()["active"]
    assert gw.chat(key).status_code == 401
    assert gw.chat(tokens["access_token"]).status_code == 401
    assert gw.call("POST", "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert gw.call("POST", "/v1/auth/token",
                   json={"username": user["username"], "password": "pass-word-1"}).status_code == 401


# --- model allowlists -----------------------------------------------------------------------------


def test_allowlist_403_names_the_model(gw: Gateway) -> None:
    key = gw.key(gw.user("consumer")["id"], allowed_models=["echo"])["key"]
    assert gw.chat(key).status_code == 200
    for method, path, kwargs in (
        ("POST", "/v1/chat/completions", {"json": {**CHAT, "model": "smollm2-135m"}}),
        ("POST", "/v1/embeddings", {"json": {"model": "e5-small", "input": "rice"}}),
        ("POST", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", b"RIFF")},
                                              "data": {"model": "whisper-1"}}),
        ("GET", "/v1/models/whisper-1", {}),
        ("GET", "/v2/models/efficientnet-lite0", {}),
        ("POST", "/v2/models/efficientnet-lite0/infer", {"content": b"\x00binary"}),
    ):
        response = gw.call(method, path, key, **kwargs)
        assert response.status_code == 403, (path, response.text)
        error = error_of(response)
        assert error["code"] == "model_not_allowed" and error["param"] == "model"
        assert "may use: echo" in error["message"]
    assert gw.call("POST", "/v1/embeddings", key, json={"model": "echo", "input": "rice"}).status_code == 200


def test_model_list_shows_only_what_a_key_may_call(gw: Gateway) -> None:
    key = gw.key(gw.user("consumer")["id"], allowed_models=["echo"])["key"]
    listed = {m["id"] for m in gw.call("GET", "/v1/models", key).json()["data"]}
    assert listed == {"echo"}
    everything = {m["id"] for m in gw.admin("GET", "/v1/models").json()["data"]}
    assert "echo" in everything and len(everything) > 1, everything  # espeak-ng, apertium (system engines)


# --- sign-in tokens -------------------------------------------------------------------------------


def test_tokens_work_wherever_a_key_does_and_refresh(gw: Gateway) -> None:
    user = gw.user("developer", password="pass-word-1")
    tokens = gw.sign_in(user["username"].upper(), "pass-word-1")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    assert tokens["refresh_expires_in"] == 7 * 24 * 3600
    assert gw.chat(tokens["access_token"]).json()["choices"][0]["message"]["content"].endswith("hello rice")
    assert gw.call("GET", "/v1/keys", tokens["access_token"]).status_code == 200
    refreshed = gw.call("POST", "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.headers["cache-control"] == "no-store"
    assert gw.chat(refreshed.json()["access_token"]).status_code == 200
    # A refresh token is not an access token, and the other way round.
    assert gw.chat(tokens["refresh_token"]).status_code == 401
    assert gw.call("POST", "/v1/auth/refresh", json={"refresh_token": tokens["access_token"]}).status_code == 401
    # OAuth2 password-grant form, as OAuth2 clients and /docs send it.
    form = gw.call("POST", "/v1/auth/token", data={"grant_type": "password", "username": user["username"],
                                                   "password": "pass-word-1"})
    assert form.status_code == 200 and form.json()["access_token"]
    # Sign out (form, as the web app sends it): the sign-in's refresh tokens stop working.
    signed_out = gw.call("POST", "/v1/auth/logout", data={"refresh_token": form.json()["refresh_token"]})
    assert signed_out.status_code == 204, signed_out.text
    again = gw.call("POST", "/v1/auth/refresh", json={"refresh_token": form.json()["refresh_token"]})
    assert again.status_code == 401 and error_of(again)["code"] == "token_revoked"
    assert gw.call("POST", "/v1/auth/logout", json={"refresh_token": "eyJ.not.valid"}).status_code == 401
    assert gw.call("POST", "/v1/auth/logout", json={}).status_code == 422


def test_sign_in_failures(gw: Gateway) -> None:
    user = gw.user("consumer", password="pass-word-1")
    for body in ({"username": user["username"], "password": "wrong-password"},
                 {"username": "no-such-user", "password": "pass-word-1"},
                 {"username": "' OR 1=1 --", "password": "' OR 1=1 --"}):
        response = gw.call("POST", "/v1/auth/token", json=body)
        assert response.status_code == 401 and error_of(response)["message"] == "Incorrect username or password."
    assert gw.call("POST", "/v1/auth/token", json={"username": "x"}).status_code == 422
    assert gw.call("POST", "/v1/auth/token", content=b"{not json", headers={"content-type": "application/json"}
                   ).status_code == 400
    assert gw.call("POST", "/v1/auth/token", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_expired_access_token_and_role_read_live(gw: Gateway) -> None:
    user = gw.user("developer", password="pass-word-1")
    secret = (gw.data_dir / "jwt_secret").read_text().strip()
    now = int(time.time())
    expired = jwt.encode({"iss": ISSUER, "sub": str(user["id"]), "typ": "access", "iat": now - 1000, "exp": now - 1},
                         secret, algorithm=ALGORITHM)
    response = gw.chat(expired)
    assert response.status_code == 401 and error_of(response)["code"] == "token_expired"
    assert "/v1/auth/refresh" in error_of(response)["message"]
    # A token that claims admin for a developer gets the developer's live role.
    claims_admin = jwt.encode({"iss": ISSUER, "sub": str(user["id"]), "typ": "access", "iat": now, "exp": now + 60,
                               "role": "admin"}, secret, algorithm=ALGORITHM)
    assert gw.call("GET", "/v1/admin/users", claims_admin).status_code == 403
    gw.admin("PATCH", f"/v1/admin/users/{user['id']}", json={"role": "admin"})
    assert gw.call("GET", "/v1/admin/users", claims_admin).status_code == 200
    gw.admin("PATCH", f"/v1/admin/users/{user['id']}", json={"role": "consumer"})
    assert gw.call("GET", "/v1/admin/users", claims_admin).status_code == 403


# --- hostile and malformed credentials ------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "Bearer ' OR 1=1 --",
    "Bearer ksk-' OR '1'='1",
    "Bearer " + "A" * 10_240,                     # a 10 kB key
    "Bearer eyJ" + "A" * 10_240 + ".x.y",         # a 10 kB "JWT"
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",  # alg none, empty signature
    "Bearer eyJ.eyJ.x",
    "Basic YWRtaW46YWRtaW4=",
    "Bearer",
    "Bearer    ",
    "' OR 1=1 --",
    "Bearer ksk-\x7f\x01",
    "Bearer ksk-é-ไทย".encode(),                  # UTF-8 bytes in a latin-1 header
])
def test_hostile_authorization_headers_get_a_clean_401(gw: Gateway, header: str | bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/admin/users", "/v1/keys"):
        response = gw.client.post(path, json=CHAT, headers={"Authorization": header})
        assert response.status_code == 401, (header[:40], path, response.text[:200])
        assert error_of(response)["type"] == "authentication_error"


def test_sql_ish_and_huge_values_elsewhere_do_not_break_anything(gw: Gateway) -> None:
    assert gw.admin("GET", "/v1/admin/keys?user_id=1%20OR%201=1").status_code == 422
    assert gw.admin("GET", "/v1/admin/users/1%20OR%201=1").status_code == 422
    response = gw.admin("GET", "/v1/admin/audit?action=' OR 1=1 --")
    assert response.status_code == 200 and response.json()["data"] == []
    huge = gw.admin("POST", "/v1/admin/users", json={"username": "u" * 10_000, "role": "consumer"})
    assert huge.status_code == 422
    big_header = gw.call("GET", "/v1/admin/users", gw.admin_key, headers={"x-request-id": "r" * 10_000})
    assert big_header.status_code == 200


# --- audit log ------------------------------------------------------------------------------------


def test_admin_actions_are_audited_with_actor_and_request_id(gw: Gateway) -> None:
    response = gw.admin("POST", "/v1/admin/users", json={"username": "audited", "role": "developer"},
                        headers={"x-request-id": "req-audit-1"})
    user_id = response.json()["id"]
    key_id = gw.admin("POST", "/v1/admin/keys", json={"user_id": user_id, "allowed_models": ["echo"]},
                      headers={"x-request-id": "req-audit-2"}).json()["id"]
    gw.admin("DELETE", f"/v1/admin/keys/{key_id}", headers={"x-request-id": "req-audit-3"})
    gw.admin("PATCH", f"/v1/admin/users/{user_id}", json={"password": "new-password-1"})
    rows = gw.admin("GET", "/v1/admin/audit?limit=4").json()["data"]
    assert [r["action"] for r in rows] == ["user.update", "key.revoke", "key.create", "user.create"]
    assert all(r["actor"] == "admin" and r["actor_user_id"] and r["actor_key_id"] for r in rows)
    assert [r["request_id"] for r in rows[1:]] == ["req-audit-3", "req-audit-2", "req-audit-1"]
    assert rows[0]["request_id"]  # the gateway's own id when the client sent none
    assert rows[0]["details"] == {"password": "changed"}  # never the password itself
    assert rows[2]["details"]["allowed_models"] == ["echo"] and "key" not in rows[2]["details"]
    assert rows[3]["target_id"] == str(user_id) and rows[3]["details"]["role"] == "developer"
    older = gw.admin("GET", f"/v1/admin/audit?limit=2&before_id={rows[1]['id']}").json()["data"]
    assert [r["id"] for r in older] == [rows[2]["id"], rows[3]["id"]]
    # A developer's own-key actions are audited too, under their name.
    dev = gw.user("developer")
    dev_key = gw.key(dev["id"])["key"]
    gw.call("POST", "/v1/keys", dev_key, json={"label": "mine"})
    latest = gw.admin("GET", "/v1/admin/audit?limit=1").json()["data"][0]
    assert (latest["action"], latest["actor"], latest["actor_user_id"]) == ("key.create", dev["username"], dev["id"])


# --- the CLI against the running server -------------------------------------------------------------


def test_cli_revoke_takes_effect_on_the_running_server_within_a_second(gw: Gateway,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No Redis here (the embedded mode): the server's database poll picks the CLI's revocation up."""
    created = gw.key(gw.user("consumer")["id"])
    assert gw.chat(created["key"]).status_code == 200  # cached by the server now
    monkeypatch.setenv("KASET_DATA_DIR", str(gw.data_dir))
    for name in ("KASET_DATABASE_URL", "KASET_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli_app, ["keys", "revoke", str(created["id"])])
    assert result.exit_code == 0, result.output
    started = time.monotonic()
    while gw.chat(created["key"]).status_code == 200:
        assert time.monotonic() - started < 1.0, "the server still accepts the key 1 s after `kaset keys revoke`"
        time.sleep(0.02)
    audit = gw.admin("GET", "/v1/admin/audit?limit=1").json()["data"][0]
    assert audit["action"] == "key.revoke" and audit["actor"].startswith("cli:")


def test_admin_routes_stay_guarded_when_model_auth_is_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", models=["echo"], auth_enabled=False,
                        redis_url=None, database_url=None)
    with TestClient(create_app(settings, announce_key=lambda key: None), raise_server_exceptions=False) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.get("/v1/admin/users").status_code == 401
        assert client.post("/v1/admin/users", json={"username": "x", "role": "admin"}).status_code == 401


def test_oversized_headers_through_a_real_http_server(tmp_path: Path) -> None:
    """The same over real HTTP (uvicorn with httptools, as `kaset serve` runs): 401 or 431, never 500."""
    import socket
    import threading

    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", models=["echo"], redis_url=None,
                        database_url=None)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, announce_key=lambda key: None), host="127.0.0.1",
                                           port=port, loop="uvloop", http="httptools", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for size in (10_240, 100_000, 1_000_000):
            for value in ("Bearer " + "A" * size, "Bearer eyJ" + "A" * size + ".a.b", "' OR 1=1 -- " + "x" * size):
                try:
                    response = httpx.post(url, json=CHAT, headers={"Authorization": value}, timeout=10)
                except httpx.RemoteProtocolError:
                    continue  # the HTTP parser closed the connection on a huge header: also not a 500
                assert response.status_code in (401, 431), (size, response.status_code, response.text[:200])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_two_gateways_on_postgresql_and_redis_share_revocation(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Two gateway apps (replicas) on one real PostgreSQL and Redis: a key revoked through replica A's
    admin API is refused by replica B within a second. B's database poll is slowed to a minute, so
    only Redis pub/sub can deliver it in time."""

    from tests.auth.conftest import SECRET
    from tests.fixtures import postgres
    from tests.fixtures.redis import REDIS_URL, redis_unreachable

    reason = redis_unreachable()
    if reason:
        pytest.skip(reason)
    with postgres.throwaway_database() as db_name:
        pg_url = postgres.url(db_name)
        monkeypatch.setenv("KASET_BOOTSTRAP_KEY", "ksk-two-replicas-" + "0" * 32)
        announced: list[str] = []

        def replica(name: str) -> Settings:
            return Settings(data_dir=tmp_path / name, models=["echo"],
                            database_url=pg_url, redis_url=REDIS_URL, jwt_secret=SECRET, auth_poll_interval_s=60)

        with TestClient(create_app(replica("a"), announce_key=announced.append)) as a, \
                TestClient(create_app(replica("b"), announce_key=announced.append)) as b:
            admin = {"Authorization": "Bearer ksk-two-replicas-" + "0" * 32}
            user = a.post("/v1/admin/users", json={"username": "field", "role": "developer",
                                                   "password": "pass-word-1"}, headers=admin).json()
            created = a.post("/v1/admin/keys", json={"user_id": user["id"]}, headers=admin).json()
            key = {"Authorization": f"Bearer {created['key']}"}
            assert b.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200
            # A token from replica A works on replica B (shared KASET_JWT_SECRET).
            token = a.post("/v1/auth/token", json={"username": "field", "password": "pass-word-1"}).json()
            assert b.get("/v1/keys", headers={"Authorization": f"Bearer {token['access_token']}"}).status_code == 200
            assert a.delete(f"/v1/admin/keys/{created['id']}", headers=admin).status_code == 200
            started = time.monotonic()
            while b.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200:
                assert time.monotonic() - started < 1.0, "replica B still accepts the key 1 s after revocation"
                time.sleep(0.01)
        assert announced == []  # the preset bootstrap key is never printed
