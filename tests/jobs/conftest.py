"""An in-process gateway for the jobs tests: real models (loaded on first use), real auth."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kaset.app import create_app
from kaset.config import Settings

MODELS = ("whisper-tiny.en", "piper-joe", "efficientnet-lite0", "mango-disease")


@pytest.fixture(scope="session")
def job_models(installed: Callable[[str], object], models_dir: Path) -> Path:
    for model_id in MODELS:
        installed(model_id)
    return models_dir


def job_settings(data_dir: Path, models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir, "models_dir": models_dir, "models": [], "max_upload_bytes": 2 * 1024 * 1024,
        "max_audio_seconds": 120, "job_poll_interval_s": 0.1, "job_stale_s": 2.0, "job_cleanup_interval_s": 0.2,
        "request_log": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Gateway:
    client: TestClient
    key: str

    def user_key(self, username: str, role: str = "developer") -> str:
        user = self.client.post("/v1/admin/users", json={"username": username, "role": role})
        assert user.status_code == 201, user.text
        key = self.client.post("/v1/admin/keys", json={"username": username, "label": "jobs-test"})
        assert key.status_code == 201, key.text
        return str(key.json()["key"])

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("completed", "failed", "canceled"),
             timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}")
            assert job.status_code == 200, job.text
            if job.json()["status"] in statuses:
                return dict(job.json())
            assert time.monotonic() < deadline, f"job {job_id} still {job.json()['status']} after {timeout} s"
            time.sleep(0.1)


@contextmanager
def gateway(settings: Settings, key: str | None = None) -> Iterator[Gateway]:
    announced: list[str] = []
    app = create_app(settings, announce_key=announced.append)
    with TestClient(app, raise_server_exceptions=False) as client:
        admin_key = announced[0] if announced else key
        assert admin_key, "no admin key: pass the first start's key"
        client.headers["Authorization"] = f"Bearer {admin_key}"
        yield Gateway(client, admin_key)


_wav_cache: dict[str, bytes] = {}


def speech_wav(client: TestClient, text: str) -> bytes:
    """Real speech (Piper joe through /v1/audio/speech), as WAV bytes."""
    if text not in _wav_cache:
        response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": text, "response_format": "wav"})
        assert response.status_code == 200, response.text
        _wav_cache[text] = response.content
    return _wav_cache[text]
