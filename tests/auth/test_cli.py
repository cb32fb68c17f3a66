"""`kaset users ...` and `kaset keys ...` against a real database (and Redis for revocation)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaset.auth import audit
from kaset.auth.identity import Identity
from kaset.cli import app
from kaset.cli.keys import parse_duration
from kaset.errors import AuthenticationFailed
from kaset.quotas.policy import Limits
from kaset.store.db import Database
from tests.auth.conftest import SECRET

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KASET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")  # rich would cut table cells to 80 columns
    for name in ("KASET_DATABASE_URL", "KASET_REDIS_URL", "KASET_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _run(*args: str, input: str | None = None, code: int = 0) -> str:
    result = runner.invoke(app, list(args), input=input)
    assert result.exit_code == code, result.output
    return result.output


def test_users_and_keys_commands(cli_env: Path) -> None:
    _run("users", "create", "Alice", "--role", "developer", "--password", input="hunter2hunter2\nhunter2hunter2\n")
    _run("users", "create", "bob")
    out = _run("users", "list")
    assert "alice" in out and "developer" in out and "bob" in out and "consumer" in out
    assert "already exists" in _run("users", "create", "alice", code=1)
    assert "role must be one of" in _run("users", "create", "carol", "--role", "user", code=1)

    out = _run("keys", "create", "--user", "alice", "--label", "phone app", "--allow-model", "echo",
               "--allow-model", "whisper-1", "--expires-in", "30d", "--limit", "requests_per_minute=100",
               "--limit", "tokens_per_day=50000")
    assert "limits: requests_per_minute=100, tokens_per_day=50000" in out
    key = out.strip().splitlines()[-1]
    assert "expected NAME=N" in _run("keys", "create", "--user", "alice", "--limit", "requests_per_minute", code=2)
    assert "tokens_per_hour" in _run("keys", "create", "--user", "alice", "--limit", "tokens_per_hour=5", code=2)
    assert key.startswith("ksk-")
    assert "No user named 'nobody'" in _run("keys", "create", "--user", "nobody", code=1)
    assert "not a duration" in _run("keys", "create", "--user", "alice", "--expires-in", "soon", code=2)

    listing = _run("keys", "list", "--user", "alice")
    assert "phone app" in listing and "echo, whisper-1" in listing and key[:10] in listing
    assert key not in listing

    async def check() -> tuple[int | None, list[str]]:
        db = Database(f"sqlite+aiosqlite:///{cli_env / 'kaset.db'}")
        identity = Identity(db, jwt_secret=SECRET)
        principal = await identity.authenticate(key)
        assert principal.allowed_models == frozenset({"echo", "whisper-1"}) and principal.expires_at is not None
        assert 29 * 86400 < (principal.expires_at.timestamp() - time.time()) <= 30 * 86400
        assert principal.limits == Limits(requests_per_minute=100, tokens_per_day=50000)
        assert (await identity.tokens.login("alice", "hunter2hunter2")).access_token
        rows = await audit.entries(db)
        await db.close()
        return principal.key_id, [f"{r.actor.split(':')[0]} {r.action}" for r in rows]

    key_id, actions = asyncio.run(check())
    assert actions == ["cli key.create", "cli user.create", "cli user.create"]
    assert not (cli_env / "jwt_secret").exists(), "the CLI must not create the sign-in secret"

    _run("keys", "revoke", str(key_id))
    assert "No active key" in _run("keys", "revoke", str(key_id), code=1)
    assert key[:10] not in _run("keys", "list")
    assert "revoked" in _run("keys", "list", "--all")


def test_set_password(cli_env: Path) -> None:
    _run("users", "create", "dora")
    _run("users", "set-password", "dora", input="a-long-password\na-long-password\n")
    assert "at least 8" in _run("users", "set-password", "dora", input="short\nshort\n", code=1)


def test_duration_parsing() -> None:
    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("15m").total_seconds() == 900
    assert parse_duration("2w").days == 14


def test_cli_revoke_reaches_a_running_server_through_redis(pg_url: str, redis_url: str, redis_prefix: str,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL + Redis (the distributed setup): the CLI publishes, a serving replica drops the key."""
    monkeypatch.setenv("KASET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KASET_DATABASE_URL", pg_url)
    monkeypatch.setenv("KASET_REDIS_URL", redis_url)
    _run("users", "create", "eve")
    key = _run("keys", "create", "--user", "eve").strip().splitlines()[-1]

    async def serve_and_revoke() -> float:
        db = Database(pg_url)
        server = Identity(db, jwt_secret=SECRET, redis_url=redis_url, redis_prefix="kaset:auth:",
                          poll_interval_s=60)  # only pub/sub can deliver within the test's second
        server.start()
        await asyncio.wait_for(server.cache.listening.wait(), 5)
        principal = await server.authenticate(key)
        # The CLI runs in its own thread with its own event loop, as a separate process would.
        await asyncio.to_thread(_run, "keys", "revoke", str(principal.key_id))
        started = time.monotonic()
        try:
            while time.monotonic() - started < 1.0:
                try:
                    await server.authenticate(key)
                except AuthenticationFailed:
                    return time.monotonic() - started
                await asyncio.sleep(0.01)
            pytest.fail("the server still accepted the key 1 s after `kaset keys revoke`")
        finally:
            await server.close()
            await db.close()

    assert asyncio.run(serve_and_revoke()) < 1.0
