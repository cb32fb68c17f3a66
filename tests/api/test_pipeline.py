"""POST /v1/pipeline in Bhashini's shape through the gateway, with the real models."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kaset.media.audio import decode_audio


def speech(client: TestClient, text: str) -> str:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text,
                                                     "response_format": "wav"})
    assert response.status_code == 200, response.text
    return base64.b64encode(response.content).decode()


def test_speech_translation_speech_in_one_request(client: TestClient) -> None:
    body = {
        "pipelineTasks": [
            {"taskType": "asr", "config": {"language": {"sourceLanguage": "en"}, "audioFormat": "wav",
                                           "samplingRate": 16000, "preProcessors": ["vad"]}},
            {"taskType": "translation", "config": {"language": {"sourceLanguage": "en", "targetLanguage": "es"}}},
            {"taskType": "tts", "config": {"language": {"sourceLanguage": "es"}, "gender": "female"}},
        ],
        "inputData": {"input": [{"source": None}],
                      "audio": [{"audioContent": speech(client, "The farmer plants rice.")}]},
    }
    response = client.post("/v1/pipeline", json=body)
    assert response.status_code == 200, response.text
    asr, translation, tts = response.json()["pipelineResponse"]
    assert [t["taskType"] for t in (asr, translation, tts)] == ["asr", "translation", "tts"]
    assert "rice" in asr["output"][0]["source"].lower() and asr["audio"] is None
    assert asr["config"]["preProcessors"] == ["vad"]  # Bhashini's extra keys are echoed back
    assert translation["output"][0]["source"] == asr["output"][0]["source"]
    assert "arroz" in translation["output"][0]["target"].lower()
    assert tts["output"] is None and tts["config"]["samplingRate"] > 0 and tts["config"]["serviceId"] == "espeak-ng"
    _samples, seconds = decode_audio(base64.b64decode(tts["audio"][0]["audioContent"]), 60)
    assert seconds > 0.5
    assert response.headers["x-kaset-model"] == "whisper-tiny.en,apertium,espeak-ng"


def test_text_translation(client: TestClient) -> None:
    response = client.post("/v1/pipeline", json={
        "pipelineTasks": [{"taskType": "translation", "config": {"language": {"sourceLanguage": "en",
                                                                              "targetLanguage": "es"}}}],
        "inputData": {"input": [{"source": "The dog sleeps."}]}})
    assert response.status_code == 200, response.text
    (translation,) = response.json()["pipelineResponse"]
    assert translation["output"] == [{"source": "The dog sleeps.", "target": translation["output"][0]["target"]}]
    assert "perro" in translation["output"][0]["target"].lower() and translation["timingMs"] > 0


TTS_EN: dict[str, Any] = {"taskType": "tts", "config": {"language": {"sourceLanguage": "en"}}}


@pytest.mark.parametrize("body,status,param,says", [
    ({"pipelineTasks": [TTS_EN, TTS_EN], "inputData": {"input": [{"source": "hi"}]}},
     400, "pipelineTasks[1]", "it takes text"),
    ({"pipelineTasks": [{"taskType": "asr", "config": {"language": {"sourceLanguage": "en"}}}],
      "inputData": {"input": [{"source": "hi"}]}}, 400, "pipelineTasks[0]", "inputData.audio"),
    ({"pipelineTasks": [{"taskType": "translation", "config": {"language": {"sourceLanguage": "en",
                                                                            "targetLanguage": "fr"}}}],
      "inputData": {"input": [{"source": "hi"}]}}, 400, "pipelineTasks[0].config.language", "en→fr"),
    ({"pipelineTasks": [{"taskType": "ocr"}], "inputData": {"input": [{"source": "hi"}]}},
     422, "pipelineTasks.0.taskType", "asr"),
    ({"pipelineTasks": [], "inputData": {"input": [{"source": "hi"}]}}, 422, "pipelineTasks", "at least 1"),
    ({"pipelineTasks": [{"taskType": "asr"}], "inputData": {"audio": [{"audioContent": "@@@"}]}},
     400, "inputData.audio[0].audioContent", "base64"),
    ({"pipelineTasks": [{"taskType": "asr"}], "inputData": {"audio": [{"audioUri": "http://x/a.wav"}]}},
     400, "inputData.audio[0].audioUri", "audioContent"),
    ({"pipelineTasks": [{"taskType": "asr", "config": {"language": {"sourceLanguage": "en"}}}],
      "inputData": {"audio": [{"audioContent": base64.b64encode(b"not audio at all" * 50).decode()}]}},
     415, "inputData.audio[0].audioContent", "not a recognised audio format"),
    ({"pipelineTasks": [{"taskType": "tts", "config": {"language": {"sourceLanguage": "th"}}}],
      "inputData": {"input": [{"source": "สวัสดี"}]}}, 400, "pipelineTasks[0].config.language.sourceLanguage",
     "no voice for 'th'"),
])
def test_bad_pipelines(client: TestClient, body: dict[str, Any], status: int, param: str | None, says: str) -> None:
    response = client.post("/v1/pipeline", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"]
    if param is not None:
        assert error["param"] == param


def test_the_pipeline_takes_json_only(client: TestClient) -> None:
    response = client.post("/v1/pipeline", data={"pipelineTasks": "asr"})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
