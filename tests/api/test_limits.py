"""Limits and quotas over HTTP: set through the admin API, enforced on the model API.

A small gateway of its own (echo model, real SQLite, limits in memory as in the embedded mode);
the shared-Redis case is in tests/quotas and tests/e2e/test_limits_replicas.py.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures.gateway import Gateway, error_of, gw

__all__ = ["gw"]

EMBED = {"model": "echo", "input": "how do I treat mango anthracnose?"}


def limited_key(gw: Gateway, **limits: int) -> tuple[dict[str, Any], str]:
    user = gw.user("developer")
    key = gw.key(user["id"], limits=limits)
    return key, key["key"]


def test_requests_per_minute_through_http(gw: Gateway) -> None:
    key, credential = limited_key(gw, requests_per_minute=3)
    assert key["limits"] == {"requests_per_minute": 3, "concurrent_requests": None, "tokens_per_day": None,
                             "audio_seconds_per_day": None, "images_per_day": None}
    remaining = []
    for _ in range(3):
        ok = gw.call("POST", "/v1/embeddings", credential, json=EMBED)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit"] == "3"
        remaining.append(int(ok.headers["x-ratelimit-remaining"]))
        assert 0 < int(ok.headers["x-ratelimit-reset"]) <= 60
    assert remaining == [2, 1, 0]
    refused = gw.call("POST", "/v1/embeddings", credential, json=EMBED)
    assert refused.status_code == 429
    error = error_of(refused)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "3 requests per minute" in error["message"] and "Try again in" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"
    metrics = gw.admin("GET", "/metrics").text
    assert 'kaset_limit_rejections_total{limit="requests_per_minute",scope="key"}' in metrics
    # Raising the limit takes effect at once (the key cache is invalidated).
    patched = gw.admin("PATCH", f"/v1/admin/keys/{key['id']}", json={"limits": {"requests_per_minute": 1000}})
    assert patched.status_code == 200 and patched.json()["limits"]["requests_per_minute"] == 1000
    again = gw.call("POST", "/v1/embeddings", credential, json=EMBED)
    assert again.status_code == 200 and again.headers["x-ratelimit-limit"] == "1000"
    audit = gw.admin("GET", "/v1/admin/audit", params={"action": "key.limits"}).json()["data"]
    assert audit[0]["details"]["to"] == {"requests_per_minute": 1000}


def test_unlimited_keys_get_no_rate_headers(gw: Gateway) -> None:
    user = gw.user("consumer")
    credential = gw.key(user["id"])["key"]
    ok = gw.call("POST", "/v1/embeddings", credential, json=EMBED)
    assert ok.status_code == 200 and "x-ratelimit-limit" not in ok.headers
    assert gw.call("GET", "/v1/limits", credential).json()["limited"] is False


def test_daily_token_budget(gw: Gateway) -> None:
    _, credential = limited_key(gw, tokens_per_day=5)
    first = gw.call("POST", "/v1/chat/completions", credential,
                    json={"model": "echo", "messages": [{"role": "user", "content": "one two three four five six"}]})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
    refused = gw.call("POST", "/v1/embeddings", credential, json=EMBED)
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "daily_quota_exceeded"
    assert "5 tokens per day" in error_of(refused)["message"]
    assert int(refused.headers["retry-after"]) > 23 * 3600
    status = gw.call("GET", "/v1/limits", credential).json()
    assert status["limited"] is True and status["shared"] is False
    assert status["scopes"]["key"]["tokens_per_day"]["remaining"] == 0


def test_user_limits_cover_all_their_keys(gw: Gateway) -> None:
    user = gw.user("developer")
    patched = gw.admin("PATCH", f"/v1/admin/users/{user['id']}", json={"limits": {"requests_per_minute": 2}})
    assert patched.status_code == 200 and patched.json()["limits"]["requests_per_minute"] == 2
    first, second = gw.key(user["id"])["key"], gw.key(user["id"])["key"]
    assert gw.call("POST", "/v1/embeddings", first, json=EMBED).status_code == 200
    assert gw.call("POST", "/v1/embeddings", second, json=EMBED).status_code == 200
    refused = gw.call("POST", "/v1/embeddings", first, json=EMBED)
    assert refused.status_code == 429 and "account" in error_of(refused)["message"]
    # null puts the user back on the server's defaults (none here).
    cleared = gw.admin("PATCH", f"/v1/admin/users/{user['id']}", json={"limits": None})
    assert cleared.status_code == 200 and cleared.json()["limits"] is None
    assert gw.call("POST", "/v1/embeddings", first, json=EMBED).status_code == 200


def test_developers_may_limit_their_own_keys_only(gw: Gateway) -> None:
    dev = gw.user("developer")
    other = gw.user("developer")
    own = gw.key(dev["id"])
    dev_key = gw.key(dev["id"])["key"]
    foreign = gw.key(other["id"])
    ok = gw.call("PATCH", f"/v1/keys/{own['id']}", dev_key, json={"limits": {"concurrent_requests": 2}})
    assert ok.status_code == 200 and ok.json()["limits"]["concurrent_requests"] == 2
    assert gw.call("PATCH", f"/v1/keys/{foreign['id']}", dev_key, json={"limits": None}).status_code == 404


def test_bad_limits_are_refused_clearly(gw: Gateway) -> None:
    user = gw.user("consumer")
    for limits in ({"requests_per_minute": 0}, {"requests_per_minute": -5}, {"tokens_per_hour": 10},
                   {"images_per_day": "many"}):
        response = gw.admin("POST", "/v1/admin/keys", json={"user_id": user["id"], "limits": limits})
        assert response.status_code == 422, (limits, response.text)
        assert "limits" in error_of(response)["message"] or error_of(response)["param"], response.text


def test_setting_limits_on_a_missing_key_or_without_limits_is_refused(gw: Gateway) -> None:
    missing = gw.admin("PATCH", "/v1/admin/keys/999999", json={"limits": {"requests_per_minute": 5}})
    assert missing.status_code == 404 and "No active key with id 999999" in error_of(missing)["message"]
    key, _ = limited_key(gw, requests_per_minute=5)
    no_field = gw.admin("PATCH", f"/v1/admin/keys/{key['id']}", json={})
    assert no_field.status_code == 422, no_field.text
    assert "limits" in error_of(no_field)["message"] or error_of(no_field)["param"] == "limits"
    not_json = gw.admin("PATCH", f"/v1/admin/keys/{key['id']}", content=b"{oops",
                        headers={"Content-Type": "application/json"})
    assert not_json.status_code in (400, 422) and error_of(not_json)["message"]
