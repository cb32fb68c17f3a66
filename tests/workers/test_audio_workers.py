"""Audio through a worker: speech streamed back as it is made, an upload forwarded as multipart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.worker_process import worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, wait_replica


def test_speech_and_transcription_through_a_worker(tmp_path: Path, models_dir: Path,
                                                   installed: Callable[[str], object]) -> None:
    installed("piper-joe")
    installed("whisper-tiny.en")
    env = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN}
    with worker_process(tmp_path, "piper-joe,whisper-tiny.en", env) as worker:
        (tmp_path / "gw").mkdir()
        with gateway_process(tmp_path / "gw", gateway_env(models_dir, [worker.url])) as gateway:
            wait_replica(gateway, worker.url)
            chunks: list[bytes] = []
            with httpx.stream("POST", f"{gateway}/v1/audio/speech", headers=auth(), timeout=60,
                              json={"model": "tts-1", "input": "Hello from the worker.",
                                    "response_format": "wav"}) as r:
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("audio/")
                chunks.extend(r.iter_raw())
            wav = b"".join(chunks)
            assert wav[:4] == b"RIFF" and len(wav) > 10_000
            r2 = httpx.post(f"{gateway}/v1/audio/transcriptions", headers=auth(), timeout=60,
                            data={"model": "whisper-tiny.en"}, files={"file": ("a.wav", wav, "audio/wav")})
            assert r2.status_code == 200, r2.text
            assert "worker" in r2.json()["text"].lower()
            # A model's voices are asked of the worker that serves it.
            voices = httpx.get(f"{gateway}/v1/audio/voices", params={"model": "tts-1"}, headers=auth(), timeout=30)
            assert voices.status_code == 200, voices.text
            assert [(v["id"], v["model"]) for v in voices.json()["data"]] == [("joe", "piper-joe")]
            scraped = httpx.get(f"{worker.url}/metrics", timeout=10).text
            # Speech, transcription and the voice list were model calls on the worker (its task
            # API), not OpenAI routes forwarded to it.
            assert 'route="/internal/v1/models/{name}/info"' in scraped
            assert 'route="/internal/v1/models/{name}/{method}"' in scraped
            assert 'route="/v1/audio/speech"' not in scraped
