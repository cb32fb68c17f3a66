"""The home page at `/`: served by the gateway, links to the three apps, Thai and English."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.ui.conftest import Server, screenshot


def test_home_links_the_apps_and_switches_language(open_page: Callable[..., Page], server: Server) -> None:
    page = open_page("/", size="phone", credential=None)
    for href in ("/farmer/", "/playground/", "/admin/"):
        expect(page.locator(f"a[href='{href}']")).to_be_visible()
    expect(page.locator("a[href='/farmer/'] strong")).to_have_text("Crop Guardian")
    page.get_by_role("button", name="ภาษาไทย").click()
    expect(page.locator("a[href='/farmer/'] strong")).to_have_text("หมอพืช")
    expect(page.locator("html")).to_have_attribute("lang", "th")
    screenshot(page, "home-phone-th")


def test_static_assets_are_served_without_a_key(server: Server) -> None:
    for path in ("/static/kaset.js", "/static/kaset.css", "/static/icon.svg"):
        response = server.api("GET", path, credential=None)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache"
    # The API's own 404s keep the OpenAI envelope: the web app never shadows them.
    missing = server.api("GET", "/v1/no-such-route")
    assert missing.status_code == 404
