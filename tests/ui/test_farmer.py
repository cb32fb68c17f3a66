"""Crop Guardian's farmer app at /farmer/ in a real headless Chromium, against a real `kaset serve`
with the default models: sign-in, a photo → the diagnosis card, hold-to-talk with the fake
microphone (a spoken English question) → transcript and spoken answer, the typed question, the
model comparison, the history on the device, the PWA shell, and each kind of bad input with the
message a farmer sees, in English and in Thai. Screenshots at phone and desktop sizes."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, Route, WebSocket, WebSocketRoute, expect

from tests.fixtures.images import jpeg, mango_like_leaf, photo
from tests.ui.conftest import ADMIN_PASSWORD, ADMIN_USER, Server, screenshot

DOG = Path("/usr/share/darknet/data/dog.jpg")
MODEL_CALL_MS = 300_000  # real models (the LLM, the voice) on a small CPU shared with other test runs
MANGO_LABELS = {"Anthracnose", "Bacterial Canker", "Healthy", "Powdery Mildew", "Scab", "Sooty Mould", "Stem End Rot"}
# The diseased-leaf photo the diagnosis tests use (tests/fixtures/images.py: it takes the mango path).
LEAF = jpeg(mango_like_leaf(seed=2, spots=25), quality=95)


def ready(page: Page) -> Page:
    expect(page.locator("body[data-ready]")).to_be_attached(timeout=30_000)
    return page


def choose_photo(page: Page, data: bytes, name: str = "leaf.jpg", mime: str = "image/jpeg") -> None:
    page.locator("#gallery").set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])


def expect_alert(page: Page, text: str, kind: str = "error") -> None:
    """The page's message area shows `text`, as an error (red) or a notice."""
    box = page.locator("[data-role='alert']")
    expect(box).to_contain_text(text, timeout=MODEL_CALL_MS)
    expect(box).to_have_attribute("data-kind", kind)


def hold_to_talk(page: Page, seconds: float) -> None:
    """Press the talk button with a pointer, hold it for `seconds`, release."""
    box = page.locator("#talk").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.wait_for_timeout(seconds * 1000)
    page.mouse.up()


def shot(page: Page, name: str) -> None:
    """A full-page screenshot from the top (scrolled, the sticky header would sit mid-page)."""
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    page.wait_for_timeout(300)
    screenshot(page, name)


# --- sign-in ----------------------------------------------------------------------------------


def test_sign_in_with_a_password_then_sign_out(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", credential=None))
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    expect_alert(page, "Sign in to continue.", kind="notice")
    shot(page, "farmer-signin-phone-en")
    page.locator("#username").fill(ADMIN_USER)
    page.locator("#password").fill("not the password")
    page.locator("#signin-form button[type=submit]").click()
    expect_alert(page, "Wrong username or password.")
    page.locator("#password").fill(ADMIN_PASSWORD)
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator("#app")).to_be_visible()
    stored = json.loads(page.evaluate("localStorage.getItem('kaset.auth')"))
    assert stored["kind"] == "token" and stored["username"] == ADMIN_USER
    with page.expect_response("**/v1/auth/logout") as logout:
        page.locator("#signout").click()
    assert logout.value.status == 204
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("localStorage.getItem('kaset.auth')") is None
    # Signed out on the server too: the refresh token the page held no longer works.
    refused = server.api("POST", "/v1/auth/refresh", credential=None, json={"refresh_token": stored["refresh"]})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked"


def test_a_pasted_key_is_used_for_the_calls(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", credential=None, language="th"))
    expect(page.locator("#signin h2")).to_have_text("เข้าสู่ระบบ")
    shot(page, "farmer-signin-phone-th")
    key = server.new_key()
    page.locator("#apikey").fill(f"  {key} ")
    page.locator("#key-form button[type=submit]").click()
    expect(page.locator("#app")).to_be_visible()
    assert json.loads(page.evaluate("localStorage.getItem('kaset.auth')")) == {"kind": "key", "key": key}


# --- photo → diagnosis card -------------------------------------------------------------------


def check_mango_card(page: Page, plan_heading: str, language: str) -> None:
    card = page.locator("#result article.diagnosis")
    expect(card).to_have_attribute("data-status", "diagnosed", timeout=MODEL_CALL_MS)
    expect(card.locator(".label-name")).not_to_be_empty()
    meter = card.locator("[role=meter]")
    percent = int(meter.get_attribute("aria-valuenow") or "-1")
    assert 0 < percent <= 100
    # Green only when the diagnosis says its confidence is high; amber with a caveat otherwise.
    high = card.get_attribute("data-confidence") == "high"
    assert ("low" in (meter.get_attribute("class") or "")) == (not high)
    if not high:
        expect(card.locator(".confidence-text")).to_contain_text(
            "check with an extension officer" if language == "en" else "ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร")
    expect(card.locator(".plan-part h3").first).to_be_visible()
    expect(card.locator("h3", has_text=plan_heading)).to_be_visible()
    assert card.locator("ul.actions li").count() >= 1
    assert card.locator("ul.sources a[href^='http']").count() >= 1
    expect(card).to_have_attribute("lang", language)


def test_a_mango_leaf_photo_card_comparison_and_history(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", size="desktop"))
    expect(page.locator("#diagnose")).to_be_disabled()
    choose_photo(page, LEAF)
    expect(page.locator("#preview img")).to_be_visible()
    page.locator("#diagnose").click()
    check_mango_card(page, "What to do now", "en")
    card = page.locator("#result article.diagnosis")
    label = card.locator(".label-name").inner_text()
    assert label.startswith("Mango "), label
    # The spraying part folds away; opened, its safety rules show with it.
    if card.locator("ul.chemical li").count():
        expect(card.locator("ul.chemical")).to_be_hidden()
        card.locator(".chemical-part summary").click()
        expect(card.locator("ul.chemical")).to_be_visible()
        expect(card.locator("ul.safety li").first).to_be_visible()
    # English has a voice: the answer's audio follows the text and plays from the button.
    expect(card.locator(".spoken")).to_have_attribute("data-speech", "ready", timeout=MODEL_CALL_MS)
    player = card.locator("audio.answer-audio")
    assert (player.get_attribute("src") or "").startswith("blob:")
    card.locator("button.play").click()
    page.wait_for_function("document.querySelector('audio.answer-audio').currentTime > 0", timeout=30_000)
    expect(card.locator("button.play")).to_contain_text("Pause")
    card.locator("button.play").click()
    shot(page, "farmer-diagnosis-desktop-en")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "farmer-diagnosis-phone-en")
    page.set_viewport_size({"width": 1280, "height": 860})

    # The comparison: the same photo through every mango model version, side by side.
    card.locator("button.compare").click()
    columns = page.locator("#compare-result .model-column")
    expect(columns).to_have_count(2, timeout=MODEL_CALL_MS)
    # Model ids sit behind "Details".
    expect(columns.first).to_be_hidden()
    page.locator("#compare-result details.model-details summary").click()
    assert sorted(c.get_attribute("data-model") or "" for c in columns.all()) == ["mango-disease@1", "mango-disease@2"]
    for column in columns.all():
        shown = {label.inner_text() for label in column.locator(".top-label").all()}
        assert shown and shown <= MANGO_LABELS, shown
    expect(page.locator("#compare-result .alert")).to_have_text(
        re.compile("The models (agree|disagree|give the same answer but are not confident)"))
    shot(page, "farmer-compare-desktop-en")

    # The history on the device: the diagnosis with its thumbnail, after a reload too.
    page.reload()
    ready(page)
    page.locator("#tabs [data-tab=history]").click()
    items = page.locator("#history .history-item")
    expect(items).to_have_count(1)
    expect(items.first.locator("strong")).to_have_text(label)
    assert (items.first.locator("img").get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    expect(page.locator("#history-empty")).to_be_hidden()
    shot(page, "farmer-history-desktop-en")
    items.first.click()
    expect(page.locator("[data-panel=photo]")).to_be_visible()
    reopened = page.locator("#result article.diagnosis")
    expect(reopened.locator(".label-name")).to_have_text(label)
    expect(reopened).to_contain_text("Saved diagnosis from")
    expect(reopened).to_contain_text("The spoken answer is not kept in the history.")
    page.locator("#tabs [data-tab=history]").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#history-clear").click()
    expect(items).to_have_count(0)
    expect(page.locator("#history-empty")).to_be_visible()
    assert page.evaluate("localStorage.getItem('kaset.farmer.history')") is None


def test_the_card_in_thai_says_there_is_no_thai_voice(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", language="th"))
    shot(page, "farmer-photo-phone-th")
    expect(page.locator("#diagnose")).to_have_text("ตรวจพืชของฉัน")
    page.locator("#crops label", has_text="มะม่วง").click()
    choose_photo(page, LEAF)
    page.locator("#diagnose").click()
    check_mango_card(page, "สิ่งที่ควรทำตอนนี้", "th")
    card = page.locator("#result article.diagnosis")
    expect(card.locator(".card-head .crop-name")).to_have_text("มะม่วง")
    assert re.search("[\u0e00-\u0e7f]", card.locator(".label-name").inner_text())
    # No offline Thai voice: a notice in Thai instead of a player.
    expect(card.locator(".spoken [data-code='no_voice']")).to_have_text(
        "คำตอบนี้ไม่มีเสียงอ่าน เพราะยังไม่ได้ติดตั้งเสียงสำหรับภาษานี้")
    assert card.locator("audio").count() == 0
    shot(page, "farmer-diagnosis-phone-th")
    page.set_viewport_size({"width": 1280, "height": 860})
    shot(page, "farmer-diagnosis-desktop-th")


def test_a_photo_that_is_not_a_plant_gets_retake_tips(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    choose_photo(page, DOG.read_bytes(), name="dog.jpg")
    page.locator("#diagnose").click()
    card = page.locator("#result article.diagnosis")
    expect(card).to_have_attribute("data-status", "not_a_plant", timeout=MODEL_CALL_MS)
    expect(card.locator(".label-name")).to_have_text("This does not look like a plant")
    expect(card.locator(".pill")).to_have_text("Not a plant")
    expect(card.locator("h3", has_text="How to take a better photo")).to_be_visible()
    assert card.locator("ul.tips li").count() >= 2
    expect(card.locator("button.retake")).to_be_visible()
    assert card.locator("ul.actions").count() == 0  # no treatment for a dog
    shot(page, "farmer-not-a-plant-phone-en")


def test_a_plant_the_models_are_unsure_of_in_thai(open_page: Callable[..., Page], server: Server) -> None:
    # A real daisy photo with the crop set to mango: a plant, surely not a mango leaf.
    page = ready(open_page("/farmer/", language="th"))
    page.locator("#crops label", has_text="มะม่วง").click()
    choose_photo(page, jpeg(photo("flower")), name="flower.jpg")
    page.locator("#diagnose").click()
    card = page.locator("#result article.diagnosis")
    # A plant, but not the crop (the gate's not_this_crop), its name in Thai.
    expect(card).to_have_attribute("data-status", "not_this_crop", timeout=MODEL_CALL_MS)
    expect(card.locator(".pill")).to_have_text("ไม่ใช่พืชที่เลือก")
    expect(card.locator(".label-name")).to_have_text("รูปนี้ดูไม่เหมือนพืชที่คุณเลือก")
    expect(card.locator(".message")).to_have_text(re.compile("^ภาพนี้ดูเหมือนดอกเดซี่มากกว่ามะม่วง"))
    expect(card.locator("h3", has_text="วิธีถ่ายรูปให้ดีขึ้น")).to_be_visible()
    assert card.locator("ul.tips li").count() >= 2
    assert re.search("[\u0e00-\u0e7f]", card.locator("ul.tips li").first.inner_text())
    if card.locator("[role=meter]").count():
        expect(card.locator("[role=meter]")).to_have_class(re.compile(r"\blow\b"))
    assert card.locator("ul.actions").count() == 0  # no plan for a guess
    shot(page, "farmer-unsure-phone-th")


def test_a_corrupt_photo_says_it_cannot_be_read(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    choose_photo(page, LEAF[: len(LEAF) // 3], name="cut-off.jpg")
    page.locator("#diagnose").click()
    expect_alert(page, "The photo could not be read. Take or choose another photo (JPEG or PNG).")
    expect(page.locator("#result article")).to_have_count(0)


# --- voice --------------------------------------------------------------------------------------


def test_hold_to_talk_shows_the_transcript_and_plays_the_answer(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    sent: list[str | bytes] = []
    received: list[dict[str, object]] = []
    asked: list[str] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: sent.append(payload))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    page.on("websocket", watch)
    page.on("request", lambda r: asked.append(r.post_data or "") if r.url.endswith("/v1/crop-doctor") else None)
    page.locator("#tabs [data-tab=ask]").click()
    shot(page, "farmer-ask-phone-en")
    hold_to_talk(page, 3.2)
    transcript = page.locator("#transcript.final")
    expect(transcript).to_contain_text("mango", ignore_case=True, timeout=MODEL_CALL_MS)
    # The answer's text, whole: the plan's steps are list items, none cut in two.
    items = page.locator("#voice-answer li")
    expect(items.first).to_be_visible(timeout=MODEL_CALL_MS)
    for item in items.all():
        assert item.inner_text().rstrip().endswith((".", ")")), item.inner_text()  # each item ends as written
    player = page.locator("#voice-audio")
    expect(player).to_have_attribute("src", re.compile("^blob:"), timeout=MODEL_CALL_MS)
    expect(player).to_have_attribute("data-played", "1", timeout=60_000)
    expect(page.locator("#talk")).to_have_attribute("data-state", "idle", timeout=MODEL_CALL_MS)
    # What went over the socket: start (transcribe, English), PCM, stop; the server's partial and
    # final transcripts. The transcript then went to the crop doctor, without speech.
    texts = [json.loads(frame) for frame in sent if isinstance(frame, str)]
    assert texts[0]["type"] == "start" and texts[0]["mode"] == "transcribe" and texts[0]["language"] == "en"
    assert texts[-1]["type"] in ("stop", "cancel") and {"type": "stop"} in texts
    pcm = sum(len(frame) for frame in sent if isinstance(frame, bytes))
    assert pcm > 16000 * 2 * 2, pcm  # more than 2 s of 16 kHz 16-bit audio
    kinds = [event["type"] for event in received]
    assert "transcript.partial" in kinds and "transcript.final" in kinds and kinds[-1] == "done"
    assert len(asked) == 1 and 'name="speak"' in asked[0] and "mango" in asked[0].lower()
    shot(page, "farmer-voice-answer-phone-en")


# A network whose proxy refuses WebSockets: every socket fails before it opens.
NO_WEBSOCKETS = """
window.WebSocket = class extends EventTarget {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    super(); this.url = String(url); this.readyState = 0;
    setTimeout(() => { this.readyState = 3; this.onerror?.(new Event("error"));
                       this.onclose?.(new CloseEvent("close", { code: 1006 })); }, 50);
  }
  send() { throw new DOMException("not open", "InvalidStateError"); }
  close() {}
};
"""


def test_hold_to_talk_without_websockets_asks_in_one_call(open_page: Callable[..., Page], server: Server) -> None:
    page = open_page("/farmer/")
    page.add_init_script(NO_WEBSOCKETS)
    page.reload()
    ready(page)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/crop-doctor" in r.url or "/v1/voice/" in r.url else None)
    page.locator("#tabs [data-tab=ask]").click()
    hold_to_talk(page, 3.2)
    expect(page.locator("#transcript.final")).to_contain_text("mango", ignore_case=True, timeout=MODEL_CALL_MS)
    assert [url.split("/v1/")[1] for url in asked] == ["crop-doctor"]  # the recording, heard there
    expect(page.locator("#voice-answer li").first).to_be_visible()
    player = page.locator("#voice-audio")
    expect(player).to_have_attribute("src", re.compile("^blob:"), timeout=MODEL_CALL_MS)
    expect(player).to_have_attribute("data-played", "1", timeout=60_000)
    expect(page.locator("#voice-alert")).to_be_hidden()


def test_microphone_denied(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", microphone=False))
    page.locator("#tabs [data-tab=ask]").click()
    hold_to_talk(page, 1.0)
    box = page.locator("#voice-alert")
    expect(box).to_have_text("The microphone is blocked. Allow microphone access in the browser settings, "
                             "or type your question.", timeout=30_000)
    expect(page.locator("#talk")).to_have_attribute("data-state", "idle")
    expect(page.locator("#talk-label")).to_have_text("Hold to talk")


def test_microphone_denied_in_thai(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", microphone=False, language="th"))
    page.locator("#tabs [data-tab=ask]").click()
    hold_to_talk(page, 1.0)
    expect(page.locator("#voice-alert")).to_have_text(
        "ไมโครโฟนถูกปิดกั้น กรุณาอนุญาตการใช้ไมโครโฟนในการตั้งค่าเบราว์เซอร์ หรือพิมพ์คำถามแทน", timeout=30_000)


def test_an_empty_recording(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    frames: list[str] = []
    calls: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(payload)
                                          if isinstance(payload, str) else None))
    page.on("request", lambda r: calls.append(r.url) if "/v1/" in r.url else None)
    page.locator("#tabs [data-tab=ask]").click()
    hold_to_talk(page, 0)
    expect(page.locator("#voice-alert")).to_have_text("The recording is empty. Hold the button down while you speak.",
                                                      timeout=30_000)
    expect(page.locator("#voice-output")).to_be_hidden()
    expect(page.locator("#talk")).to_have_attribute("data-state", "idle")
    # Nothing was asked: no upload, and a stream (if the microphone opened before the release)
    # was cancelled, never stopped.
    page.wait_for_timeout(500)
    assert calls == []
    assert "stop" not in [json.loads(frame)["type"] for frame in frames]


def test_a_dropped_connection_mid_answer(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    dropped: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            event = json.loads(message)
            # Cut the line as soon as the server has heard something: the network is gone.
            if event["type"] == "transcript.partial" and not dropped:
                dropped.append(event["type"])
                ws.close()
                upstream.close()
                return
            ws.send(message)

        upstream.on_message(from_server)

    page.route_web_socket(re.compile("/v1/voice/stream"), route)
    page.locator("#tabs [data-tab=ask]").click()
    hold_to_talk(page, 3.2)
    expect(page.locator("#voice-alert")).to_have_text("The connection dropped while answering. Please ask again.",
                                                      timeout=MODEL_CALL_MS)
    assert dropped
    expect(page.locator("#talk")).to_have_attribute("data-state", "idle")
    # The server noticed the client was gone and freed the session.
    deadline = time.monotonic() + 60
    while open_voice_sessions(server) != 0:
        assert time.monotonic() < deadline, "the dropped voice session is still open on the server"
        time.sleep(0.5)


def open_voice_sessions(server: Server) -> float:
    metrics = server.api("GET", "/metrics").text
    found = re.search(r"^kaset_voice_sessions (\S+)$", metrics, re.MULTILINE)
    assert found, "no kaset_voice_sessions gauge in /metrics"
    return float(found.group(1))


# --- typed question -------------------------------------------------------------------------------


def test_a_typed_question_in_thai(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", size="desktop", language="th"))
    page.locator("#tabs [data-tab=ask]").click()
    expect(page.locator("#talk-label")).to_have_text("กดค้างเพื่อพูด")
    shot(page, "farmer-ask-desktop-th")
    page.locator("#question").fill("ใบมะม่วงมีจุดสีดำ ควรรักษาโรคแอนแทรคโนสอย่างไร")
    page.locator("#ask").click()
    card = page.locator("#typed-result article.answer-card")
    expect(card).to_have_attribute("lang", "th", timeout=MODEL_CALL_MS)
    assert re.search("[\\u0e00-\\u0e7f]{10}", card.locator(".answer-text").inner_text())
    expect(card.locator("[data-code='no_voice']")).to_have_text(
        "คำตอบนี้ไม่มีเสียงอ่าน เพราะยังไม่ได้ติดตั้งเสียงสำหรับภาษานี้")
    assert card.locator(".answer-text li").count() >= 1  # the plan's steps as a list
    links = card.locator("ul.sources a[href^='http']")
    assert links.count() >= 1
    card.locator(".sources-part summary").click()
    expect(links.first).to_be_visible()
    expect(card.locator("h2")).to_have_text("คำตอบ")
    shot(page, "farmer-typed-answer-desktop-th")
    # The switch to English relabels the page; the answer stays in the language it was asked in.
    page.get_by_role("button", name="English").click()
    expect(card.locator("h2")).to_have_text("Answer")
    expect(card).to_have_attribute("lang", "th")


# --- sign-in that stopped working, quota --------------------------------------------------------


def test_an_expired_sign_in_goes_back_to_sign_in(open_page: Callable[..., Page], server: Server) -> None:
    token = server.expired_token()
    # The server itself refuses it as expired (not merely invalid).
    refused = server.api("POST", "/v1/advice", credential=token, json={"question": "mango"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_expired"
    page = ready(open_page("/farmer/", credential=None, language="th"))
    page.evaluate("token => localStorage.setItem('kaset.auth', JSON.stringify({kind: 'token', access: token, "
                  "refresh: null, username: 'ui-admin', role: 'admin'}))", token)
    page.reload()
    ready(page)
    expect(page.locator("#signin")).to_be_visible()
    expect_alert(page, "การเข้าสู่ระบบหมดอายุแล้ว กรุณาเข้าสู่ระบบใหม่")
    shot(page, "farmer-expired-phone-th")


def test_a_sign_in_that_expires_while_in_use(open_page: Callable[..., Page], server: Server) -> None:
    # Stored as a pasted credential the app cannot read the expiry of: the server's 401 says it.
    page = ready(open_page("/farmer/", credential=server.expired_token()))
    expect(page.locator("#app")).to_be_visible()
    choose_photo(page, LEAF)
    page.locator("#diagnose").click()
    expect_alert(page, "Your sign-in has expired. Please sign in again.")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('kaset.auth')") is None


def test_a_garbage_credential_goes_back_to_sign_in(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", credential="ksk-this-is-not-a-key"))
    page.locator("#tabs [data-tab=ask]").click()
    page.locator("#question").fill("How do I treat anthracnose on mango leaves?")
    page.locator("#ask").click()
    expect_alert(page, "Your sign-in is not valid any more. Please sign in again.")
    expect(page.locator("#signin")).to_be_visible()


def test_a_key_over_its_quota(open_page: Callable[..., Page], server: Server) -> None:
    key = server.new_key(limits={"requests_per_minute": 1})
    page = ready(open_page("/farmer/", credential=key))
    choose_photo(page, DOG.read_bytes(), name="dog.jpg")
    page.locator("#diagnose").click()
    expect(page.locator("#result article.diagnosis")).to_have_attribute("data-status", "not_a_plant",
                                                                        timeout=MODEL_CALL_MS)
    page.locator("#diagnose").click()
    expect_alert(page, "This key has used up its allowance. Try again in")
    assert re.search(r"Try again in \d+ (s|min)\.", page.locator("[data-role='alert']").inner_text())
    # Still signed in: a spent allowance is not a sign-in problem.
    expect(page.locator("#app")).to_be_visible()


# --- PWA --------------------------------------------------------------------------------------


def test_installable_manifest_and_icons(server: Server) -> None:
    page = server.api("GET", "/farmer/", credential=None)
    assert page.status_code == 200 and '<link rel="manifest" href="manifest.webmanifest">' in page.text
    response = server.api("GET", "/farmer/manifest.webmanifest", credential=None)
    assert response.status_code == 200
    manifest = response.json()
    assert manifest["start_url"] == "/farmer/" and manifest["display"] == "standalone"
    assert manifest["name"] and manifest["short_name"] and manifest["theme_color"] == "#1f6f3f"
    sizes = {}
    for icon in manifest["icons"]:
        image = server.api("GET", icon["src"], credential=None)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        width, height = struct.unpack(">II", image.content[16:24])  # the PNG's IHDR
        assert icon["sizes"] == f"{width}x{height}"
        sizes[width] = icon["src"]
    assert {192, 512} <= set(sizes)


def test_the_service_worker_caches_the_shell_but_never_the_api(open_page: Callable[..., Page],
                                                                server: Server) -> None:
    page = ready(open_page("/farmer/"))
    scope = page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope == f"{server.base}/farmer/"
    cached_js = """async () => { const out = [];
        for (const name of await caches.keys()) for (const r of await (await caches.open(name)).keys()) out.push(r.url);
        return out.map(u => new URL(u).pathname); }"""
    page.wait_for_function(f"({cached_js})().then(paths => paths.includes('/static/kaset.js'))", timeout=30_000)
    cached = set(page.evaluate(cached_js))
    assert {"/farmer/", "/farmer/app.js", "/static/kaset.js", "/static/kaset.css", "/farmer/icon-192.png",
            "/farmer/icon-512.png"} <= cached
    # Controlled by the worker after a reload; an API call goes to the network and is not cached.
    page.reload()
    ready(page)
    assert page.evaluate("navigator.serviceWorker.controller !== null")
    status = page.evaluate("k => fetch('/v1/limits', {headers: {authorization: 'Bearer ' + k}}).then(r => r.status)",
                           server.admin_key)
    assert status == 200
    assert not [path for path in page.evaluate(cached_js) if path.startswith(("/v1/", "/v2/"))]
    # Offline, the shell still opens from the cache.
    page.context.set_offline(True)
    page.reload()
    ready(page)
    expect(page.locator("#tabs")).to_be_visible()
    page.context.set_offline(False)


# --- text first, speech after; honest confidence; Thai labels --------------------------------


def test_the_text_is_shown_before_the_speech(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/"))
    held: list[Route] = []
    doctor: list[str] = []
    page.on("request", lambda r: doctor.append(r.post_data or "") if r.url.endswith("/v1/crop-doctor") else None)
    page.route("**/v1/audio/speech", lambda route: held.append(route))  # the speech waits until released
    page.locator("#tabs [data-tab=ask]").click()
    page.locator("#question").fill("How do I treat anthracnose on mango leaves?")
    page.locator("#ask").click()
    card = page.locator("#typed-result article.answer-card")
    expect(card.locator(".answer-text li").first).to_be_visible(timeout=MODEL_CALL_MS)
    # The text is on screen and the button free while the speech is still being made.
    expect(card.locator(".spoken")).to_have_attribute("data-speech", "pending")
    expect(page.locator("#ask")).to_be_enabled()
    assert len(doctor) == 1 and 'name="speak"\r\n\r\nfalse' in doctor[0]
    deadline = time.monotonic() + 60
    while not held:
        assert time.monotonic() < deadline, "the app never asked for the speech"
        page.wait_for_timeout(100)
    spoken = json.loads(held[0].request.post_data or "{}")
    assert spoken["input"].startswith("For Mango anthracnose, what to do now:"), spoken
    assert spoken["input"].endswith("The details are on the screen.") and len(spoken["input"]) <= 420
    for route in held:
        route.continue_()
    expect(card.locator(".spoken")).to_have_attribute("data-speech", "ready", timeout=MODEL_CALL_MS)
    assert (card.locator("audio.answer-audio").get_attribute("src") or "").startswith("blob:")


def test_the_apps_spoken_text_is_the_servers(open_page: Callable[..., Page], server: Server) -> None:
    from kaset.knowledge.schema import load_entries
    from kaset.pipelines.diagnose import Diagnosis
    from kaset.pipelines.spoken_answer import spoken_answer

    entries = {entry.id: entry for entry in load_entries()}
    page = ready(open_page("/farmer/"))
    for language in ("en", "th"):
        body = server.api("POST", "/v1/crop-doctor", data={"language": language, "speak": "false", "crop": "mango"},
                          files={"image": ("leaf.jpg", LEAF, "image/jpeg")}).json()
        d = body["diagnosis"]
        assert d["status"] == "diagnosed" and d["plan"], d
        diagnosis = Diagnosis(status="diagnosed", language=language, crop="mango", crop_source="given",
                              message=d["message"], gate=None, entry=entries[d["plan"]["entry_id"]])
        diagnosis.confidence_level = d["confidence_level"]
        in_app = page.evaluate("data => import('/farmer/spoken.js').then(m => m.spokenText(data))", body)
        assert in_app == spoken_answer(diagnosis, None, language)


def test_moderate_confidence_is_amber_with_a_caveat(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", language="th"))

    def moderate(route: Route) -> None:
        body = route.fetch().json()
        if body["diagnosis"] and body["diagnosis"]["status"] == "diagnosed":
            body["diagnosis"]["confidence_level"] = "moderate"
            body["diagnosis"]["models_agree"] = False if body["diagnosis"]["per_model"][1:] else None
        route.fulfill(json=body)

    page.route("**/v1/crop-doctor", moderate)
    page.locator("#crops label", has_text="มะม่วง").click()
    choose_photo(page, LEAF)
    page.locator("#diagnose").click()
    card = page.locator("#result article.diagnosis")
    expect(card).to_have_attribute("data-confidence", "moderate", timeout=MODEL_CALL_MS)
    expect(card.locator("[role=meter]")).to_have_class(re.compile(r"\blow\b"))
    expect(card.locator(".confidence-text")).to_contain_text("ตรวจสอบกับเจ้าหน้าที่ส่งเสริมการเกษตร")
    card.locator("button.compare").click()
    verdict = page.locator("#compare-result .alert")
    expect(verdict).to_have_attribute("data-kind", "notice", timeout=MODEL_CALL_MS)
    expect(verdict).not_to_have_text("ทุกโมเดลตอบตรงกัน")
    shot(page, "farmer-moderate-phone-th")


# Model ids, ensemble names and the mango model's English labels.
MODEL_WORDS = re.compile(r"mango-disease|efficientnet|@\d|weighted_average|vote\b|" + "|".join(MANGO_LABELS))


def test_thai_shows_no_model_ids_outside_details(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", language="th"))
    page.locator("#crops label", has_text="มะม่วง").click()
    choose_photo(page, LEAF)
    page.locator("#diagnose").click()
    card = page.locator("#result article.diagnosis")
    expect(card).to_have_attribute("data-status", "diagnosed", timeout=MODEL_CALL_MS)
    card.locator("button.compare").click()
    expect(page.locator("#compare-result .model-column")).to_have_count(2, timeout=MODEL_CALL_MS)
    # Everything a Thai farmer sees without opening "Details" (sources are publications, left out).
    shown = page.evaluate("""() => [...document.querySelectorAll('#result article, #compare-result article')].map(a => {
        const copy = a.cloneNode(true);
        copy.querySelectorAll('details.model-details, .sources-part').forEach(n => n.remove());
        return copy.innerText; }).join('\\n')""")
    assert not MODEL_WORDS.search(shown), MODEL_WORDS.search(shown)
    assert "ภาพนี้ดูเหมือน" not in shown or not re.search(r"ภาพนี้ดูเหมือน\s*[A-Za-z]", shown)
    page.locator("#compare-result details.model-details summary").click()
    expect(page.locator("#compare-result .model-column").first).to_be_visible()
    expect(page.locator("#compare-result details.model-details")).to_contain_text("mango-disease@")


def test_a_thai_refusal_names_the_object_in_thai(open_page: Callable[..., Page], server: Server) -> None:
    page = ready(open_page("/farmer/", language="th"))
    choose_photo(page, DOG.read_bytes(), name="dog.jpg")
    page.locator("#diagnose").click()
    card = page.locator("#result article.diagnosis")
    expect(card).to_have_attribute("data-status", "not_a_plant", timeout=MODEL_CALL_MS)
    message = card.locator(".message").inner_text()
    assert "ไม่ใช่พืช" in message and not re.search("[A-Za-z]", message), message
