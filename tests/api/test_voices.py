"""GET /v1/audio/voices with the real default pack: Piper's one English voice and the voices
eSpeak NG has on this machine, listed without loading either model, each usable as `voice`."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.test_voice import new_key


def voices(client: TestClient, **params: str) -> list[dict[str, object]]:
    response = client.get("/v1/audio/voices", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    return list(body["data"])


def test_lists_every_speech_model_and_each_voice_speaks(client: TestClient) -> None:
    listed = voices(client)
    by_model: dict[str, list[dict[str, object]]] = {}
    for voice in listed:
        by_model.setdefault(str(voice["model"]), []).append(voice)
    assert set(by_model) == {"piper-joe", "espeak-ng"}
    assert [(v["id"], v["language"], v["default"]) for v in by_model["piper-joe"]] == [("joe", "en", True)]
    espeak = by_model["espeak-ng"]
    assert len(espeak) > 50 and [v["default"] for v in espeak].count(True) == 1
    assert not any(str(v["language"]).startswith("th") for v in espeak)  # excluded: its Thai is broken
    vietnamese = next(str(v["id"]) for v in espeak if v["language"] == "vi")
    for model, voice in (("piper-joe", "joe"), ("espeak-ng", vietnamese)):
        spoken = client.post("/v1/audio/speech", json={"model": model, "voice": voice, "input": "Xin chào, hello.",
                                                       "response_format": "wav"})
        assert spoken.status_code == 200 and spoken.content[:4] == b"RIFF", spoken.text


def test_filters_by_language_and_model(client: TestClient) -> None:
    spanish = voices(client, language="es")
    assert spanish and {v["model"] for v in spanish} == {"espeak-ng"}
    assert all(str(v["language"]).split("-")[0] == "es" for v in spanish)
    assert [v["language"] for v in voices(client, language="es_419")] == ["es-419"]
    assert {v["model"] for v in voices(client, language="en")} == {"piper-joe", "espeak-ng"}
    assert voices(client, language="th") == []  # no Thai voice offline: an empty list, not an error
    assert [v["id"] for v in voices(client, model="piper-joe")] == ["joe"]
    assert [v["id"] for v in voices(client, model="tts-1")] == ["joe"]  # an alias of piper-joe


def test_bad_models_are_clear_errors(client: TestClient) -> None:
    unknown = client.get("/v1/audio/voices", params={"model": "no-such-voice-model"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    not_speech = client.get("/v1/audio/voices", params={"model": "e5-small"})
    assert not_speech.status_code == 400 and "does not speak" in not_speech.json()["error"]["message"]


def test_an_allowlisted_key_sees_its_models_only(client: TestClient) -> None:
    key = new_key(client, allowed_models=["piper-joe"])
    headers = {"Authorization": f"Bearer {key}"}
    listed = client.get("/v1/audio/voices", headers=headers).json()["data"]
    assert {v["model"] for v in listed} == {"piper-joe"}
    refused = client.get("/v1/audio/voices", params={"model": "espeak-ng"}, headers=headers)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
