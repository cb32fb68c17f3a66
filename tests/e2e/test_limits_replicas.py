"""Two real gateway processes sharing the real PostgreSQL and Redis: one key's budget holds across both.

A key allowed 100 requests per minute sends 100 requests to each replica, all at once; 100 in
all are accepted, not 200, and every refusal is a 429 in the OpenAI error envelope with
Retry-After and x-ratelimit-* headers.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.auth.conftest import SECRET
from tests.fixtures import postgres
from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.redis import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]

ADMIN = "ksk-replicas-admin-" + "0123456789abcdef" * 2


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[str, str]]:
    with postgres.throwaway_database() as name:
        env = {"KASET_DATABASE_URL": postgres.url(name), "KASET_REDIS_URL": redis_url,
               "KASET_REDIS_PREFIX": redis_prefix, "KASET_JWT_SECRET": SECRET, "KASET_BOOTSTRAP_KEY": ADMIN,
               "KASET_MODELS": "echo"}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        # One after the other: the first start creates the admin from KASET_BOOTSTRAP_KEY.
        with gateway_process(tmp_path / "a", env) as a, gateway_process(tmp_path / "b", env) as b:
            yield a, b


def test_a_100_per_minute_key_gets_100_across_two_replicas(replicas: tuple[str, str]) -> None:
    a, b = replicas
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = httpx.post(f"{a}/v1/admin/keys", headers=admin, json={
        "username": "admin", "label": f"replicas-{secrets.token_hex(3)}", "limits": {"requests_per_minute": 100}})
    assert created.status_code == 201, created.text
    assert created.json()["limits"]["requests_per_minute"] == 100
    key = {"Authorization": f"Bearer {created.json()['key']}"}

    def call(base: str) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.post(f"{base}/v1/embeddings", headers=key, json={"model": "echo", "input": "rice"})

    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(call, [a, b] * 100))
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == 100, statuses
    assert statuses.count(429) == 100, statuses
    # Each replica served some of them: the budget really was shared, not split in two.
    served = {base: sum(1 for base_, r in zip([a, b] * 100, replies, strict=True)
                        if base_ == base and r.status_code == 200) for base in (a, b)}
    assert all(n > 0 for n in served.values()), served
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "100 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "100" and refused.headers["x-ratelimit-remaining"] == "0"
    ok = next(r for r in replies if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit"] == "100"
    assert 0 <= int(ok.headers["x-ratelimit-remaining"]) < 100
