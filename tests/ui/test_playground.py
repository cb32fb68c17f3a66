"""The playground at /playground/ in a real Chromium against a real server and models: each tab
makes its request, shows the answer, and shows curl and Python (openai SDK) code that makes the
same request — the tests run that code too and compare its answer with the page's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import ADMIN_PASSWORD, ADMIN_USER, QUESTION, Server, screenshot

DOG = Path("/usr/share/darknet/data/dog.jpg")
# ImageNet-1k class indices 151..268 are the dog breeds (efficientnet-lite0's label set).
IMAGENET_DOGS = range(151, 269)
SPOKEN = "Please water the mango trees every morning."
MODEL_CALL_MS = 90_000  # real models on a small shared CPU
LLM_CALL_MS = 240_000  # the chat model's tokens come slowly when other work shares the 2 cores


def ready(page: Page) -> Page:
    expect(page.locator("body[data-ready]")).to_be_attached(timeout=30_000)
    return page


def snippet(page: Page, tab: str, lang: str) -> str:
    return page.locator(f"[data-code='{tab}'] pre[data-snippet='{lang}']").inner_text()


def run_python(code: str, cwd: Path, server: Server) -> str:
    """Run a Python snippet as a person would: their key in KASET_API_KEY, files beside it."""
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KASET_API_KEY": server.admin_key})
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_shell(code: str, cwd: Path, server: Server) -> str:
    result = subprocess.run(["bash", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KASET_API_KEY": server.admin_key})
    assert result.returncode == 0, result.stderr
    return result.stdout


def heard(said: str, transcript: str) -> int:
    """How many of the words said are in the transcript."""
    return len(set(words(said)) & set(words(transcript)))


def shot(page: Page, name: str) -> None:
    """A screenshot from the top of the page (the sticky header would otherwise land mid-page)."""
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, name)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def spoken_wav(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence spoken by the server's Piper voice, as a WAV file to upload."""
    return server.speak(SPOKEN, tmp_path_factory.mktemp("upload") / "field-note.wav")


def test_transcribe_an_uploaded_file_and_its_code_gives_the_same_text(
        open_page: Callable[..., Page], server: Server, spoken_wav: Path) -> None:
    page = ready(open_page("/playground/#transcribe", size="desktop"))
    expect(page.locator("[data-tab='transcribe']")).to_have_attribute("aria-selected", "true")
    page.locator("#tr-model").select_option("whisper-base")
    page.locator("#tr-language").select_option("en")
    page.locator("#tr-file").set_input_files(spoken_wav)
    page.get_by_role("button", name="Transcribe file").click()
    expect(page.locator("#tr-text")).not_to_be_empty(timeout=MODEL_CALL_MS)
    shown = page.locator("#tr-text").inner_text()
    assert heard(SPOKEN, shown) >= 5, shown
    expect(page.locator("#tr-meta")).to_contain_text("whisper-base")

    expect(page.locator("[data-code='transcribe']")).to_have_attribute("data-state", "sent")
    curl = snippet(page, "transcribe", "curl")
    assert f"curl {server.base}/v1/audio/transcriptions" in curl
    assert "-F 'file=@field-note.wav'" in curl and "-F 'model=whisper-base'" in curl and "-F 'language=en'" in curl
    assert server.admin_key not in curl and "$KASET_API_KEY" in curl
    python = snippet(page, "transcribe", "python")
    assert f'base_url="{server.base}/v1"' in python and 'model="whisper-base"' in python
    assert server.admin_key not in page.content()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    copy = page.locator("[data-code='transcribe'] button[data-copy='python']")
    copy.click()
    expect(copy).to_have_text("Copied ✓")
    assert page.evaluate("navigator.clipboard.readText()") == python
    # The Python code, run as shown, transcribes the same file to the same text.
    printed = run_python(python, spoken_wav.parent, server)
    assert words(printed) == words(shown)
    shot(page, "playground-transcribe-desktop")


def test_record_from_the_microphone_then_transcribe(open_page: Callable[..., Page]) -> None:
    page = ready(open_page("/playground/#transcribe", size="phone"))
    page.locator("#tr-model").select_option("whisper-base")
    page.locator("#tr-language").select_option("en")
    record = page.locator("#tr-record")
    record.click()
    expect(record).to_have_attribute("data-recording", "true")
    page.wait_for_timeout(4_500)  # the fake microphone's question lasts about 3 s
    record.click()
    expect(page.locator("#tr-audio")).to_have_attribute("src", re.compile(r"^blob:"))
    expect(page.locator("#tr-text")).not_to_be_empty(timeout=MODEL_CALL_MS)
    shown = page.locator("#tr-text").inner_text()
    # The fake microphone loops the file, so the recording starts anywhere in the question and
    # Whisper mishears the cut and the rare words ("antric nose", "mangle", "angle leads"): half
    # of the eight words, and the verb, must be there (a broken recording gives none of them).
    assert heard(QUESTION, shown) >= 4 and "treat" in words(shown), shown
    assert "-F 'file=@recording.wav'" in snippet(page, "transcribe", "curl")
    shot(page, "playground-record-phone")


def test_a_blocked_microphone_says_so(open_page: Callable[..., Page]) -> None:
    page = ready(open_page("/playground/#transcribe", size="phone", microphone=False))
    page.locator("#tr-record").click()
    alert = page.locator("[data-panel='transcribe'] [data-role='tab-alert']")
    expect(alert).to_have_text("The microphone is blocked. Allow microphone access in the browser settings, "
                               "or type your question.")
    expect(page.locator("#tr-record")).not_to_have_attribute("data-recording", "true")


def test_live_partial_transcript_while_recording(open_page: Callable[..., Page]) -> None:
    """The /v1/voice/stream session ("transcribe" mode) shows words before the recording stops."""
    page = ready(open_page("/playground/#transcribe", size="phone"))
    page.locator("#tr-language").select_option("en")
    page.locator("#tr-record").click()
    live = page.locator("#tr-live")
    expect(live).to_have_text(re.compile(r"\w{3,}"), timeout=30_000)
    partial = live.inner_text()
    shot(page, "playground-live-transcript-phone")
    expect(page.locator("#tr-live-state")).not_to_have_class(re.compile(r"\bbad\b"))
    page.locator("#tr-record").click()
    expect(page.locator("#tr-text")).not_to_be_empty(timeout=MODEL_CALL_MS)
    assert set(words(partial)) & set(words(QUESTION)), partial


def test_speak_gives_a_playable_audio_and_the_curl_code_downloads_it(
        open_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    page = ready(open_page("/playground/#speak", size="desktop"))
    # The voice suggestions are the model's own, from GET /v1/audio/voices.
    page.locator("#sp-model").select_option("espeak-ng")
    expect(page.locator("#sp-voice")).to_have_value("en-us")
    expect(page.locator("#sp-voices option[value='vi-vn-x-south']")).to_have_count(1)
    page.locator("#sp-model").select_option("piper-joe")
    expect(page.locator("#sp-voice")).to_have_value("joe")
    expect(page.locator("#sp-voices option[value='vi']")).to_have_count(0)
    page.locator("#sp-text").fill("Good morning. The rain will come this afternoon.")
    page.locator("#sp-format").select_option("wav")
    page.locator("#sp-speed").fill("1.25")
    page.get_by_role("button", name="Speak", exact=True).click()
    audio = page.locator("#sp-audio")
    expect(audio).to_have_attribute("src", re.compile(r"^blob:"), timeout=MODEL_CALL_MS)
    # The browser decodes it: a real duration, not an error.
    page.wait_for_function("() => { const a = document.querySelector('#sp-audio');"
                           " return a.readyState >= 1 && a.duration > 0.5 || a.error; }", timeout=30_000)
    assert page.evaluate("document.querySelector('#sp-audio').error") is None
    duration = page.evaluate("document.querySelector('#sp-audio').duration")
    assert 1.0 < duration < 10.0, duration
    expect(page.locator("#sp-download")).to_have_attribute("download", "speech.wav")
    expect(page.locator("#sp-meta")).to_contain_text("piper-joe")

    curl = snippet(page, "speak", "curl")
    body = json.loads(re.search(r"-d '(.*?)'", curl, re.S).group(1))  # type: ignore[union-attr]
    assert body == {"model": "piper-joe", "input": "Good morning. The rain will come this afternoon.",
                    "voice": "joe", "speed": 1.25, "response_format": "wav"}
    assert 'voice="joe"' in snippet(page, "speak", "python")
    run_shell(curl, tmp_path, server)
    made = (tmp_path / "speech.wav").read_bytes()
    assert made[:4] == b"RIFF" and len(made) > 20_000
    (tmp_path / "speech.wav").unlink()
    run_python(snippet(page, "speak", "python"), tmp_path, server)
    assert (tmp_path / "speech.wav").read_bytes()[:4] == b"RIFF"
    shot(page, "playground-speak-desktop")


def test_translate_english_to_spanish(open_page: Callable[..., Page], server: Server, tmp_path: Path) -> None:
    page = ready(open_page("/playground/#translate", size="phone"))
    page.locator("#tl-source").select_option("en")
    page.locator("#tl-target").select_option("es")
    page.locator("#tl-text").fill("The leaves of the mango tree are green.")
    page.get_by_role("button", name="Translate", exact=True).click()
    output = page.locator("#tl-output")
    expect(output).to_contain_text("hojas", timeout=MODEL_CALL_MS)
    expect(page.locator("#tl-meta")).to_contain_text("apertium")
    python = snippet(page, "translate", "python")
    assert '"source": "en"' in python and '"target": "es"' in python
    assert run_python(python, tmp_path, server).strip() == output.inner_text().strip()
    shot(page, "playground-translate-phone")


def test_chat_streams_the_answer_in_pieces(open_page: Callable[..., Page]) -> None:
    page = ready(open_page("/playground/#chat", size="desktop"))
    page.locator("#ch-model").select_option("smollm2-135m")
    page.locator("#ch-max").fill("24")
    page.locator("#ch-input").fill("Name three vegetables that grow well in hot weather.")
    # Count the answer's text updates: a streamed answer arrives in many, a buffered one in one.
    page.evaluate("""() => { window.__updates = 0;
        new MutationObserver(() => { const b = document.querySelector('.msg.assistant');
          if (b && b.textContent) window.__updates++; })
        .observe(document.querySelector('#ch-log'), {childList: true, subtree: true, characterData: true}); }""")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.user")).to_have_text("Name three vegetables that grow well in hot weather.")
    bubble = page.locator(".msg.assistant")
    expect(bubble).not_to_have_attribute("data-streaming", "true", timeout=LLM_CALL_MS)
    expect(bubble).to_have_text(re.compile(r"\w+"))
    assert page.evaluate("window.__updates") > 3
    expect(page.locator("#ch-meta")).to_contain_text("tokens")
    python = snippet(page, "chat", "python")
    assert 'model="smollm2-135m"' in python and "stream=True" in python
    assert "Name three vegetables that grow well in hot weather." in python
    assert '"stream": true' in snippet(page, "chat", "curl")
    # A follow-up carries the first turn, and the code shows it.
    page.locator("#ch-input").fill("Which one needs the least water?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant")).to_have_count(2)
    expect(page.locator(".msg.assistant").nth(1)).not_to_have_attribute("data-streaming", "true",
                                                                        timeout=LLM_CALL_MS)
    python = snippet(page, "chat", "python")
    assert python.count('"role": "user"') == 2 and '"role": "assistant"' in python
    shot(page, "playground-chat-desktop")


def test_chat_stop_ends_the_stream_and_keeps_what_came(open_page: Callable[..., Page]) -> None:
    page = ready(open_page("/playground/#chat", size="phone"))
    page.locator("#ch-model").select_option("smollm2-135m")
    page.locator("#ch-max").fill("400")
    page.locator("#ch-input").fill("Write a long story about a rice farmer and the monsoon.")
    page.get_by_role("button", name="Send").click()
    bubble = page.locator(".msg.assistant")
    expect(bubble).to_have_text(re.compile(r"\w+ \w+"), timeout=LLM_CALL_MS)
    page.get_by_role("button", name="Stop").click()
    expect(bubble).to_have_text(re.compile(r"\[stopped\]$"))
    expect(bubble).not_to_have_attribute("data-streaming", "true")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.locator("[data-panel='chat'] [data-role='tab-alert']")).to_be_hidden()


def test_vision_classifies_and_describes_a_dog(open_page: Callable[..., Page], server: Server,
                                               tmp_path: Path) -> None:
    assert DOG.exists(), "darknet's sample photos are missing: `make test` installs the darknet package"
    page = ready(open_page("/playground/#vision", size="phone"))
    page.locator("#vi-file").set_input_files(DOG)
    expect(page.locator("#vi-preview")).to_be_visible()
    page.locator("#vi-model").select_option("efficientnet-lite0")
    page.get_by_role("button", name="Classify").click()
    labels = page.locator("#vi-labels li")
    expect(labels).to_have_count(5, timeout=MODEL_CALL_MS)
    top = int(labels.first.get_attribute("data-index") or -1)
    assert top in IMAGENET_DOGS, labels.first.inner_text()
    expect(labels.first.locator(".score")).to_have_text(re.compile(r"^\d+\.\d%$"))
    curl = snippet(page, "vision", "curl")
    assert f"{server.base}/v2/models/efficientnet-lite0/infer" in curl and "base64 -w0 'dog.jpg'" in curl
    (tmp_path / "dog.jpg").write_bytes(DOG.read_bytes())
    answer = json.loads(run_shell(curl, tmp_path, server))
    assert int(answer["outputs"][0]["data"][0].split(":")[1]) == top
    printed = run_python(snippet(page, "vision", "python"), tmp_path, server)
    assert printed.splitlines()[0].split(None, 1)[1] == labels.first.locator(".label").inner_text()
    shot(page, "playground-classify-phone")

    page.get_by_role("button", name="Describe").click()
    expect(page.locator("#vi-description")).not_to_be_empty(timeout=LLM_CALL_MS)
    expect(page.locator("#vi-note")).to_contain_text("efficientnet-lite0")
    assert int(labels.first.get_attribute("data-index") or -1) in IMAGENET_DOGS
    assert f"{server.base}/v1/describe-image" in snippet(page, "vision", "curl")
    assert 'client.post("/describe-image"' in snippet(page, "vision", "python")
    shot(page, "playground-describe-phone")


def test_an_unsupported_file_gets_a_clear_message_in_thai(open_page: Callable[..., Page], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is a text file, not a recording\n")
    page = ready(open_page("/playground/#transcribe", size="phone", language="th"))
    page.locator("#tr-file").set_input_files(notes)
    page.locator("#tr-send").click()
    alert = page.locator("[data-panel='transcribe'] [data-role='tab-alert']")
    expect(alert).to_be_visible(timeout=MODEL_CALL_MS)
    expect(alert).to_contain_text("ไม่รองรับไฟล์ประเภทนี้")  # "That file type is not supported."
    expect(alert.locator(".detail")).to_contain_text("wav")  # the server's list of formats
    expect(page.locator("#tr-text")).to_be_empty()
    shot(page, "playground-bad-file-phone-th")


def test_a_key_over_its_daily_image_quota_gets_the_quota_message(open_page: Callable[..., Page],
                                                                 server: Server) -> None:
    key = server.new_key(limits={"images_per_day": 1})
    page = ready(open_page("/playground/#vision", size="desktop", credential=key))
    page.locator("#vi-file").set_input_files(DOG)
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#vi-labels li")).to_have_count(5, timeout=MODEL_CALL_MS)
    page.get_by_role("button", name="Classify").click()
    alert = page.locator("[data-panel='vision'] [data-role='tab-alert']")
    expect(alert).to_contain_text("This key has used up today's allowance. It resets tomorrow.", timeout=MODEL_CALL_MS)
    expect(page.locator("#vi-labels li")).to_have_count(0)  # no stale labels beside the refusal
    shot(page, "playground-over-quota-desktop")


def test_signed_out_asks_to_sign_in_and_a_password_sign_in_opens_the_tabs(open_page: Callable[..., Page]) -> None:
    page = open_page("/playground/", size="phone", credential=None)
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#tabs")).to_be_hidden()
    page.locator("#username").fill(ADMIN_USER)
    page.locator("#password").fill("wrong password")
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator("[data-role='alert']").first).to_have_text("Wrong username or password.")
    page.locator("#password").fill(ADMIN_PASSWORD)
    page.locator("#signin-form button[type=submit]").click()
    ready(page)
    expect(page.locator("#tabs")).to_be_visible()
    expect(page.locator("#who")).to_have_text(ADMIN_USER)
    page.get_by_role("button", name="ภาษาไทย").click()
    expect(page.locator("[data-tab='speak']")).to_have_text("อ่านออกเสียง")
    expect(page.locator("[data-code='transcribe'] h2")).to_have_text("โค้ด")
    shot(page, "playground-signed-in-phone-th")
