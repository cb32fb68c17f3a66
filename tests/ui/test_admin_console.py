"""The admin console at /admin/ in a real Chromium against a real `kaset serve`: sign-in (JWT),
keys, users, usage charts, models and live metrics, in English and Thai, at phone and desktop sizes.

Every check that the console did something is made against the API too (a key created in the
console works on the API; a revoked one gets 401), so a page that only looks right fails.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import ADMIN_PASSWORD, ADMIN_USER, Server, screenshot

OpenPage = Callable[..., Page]


def shot(page: Page, name: str) -> None:
    """A full-page screenshot from the top (a scrolled page would show its sticky header mid-way)."""
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, name)


def sign_in(page: Page, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> None:
    page.fill("#username", username)
    page.fill("#password", password)
    page.locator("#signin-form button[type=submit]").click()


def open_console(open_page: OpenPage, *, size: str = "desktop", language: str = "en") -> Page:
    """The console, signed in with the admin's password (not the fixture's API key)."""
    page = open_page("/admin/", size=size, credential=None, language=language)
    sign_in(page)
    expect(page.locator("#console")).to_be_visible()
    return page


def tab(page: Page, name: str) -> None:
    page.locator(f"[data-tab={name}]").click()
    expect(page.locator(f"[data-panel={name}]")).to_be_visible()


def tile_number(page: Page, name: str) -> float:
    text = page.locator(f"[data-tile={name}] .value").inner_text()
    return float(text.replace(",", ""))


def metric(server: Server, name: str) -> float:
    text = server.api("GET", "/metrics", credential=None).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def embed(server: Server, key: str, text: str = "rice blast on the leaves") -> int:
    return server.api("POST", "/v1/embeddings", credential=key, json={"model": "e5-small", "input": text}).status_code


def stored_auth(page: Page) -> dict[str, object] | None:
    value = page.evaluate("localStorage.getItem('kaset.auth')")
    return None if value is None else dict(json.loads(value))


def store_token(page: Page, access: str, refresh: str) -> None:
    """Put a sign-in token in the page's storage the way the console stores one, and reload."""
    auth = {"kind": "token", "access": access, "refresh": refresh, "username": ADMIN_USER, "role": "admin"}
    page.evaluate("auth => localStorage.setItem('kaset.auth', JSON.stringify(auth))", auth)
    page.reload()


def test_password_sign_in_opens_the_dashboard_with_live_metrics(open_page: OpenPage, server: Server) -> None:
    for size in ("phone", "desktop"):
        page = open_page("/admin/", size=size, credential=None)
        expect(page.locator("#signin-form")).to_be_visible()
        expect(page.locator("#console")).to_be_hidden()
        sign_in(page)
        expect(page.locator("[data-tile=requests] .value")).to_have_text(re.compile(r"^[\d,]+$"))
        auth = stored_auth(page)
        assert auth is not None and auth["kind"] == "token" and auth["role"] == "admin", auth
        if size == "desktop":
            expect(page.locator("#who")).to_have_text(f"Signed in as {ADMIN_USER}")
        # The tiles read the server's /metrics: the loaded-model count is the server's own.
        expect(page.locator("[data-tile=loaded] .value")).to_have_text(str(int(metric(server, "kaset_models_loaded"))))
        # ...and they update: requests made elsewhere show up within a few polls.
        before = tile_number(page, "requests")
        key = server.admin_key
        for _ in range(5):
            assert embed(server, key) == 200
        page.wait_for_function(
            "n => Number(document.querySelector('[data-tile=requests] .value').textContent.replace(/,/g, '')) >= n",
            arg=before + 5, timeout=10_000)
        expect(page.locator("#live-chart polyline.line")).to_be_attached(timeout=10_000)
        expect(page.locator("#live-models [data-model=e5-small]")).to_be_visible()
        shot(page, f"admin-live-{size}")


def test_wrong_password_is_refused_in_plain_words(open_page: OpenPage) -> None:
    page = open_page("/admin/", size="phone", credential=None)
    sign_in(page, password="not the password")
    expect(page.locator("#signin-alert")).to_have_text("Wrong username or password.")
    expect(page.locator("#console")).to_be_hidden()
    assert stored_auth(page) is None


def test_key_created_in_the_console_works_until_revoked_there(open_page: OpenPage, server: Server) -> None:
    page = open_console(open_page)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    tab(page, "keys")
    label = f"field app {uuid.uuid4().hex[:6]}"
    page.select_option("#key-user", label=f"{ADMIN_USER} (admin)")
    page.fill("#key-label", label)
    page.locator("#key-models label", has_text=re.compile(r"^e5-small$")).locator("input").check()
    page.select_option("#key-expiry", "2592000")
    page.fill("#limit-create-requests_per_minute", "50")
    page.get_by_role("button", name="Create key").click()

    shown = page.locator("#new-key-value")
    expect(shown).to_have_text(re.compile(r"^ksk-\S{40,}$"))
    new_key = shown.inner_text()
    page.locator("#new-key-copy").click()
    expect(page.locator("#new-key-copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == new_key
    shot(page, "admin-new-key-desktop")

    # Listed, with what the form asked for; the API agrees.
    row = page.locator("#keys-table tr", has_text=label)
    expect(row).to_have_count(1)
    expect(row.locator("[data-col=models]")).to_have_text("e5-small")
    expect(row.locator("[data-col=limits]")).to_have_text("50/min")
    expect(row.locator("[data-col=prefix]")).to_have_text(f"{new_key[:10]}…")
    key_id = int(row.get_attribute("data-key-id") or "0")
    stored = server.api("GET", f"/v1/admin/keys/{key_id}").json()
    assert stored["label"] == label and stored["allowed_models"] == ["e5-small"]
    assert stored["limits"]["requests_per_minute"] == 50 and stored["expires_at"] is not None

    # The shown key is the real key, held to its allowlist.
    assert embed(server, new_key) == 200
    refused = server.api("POST", "/v1/chat/completions", credential=new_key,
                         json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"

    # "I have saved it" forgets the key: it is not in the page any more.
    page.locator("#new-key-done").click()
    expect(page.locator("#new-key")).to_be_hidden()
    assert new_key not in page.content()

    # Edit its limits.
    row.locator("[data-action=edit-limits]").click()
    expect(page.locator("#limit-edit-requests_per_minute")).to_have_value("50")
    page.fill("#limit-edit-requests_per_minute", "77")
    page.fill("#limit-edit-tokens_per_day", "5000")
    page.locator("#limits-dialog button[value=save]").click()
    expect(row.locator("[data-col=limits]")).to_have_text("77/min, 5,000 tokens/day")
    limits = server.api("GET", f"/v1/admin/keys/{key_id}").json()["limits"]
    assert limits["requests_per_minute"] == 77 and limits["tokens_per_day"] == 5000

    # Revoke, with a confirmation first: cancelling keeps the key working.
    row.locator("[data-action=revoke]").click()
    expect(page.locator("#confirm-text")).to_contain_text(label)
    page.locator("#confirm button[value=cancel]").click()
    assert embed(server, new_key) == 200
    row.locator("[data-action=revoke]").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#console-alert")).to_have_text(f"Key “{label}” revoked.")
    expect(row).to_have_count(0)  # only active keys are listed by default
    page.locator("#keys-revoked").check()
    expect(page.locator(f"#keys-table tr[data-key-id='{key_id}']")).to_have_attribute("data-status", "revoked")

    deadline = time.monotonic() + 5
    while (status := embed(server, new_key)) != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 401
    error = server.api("POST", "/v1/embeddings", credential=new_key, json={"model": "e5-small", "input": "x"}).json()
    assert error["error"]["code"] == "api_key_revoked"


def test_usage_chart_and_table_count_a_keys_requests(open_page: OpenPage, server: Server) -> None:
    label = f"usage chart {uuid.uuid4().hex[:6]}"
    key = server.new_key(label=label)
    for text in ("mango anthracnose", "cassava mosaic", "durian root rot"):
        assert embed(server, key, text) == 200
    # The request log is written in batches (every second): wait until the rollup has them.
    key_id = next(k["id"] for k in server.api("GET", "/v1/admin/keys").json()["data"] if k["label"] == label)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = server.api("GET", f"/v1/usage?key_id={key_id}").json()
        if report["totals"]["requests"] >= 3:
            break
        time.sleep(0.3)
    tokens = report["totals"]["prompt_tokens"]
    assert report["totals"]["requests"] == 3 and tokens > 0

    for size in ("phone", "desktop"):
        page = open_console(open_page, size=size)
        tab(page, "usage")
        group = f"{label} ({key[:10]}…)"
        row = page.locator(f"#usage-table tr[data-group='{group}']")
        expect(row.locator("[data-col=requests]")).to_have_text("3")
        expect(row.locator("[data-col=tokens]")).to_have_text(f"{tokens:,}")
        bars = page.locator(f"#usage-chart rect.bar[data-series='{group}']")
        expect(bars).to_have_count(1)  # one day, one segment
        assert bars.get_attribute("data-value") == "3"
        expect(page.locator("#usage-legend")).to_contain_text(group)
        # Per model and in tokens: e5-small's segment holds at least this key's tokens.
        page.select_option("#usage-group", "model")
        page.select_option("#usage-metric", "tokens")
        e5 = page.locator("#usage-chart rect.bar[data-series='e5-small']")
        expect(e5).to_have_count(1)
        assert float(e5.get_attribute("data-value") or 0) >= tokens
        expect(page.locator("#usage-chart-title")).to_contain_text("Tokens per day")
        shot(page, f"admin-usage-{size}")


def test_usage_range_before_the_first_request_is_empty(open_page: OpenPage) -> None:
    page = open_console(open_page, size="phone")
    tab(page, "usage")
    page.select_option("#usage-range", "custom")
    page.fill("#usage-start", "2020-01-01")
    page.fill("#usage-end", "2020-01-07")
    page.locator("#usage-form button[type=submit]").click()
    expect(page.locator("#usage-chart text.empty")).to_have_text("No requests in this range.")
    expect(page.locator("#usage-chart rect.bar")).to_have_count(0)


def test_unload_and_load_a_model_from_the_console(open_page: OpenPage, server: Server) -> None:
    model = "efficientnet-lite0"
    page = open_console(open_page)
    tab(page, "models")
    row = page.locator(f"#models-table tr[data-model='{model}']")
    expect(page.locator("#readiness")).to_contain_text("Server ready")
    if row.get_attribute("data-state") != "loaded":
        row.locator("[data-action=load]").click()
        expect(row).to_have_attribute("data-state", "loaded", timeout=60_000)

    row.locator("[data-action=unload]").click()
    expect(row).to_have_attribute("data-state", "standby", timeout=60_000)
    expect(row.locator("[data-col=state]")).to_contain_text("standby (by an admin)")
    expect(page.locator("#console-alert")).to_contain_text(f"{model} is unloaded")
    life = server.api("GET", f"/v1/models/{model}").json()["lifecycle"]
    assert life["state"] == "installed" and life["reason"] == "admin"
    shot(page, "admin-models-unloaded-desktop")

    row.locator("[data-action=load]").click()
    expect(row).to_have_attribute("data-state", "loaded", timeout=60_000)
    expect(row.locator("[data-col=memory]")).to_have_text(re.compile(r"^[\d.,]+ MB$"))
    assert server.api("GET", f"/v1/models/{model}").json()["lifecycle"]["state"] == "loaded"
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "admin-models-phone")


def test_a_non_admin_user_gets_the_role_message(open_page: OpenPage, server: Server) -> None:
    name = f"grower-{uuid.uuid4().hex[:6]}"
    created = server.api("POST", "/v1/admin/users",
                         json={"username": name, "role": "consumer", "password": "pw-0123456"})
    assert created.status_code == 201, created.text
    page = open_page("/admin/", size="phone", credential=None)
    sign_in(page, name, "pw-0123456")
    expect(page.locator("#signin-alert")).to_contain_text("needs the admin role")
    expect(page.locator("#signin-alert")).to_contain_text(f"{name} has the consumer role")
    expect(page.locator("#console")).to_be_hidden()
    assert stored_auth(page) is None
    shot(page, "admin-role-refused-phone")

    # The same with the user's API key: the server says the role is missing.
    paste_key(page, server.api("POST", "/v1/admin/keys", json={"username": name}).json()["key"])
    expect(page.locator("#signin-alert")).to_have_text(
        "This API key cannot open the admin console: its owner needs the admin role.")
    expect(page.locator("#console")).to_be_hidden()


def paste_key(page: Page, key: str) -> None:
    if not page.locator("#api-key").is_visible():
        page.locator("details.card summary").click()
    page.fill("#api-key", key)
    page.locator("#key-form button[type=submit]").click()


def test_an_admin_key_opens_the_console_and_a_mistyped_one_is_named(open_page: OpenPage, server: Server) -> None:
    """The first admin has only a key (no password): pasting it opens the console."""
    page = open_page("/admin/", size="phone", credential=None)
    paste_key(page, server.admin_key[:-1] + "x")
    expect(page.locator("#signin-alert")).to_have_text(
        "That API key is not valid: it may be mistyped, revoked or expired.")
    assert stored_auth(page) is None
    paste_key(page, server.admin_key)
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("#who")).to_have_text("Signed in with an API key")
    expect(page.locator("[data-tile=loaded] .value")).to_have_text(re.compile(r"^\d+$"))


def test_garbage_token_goes_back_to_sign_in_in_thai(open_page: OpenPage) -> None:
    page = open_page("/admin/", size="phone", credential=None, language="th")
    store_token(page, "garbage.not.atoken", "garbage")
    expect(page.locator("#signin-alert")).to_have_text("การเข้าสู่ระบบใช้ไม่ได้แล้ว กรุณาเข้าสู่ระบบใหม่")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#signin-form h2")).to_have_text("เข้าสู่ระบบ")
    assert stored_auth(page) is None
    # The message follows the language switch.
    page.get_by_role("button", name="English").click()
    expect(page.locator("#signin-alert")).to_have_text("Your sign-in is not valid any more. Please sign in again.")


def test_expired_token_goes_back_to_sign_in_unless_it_can_be_refreshed(
        open_page: OpenPage, server: Server) -> None:
    expired = server.expired_token()
    page = open_page("/admin/", size="desktop", credential=None)
    store_token(page, expired, "garbage")
    expect(page.locator("#signin-alert")).to_have_text("Your sign-in has expired. Please sign in again.")
    expect(page.locator("#console")).to_be_hidden()
    assert stored_auth(page) is None

    # With a good refresh token the console renews the access token on its own and opens.
    pair = server.api("POST", "/v1/auth/token", credential=None,
                      json={"username": ADMIN_USER, "password": ADMIN_PASSWORD}).json()
    store_token(page, expired, pair["refresh_token"])
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("[data-tile=requests]")).to_be_visible()
    auth = stored_auth(page)
    assert auth is not None and auth["access"] != expired


def test_users_are_created_and_disabled_in_the_console(open_page: OpenPage, server: Server) -> None:
    page = open_console(open_page, size="phone")
    tab(page, "users")
    name = f"agronomist-{uuid.uuid4().hex[:6]}"
    page.fill("#user-name", name)
    page.select_option("#user-role", "developer")
    page.fill("#user-password", "pw-abcdef12")
    page.get_by_role("button", name="Create user").click()
    row = page.locator(f"#users-table tr[data-user='{name}']")
    expect(row.locator("[data-col=role]")).to_have_text("developer")
    expect(row.locator("[data-col=password]")).to_have_text("yes")
    signed = server.api("POST", "/v1/auth/token", credential=None, json={"username": name, "password": "pw-abcdef12"})
    assert signed.status_code == 200

    row.locator("[data-action=disable-user]").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#console-alert")).to_contain_text(f"User “{name}” disabled")
    expect(row).to_have_count(0)
    page.locator("#users-disabled").check()
    expect(row.locator("[data-col=status]")).to_have_text("disabled")
    # Both changes are in the audit log card, by the signed-in admin, naming the user.
    user_id = row.get_attribute("data-user-id")
    for action in ("user.create", "user.update"):
        change = page.locator(f"#audit-table tr[data-audit-action='{action}'][data-target='{user_id}']")
        expect(change.locator("[data-col=target]")).to_have_text(name)
        expect(change.locator("[data-col=actor]")).to_have_text(ADMIN_USER)
    refused = server.api("POST", "/v1/auth/token", credential=None, json={"username": name, "password": "pw-abcdef12"})
    assert refused.status_code == 401
    shot(page, "admin-users-phone")


def test_thai_labels_render_across_the_console(open_page: OpenPage) -> None:
    page = open_console(open_page, size="phone", language="th")
    expect(page.locator("html")).to_have_attribute("lang", "th")
    expect(page.locator("[data-tab=keys]")).to_have_text("คีย์")
    expect(page.locator("[data-tab=models]")).to_have_text("โมเดล")
    expect(page.locator("[data-tile=loaded] .label")).to_have_text("โมเดลที่โหลดอยู่")
    expect(page.locator("#who")).to_have_text(f"เข้าสู่ระบบในชื่อ {ADMIN_USER}")
    shot(page, "admin-live-phone-th")
    tab(page, "keys")
    expect(page.get_by_role("button", name="สร้างคีย์")).to_be_visible()
    expect(page.locator("#keys-table th").first).to_have_text("ชื่อเรียก")
    tab(page, "models")
    expect(page.locator("#models-table tr[data-model='e5-small'] [data-col=state]")).to_contain_text("โหลดอยู่")
    shot(page, "admin-models-phone-th")
    page.get_by_role("button", name="English").click()
    expect(page.locator("#models-table tr[data-model='e5-small'] [data-col=state]")).to_contain_text("loaded")
    expect(page.locator("[data-tab=keys]")).to_have_text("Keys")


def test_sign_out_returns_to_sign_in(open_page: OpenPage) -> None:
    page = open_console(open_page, size="phone")
    page.locator("#sign-out").click()
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#signin-alert")).to_have_text("You have signed out.")
    assert stored_auth(page) is None
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()



SYNTHETIC_METRICS = """# HELP kaset_odd_total Label values with escapes.
# TYPE kaset_odd_total counter
kaset_odd_total{route="/v1/\\"quoted\\"",model="back\\\\slash",note="line\\nbreak"} 1.5e3
kaset_plain 42
# TYPE lat histogram
lat_bucket{le="0.1"} 2.0
lat_bucket{le="0.5"} 6.0
lat_bucket{le="+Inf"} 8.0
lat_count 8.0
lat_sum 2.1
"""


def test_the_consoles_metrics_parser_agrees_with_prometheus_client(open_page: OpenPage, server: Server) -> None:
    """The live tiles parse /metrics in the browser; prometheus_client's own parser is the reference."""
    from prometheus_client.parser import text_string_to_metric_families

    page = open_page("/admin/", size="desktop", credential=None)
    for text in (server.api("GET", "/metrics", credential=None).text, SYNTHETIC_METRICS):
        expected = {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text) for s in family.samples}
        parsed = page.evaluate("""async (text) => {
            const { parseMetrics } = await import('/admin/metrics.js');
            return [...parseMetrics(text).entries()]
                .flatMap(([name, rows]) => rows.map((r) => [name, r.labels, r.value]));
        }""", text)
        got = {(name, tuple(sorted(labels.items()))): value for name, labels, value in parsed}
        assert got.keys() == expected.keys()
        for sample, value in expected.items():
            assert got[sample] == pytest.approx(value), sample
    # Quantiles interpolate inside a bucket as histogram_quantile does: the 4th of 8 lies halfway
    # through the 4 observations in (0.1, 0.5].
    p50, p95 = page.evaluate("""async (text) => {
        const m = await import('/admin/metrics.js');
        const b = m.buckets(m.parseMetrics(text), 'lat');
        return [m.quantile(0.5, b), m.quantile(0.95, b)];
    }""", SYNTHETIC_METRICS)
    assert p50 == pytest.approx(0.3)
    assert p95 == pytest.approx(0.5)  # beyond the last finite bound: that bound is all we know
