"""POST /v1/crop-doctor with the real models, multipart and JSON."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.test_usage_metrics import logged, rid
from tests.fixtures.gateway import error_of
from tests.fixtures.images import jpeg, mango_like_leaf

DOG = Path("/usr/share/darknet/data/dog.jpg")


def _dog() -> bytes:
    if not DOG.exists():
        pytest.skip("needs darknet's sample photos: apt-get install darknet")
    return DOG.read_bytes()


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def test_not_a_plant_multipart_in_english(client: TestClient) -> None:
    request_id = rid("crop-doctor")
    response = client.post("/v1/crop-doctor", headers={"x-request-id": request_id},
                           files={"image": ("dog.jpg", _dog(), "image/jpeg")}, data={"language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    diagnosis = body["diagnosis"]
    assert diagnosis["status"] == "not_a_plant" and diagnosis["retake_tips"] and body["advice"] is None
    # Exactly the /v1/diagnose object.
    same = client.post("/v1/diagnose", files={"image": ("dog.jpg", _dog(), "image/jpeg")}, data={"language": "en"})
    assert set(diagnosis) == set(same.json()) and diagnosis["message"] == same.json()["message"]
    assert body["language"] == "en" and "not a plant" in body["answer"]
    assert diagnosis["retake_tips"][0] in body["answer"]
    audio = body["audio"]
    wav = base64.b64decode(audio["data"])
    assert audio["format"] == "wav" and wav[:4] == b"RIFF" and audio["model"] == "piper-joe"
    assert audio["seconds"] == pytest.approx(_wav_seconds(wav), abs=0.01) and body["notices"] == []
    timings = body["timings"]
    assert timings["transcribe_ms"] is None and timings["advice_ms"] is None
    assert timings["total_ms"] >= timings["diagnose_ms"] + timings["speech_ms"] > 0
    row = logged(client, [request_id])[request_id]
    assert row["images"] == 1 and row["audio_seconds"] == pytest.approx(audio["seconds"], abs=0.01)


def test_typed_thai_question_json(client: TestClient) -> None:
    response = client.post("/v1/crop-doctor", json={"question": "ใบข้าวมีแผลรูปตา สีเทา ควรทำอย่างไร"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "th" and body["diagnosis"] is None and body["transcript"] is None
    advice = body["advice"]
    same = client.post("/v1/advice", json={"question": "ใบข้าวมีแผลรูปตา สีเทา ควรทำอย่างไร"}).json()
    assert set(advice) == set(same) and advice["citations"][0]["id"] == same["citations"][0]["id"] == "rice-blast"
    assert body["answer"] == advice["answer"]
    assert body["audio"] is None and [n["code"] for n in body["notices"]] == ["no_voice"]


def test_photo_and_spoken_english_question_json(client: TestClient) -> None:
    question = "How do I treat the black spots on my mango leaves?"
    spoken = client.post("/v1/audio/speech", json={"model": "tts-1", "input": question, "response_format": "mp3"})
    request_id = rid("crop-doctor-spoken")
    response = client.post("/v1/crop-doctor", headers={"x-request-id": request_id}, json={
        "image": base64.b64encode(jpeg(mango_like_leaf(seed=2, spots=25))).decode(),
        "audio": base64.b64encode(spoken.content).decode(), "response_format": "mp3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "mango" in body["transcript"].lower() and body["question"] is None
    assert body["language"] == "en" and body["diagnosis"]["status"] == "diagnosed"
    assert body["diagnosis"]["language"] == "en"
    assert body["advice"]["citations"][0]["id"] == body["diagnosis"]["plan"]["entry_id"]
    assert body["audio"]["format"] == "mp3" and body["notices"] == []
    assert all(body["timings"][k] > 0 for k in ("transcribe_ms", "diagnose_ms", "advice_ms", "speech_ms"))
    row = logged(client, [request_id])[request_id]
    assert row["images"] == 1 and row["audio_seconds"] > body["audio"]["seconds"]  # heard + said


@pytest.mark.parametrize("kwargs", [{"json": {}}, {"json": {"question": "  ", "language": "en"}},
                                    {"files": {"crop": (None, "mango")}}])
def test_missing_input(client: TestClient, kwargs: dict[str, object]) -> None:
    response = client.post("/v1/crop-doctor", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400 and error_of(response)["code"] == "missing_input"


@pytest.mark.parametrize("kwargs,status,param", [
    ({"json": {"audio": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunk").decode()}}, 400, "audio"),
    ({"json": {"audio": base64.b64encode(b"not audio at all").decode()}}, 415, "audio"),
    ({"json": {"image": "%%%"}}, 400, "image"),
    ({"json": {"question": "hi", "language": "fr"}}, 422, "language"),
    ({"json": {"question": "Rice blast?", "crop": "banana"}}, 400, "crop"),
    ({"content": b"question=hi", "headers": {"content-type": "text/plain"}}, 415, None),
])
def test_bad_input(client: TestClient, kwargs: dict[str, object], status: int, param: str | None) -> None:
    response = client.post("/v1/crop-doctor", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert error_of(response)["param"] == param
