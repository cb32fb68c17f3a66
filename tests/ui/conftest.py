"""The web app in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against a real `kaset serve` process with the default models.

Chromium's fake media devices stand in for the microphone: `--use-file-for-fake-audio-capture`
plays a WAV file (a spoken question made with the server's own Piper voice) as the mic input.
Screenshots go to test-artifacts/screenshots/ (kept by CI as artifacts, ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from kaset.auth.tokens import ALGORITHM, ISSUER
from kaset.registry.catalog import Catalog
from tests.fixtures.gateway_process import gateway_process

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("KASET_TEST_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ADMIN_KEY = "ksk-ui-test-admin-key-0123456789abcdef01234567"
ADMIN_USER = "ui-admin"
ADMIN_PASSWORD = "correct horse battery staple"
QUESTION = "How do I treat anthracnose on mango leaves?"

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 860}}

# Without these, Chromium keeps trying to reach Google's hosts on this closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class Server:
    """The gateway under test and an admin's way in."""

    def __init__(self, base: str, data_dir: Path) -> None:
        self.base = base
        self.data_dir = data_dir
        self.admin_key = ADMIN_KEY

    def api(self, method: str, path: str, credential: str | None = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=120, **kwargs)

    def admin_user_id(self) -> int:
        users = self.api("GET", "/v1/admin/users").json()["data"]
        return int(next(u["id"] for u in users if u["username"] == ADMIN_USER))

    def expired_token(self) -> str:
        """An access token of the admin user, signed with the server's own secret (written to its
        data folder at first start), that expired a minute ago."""
        secret = (self.data_dir / "jwt_secret").read_text().strip()
        now = int(time.time())
        return jwt.encode({"iss": ISSUER, "sub": str(self.admin_user_id()), "iat": now - 3600, "exp": now - 60,
                           "typ": "access", "role": "admin", "name": ADMIN_USER}, secret, algorithm=ALGORITHM)

    def speak(self, text: str, path: Path) -> Path:
        """`text` spoken by the server's Piper voice, written to `path` as WAV."""
        response = self.api("POST", "/v1/audio/speech", json={"model": "piper-joe", "input": text,
                                                              "response_format": "wav"})
        assert response.status_code == 200, response.text
        path.write_bytes(response.content)
        return path

    def new_key(self, **fields: Any) -> str:
        """A fresh API key of the admin user (limits, allowlist... as fields)."""
        response = self.api("POST", "/v1/admin/keys", json={"user_id": self.admin_user_id(), **fields})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
           installed: Callable[[str], object], models_dir: Path) -> Iterator[Server]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package"
    for spec in catalog:
        if spec.default and spec.needs_install:
            installed(spec.id)
    data_dir = tmp_path_factory.mktemp("ui-data")
    with gateway_process(data_dir, {"KASET_MODELS_DIR": str(models_dir), "KASET_BOOTSTRAP_KEY": ADMIN_KEY}) as base:
        server = Server(base, data_dir)
        response = server.api("POST", "/v1/admin/users", json={"username": ADMIN_USER, "role": "admin",
                                                               "password": ADMIN_PASSWORD})
        assert response.status_code == 201, response.text
        yield server


@pytest.fixture(scope="package")
def question_wav(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken English question (~3 s), synthesized by the server's Piper voice, WAV."""
    return server.speak(QUESTION, tmp_path_factory.mktemp("audio") / "question.wav")


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    # Package scope, not session: Playwright's sync API keeps an event loop running in the main
    # thread while it is open, and every async test collected after tests/ui would fail to start.
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright, question_wav: Path) -> Iterator[Browser]:
    """Chromium whose microphone plays the spoken question (permission granted per context)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={question_wav}",
        "--autoplay-policy=no-user-gesture-required"])
    yield browser
    browser.close()


@pytest.fixture
def open_page(browser: Browser, server: Server) -> Iterator[Callable[..., Page]]:
    """open_page("/farmer/", size="phone", credential=key, language="th", microphone=True) -> Page.

    `credential` is stored the way the app stores a pasted key; None leaves the app signed out.
    Console errors of the page fail the test (an app that throws is broken even if it looks fine).
    """
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_(path: str, *, size: str = "phone", credential: str | None = ADMIN_KEY, language: str = "en",
              microphone: bool = True) -> Page:
        context = browser.new_context(base_url=server.base, **(PHONE if size == "phone" else DESKTOP))
        contexts.append(context)
        if microphone:
            context.grant_permissions(["microphone"], origin=server.base)
        state: dict[str, str] = {"kaset.lang": language}
        if credential:
            state["kaset.auth"] = json.dumps({"kind": "key", "key": credential})
        context.add_init_script(
            "(() => { if (sessionStorage.getItem('kaset.test.seeded')) return;"
            " sessionStorage.setItem('kaset.test.seeded', '1');"
            f" for (const [k, v] of Object.entries({json.dumps(state)})) localStorage.setItem(k, v); }})()")
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{path}: {exc}"))
        page.goto(path)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact: test-artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
