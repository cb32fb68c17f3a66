"""A gateway with no models of its own runs the Crop Guardian against real `kaset worker`
processes: the pipelines reach the workers' models through the router's remote handles
(kaset.workers.remote), and a killed worker's calls go to the other replica, then a clear 503.

Worker A serves every model the crop doctor needs (the ImageNet gate, both mango classifiers,
e5-small, Whisper base, Piper); worker B the vision and advice models only. The gateway's
model folder is empty: nothing can run in its own process.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.gateway_process import gateway_process
from tests.fixtures.images import jpeg, mango_like_leaf
from tests.fixtures.worker_process import WorkerProcess, worker_process
from tests.workers.conftest import TOKEN, auth, gateway_env, ok_calls_by_replica, wait_replica

VISION = "efficientnet-lite0,mango-disease@1,mango-disease@2,e5-small"
EVERYTHING = f"{VISION},whisper-base,piper-joe"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
             installed: object) -> Iterator[tuple[str, WorkerProcess, WorkerProcess]]:
    for name in EVERYTHING.split(","):
        installed(name)  # type: ignore[operator]
    tmp = tmp_path_factory.mktemp("remote-pipelines")
    env = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN}
    with worker_process(tmp, EVERYTHING, env, ready_timeout_s=180) as a, \
            worker_process(tmp, VISION, env, ready_timeout_s=180) as b:
        (tmp / "gw").mkdir()
        (tmp / "no-models").mkdir()
        with gateway_process(tmp / "gw", gateway_env(tmp / "no-models", [a.url, b.url])) as gateway:
            wait_replica(gateway, a.url)
            wait_replica(gateway, b.url)
            yield gateway, a, b


def _photo() -> str:
    return base64.b64encode(jpeg(mango_like_leaf(seed=2, spots=25))).decode()


def _diagnose(gateway: str) -> httpx.Response:
    return httpx.post(f"{gateway}/v1/diagnose", headers=auth(), timeout=60,
                      files={"image": ("leaf.jpg", base64.b64decode(_photo()), "image/jpeg")},
                      data={"crop": "mango", "language": "en"})



def test_the_crop_doctor_runs_on_workers_only(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    question = "How do I treat the black spots on my mango leaves?"
    # Forwarded to worker A (Piper), the only replica with a voice.
    spoken = httpx.post(f"{gateway}/v1/audio/speech", headers=auth(), timeout=60,
                        json={"model": "piper-joe", "input": question, "response_format": "wav"})
    assert spoken.status_code == 200, spoken.text
    response = httpx.post(f"{gateway}/v1/crop-doctor", headers=auth(), timeout=120, json={
        "image": _photo(), "audio": base64.b64encode(spoken.content).decode(), "response_format": "mp3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "mango" in body["transcript"].lower(), body  # Whisper on worker A
    assert body["diagnosis"]["status"] == "diagnosed"  # the gate and the mango models on the workers
    assert body["advice"]["citations"][0]["id"] == body["diagnosis"]["plan"]["entry_id"]  # e5-small
    assert body["audio"]["format"] == "mp3" and body["audio"]["seconds"] > 1  # Piper, encoded here
    # Nothing was loaded in the gateway: every model it knows of is served remotely or absent.
    states = {m["id"]: m["state"] for m in httpx.get(f"{gateway}/v1/models", headers=auth()).json()["data"]}
    assert states["whisper-base"] == states["efficientnet-lite0"] == "remote"
    assert "loaded" not in states.values(), states


def test_diagnoses_are_spread_over_the_replicas(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, a, b = topology
    before = ok_calls_by_replica(gateway)
    for _ in range(6):
        response = _diagnose(gateway)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "diagnosed"
    after = ok_calls_by_replica(gateway)
    assert all(after.get(url, 0) > before.get(url, 0) for url in (a.url, b.url)), (before, after)


def test_an_advice_question_is_answered_from_a_worker(topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, _, _ = topology
    response = httpx.post(f"{gateway}/v1/advice", headers=auth(), timeout=60,
                          json={"question": "ใบข้าวมีแผลรูปตา สีเทา ควรทำอย่างไร"})
    assert response.status_code == 200, response.text
    assert response.json()["citations"][0]["id"] == "rice-blast"


def test_a_killed_worker_is_left_for_the_other_then_a_clear_503(
        topology: tuple[str, WorkerProcess, WorkerProcess]) -> None:
    gateway, a, b = topology
    b.proc.kill()
    b.proc.wait()
    # The gateway learns of it on the first call that reaches B (or its next probe): no call fails.
    for _ in range(4):
        response = _diagnose(gateway)
        assert response.status_code == 200, response.text
    a.proc.kill()
    a.proc.wait()
    response = _diagnose(gateway)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "worker_unavailable" and "retry" in error["message"].lower()
    assert response.headers.get("retry-after")
