"""Async jobs through the gateway, embedded runner, SQLite, real models."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kaset.store.db import Database
from tests.fixtures.images import jpeg, mango_like_leaf, photo
from tests.jobs.conftest import Gateway, gateway, job_settings, speech_wav

SENTENCE = "Water the rice field in the morning."
PARAGRAPH = ("Water the rice field in the morning. Check the young plants for yellow leaves and brown spots. "
             "If the leaves have grey spots shaped like an eye, the plants may have rice blast. "
             "Keep the water level steady and do not use too much nitrogen fertilizer this season.")
# A WAV header with nothing valid after it: it passes the submission's cheap check, then fails to decode.
CORRUPT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 300


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, job_models: Path) -> Iterator[Gateway]:
    with gateway(job_settings(tmp_path_factory.mktemp("jobs-data"), job_models)) as g:
        yield g


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, job_models: Path) -> Iterator[Gateway]:
    """A gateway whose runner is off: its jobs stay pending, so states can be tested without races."""
    with gateway(job_settings(tmp_path_factory.mktemp("idle-data"), job_models, jobs_runner=False,
                              job_result_ttl_s=1.0)) as g:
        yield g


def submit_transcribe(g: Gateway, audio: bytes, key: str | None = None, **fields: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return g.client.post("/v1/jobs", files={"file": ("long.wav", audio, "audio/wav")},
                         data={"kind": "transcribe", "model": "whisper-1", **fields}, headers=headers)


def test_transcribe_submit_poll_result(gw: Gateway) -> None:
    wav = speech_wav(gw.client, SENTENCE)
    response = submit_transcribe(gw, wav)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "job" and job["kind"] == "transcribe" and job["status"] == "pending"
    assert job["id"].startswith("job_") and isinstance(job["created_at"], int)
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    # The upload lives under <data_dir>/jobs/<id>/, not in the row.
    folder = gw.client.app.state.jobs.store.folder(job["id"])  # type: ignore[attr-defined]
    assert (folder / "audio-0").read_bytes() == wav
    done = gw.wait(job["id"])
    assert done["status"] == "completed", done
    assert done["attempt"] == 1 and done["finished_at"] and done["expires_at"] > done["finished_at"]
    result = gw.client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200, result.text
    text = result.json()["text"].lower()
    assert "rice" in text and "morning" in text
    # The same as the synchronous route.
    sync = gw.client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                          data={"model": "whisper-1"})
    assert sync.json() == result.json()


def test_transcribe_text_formats(gw: Gateway) -> None:
    job = submit_transcribe(gw, speech_wav(gw.client, SENTENCE), response_format="vtt").json()
    assert gw.wait(job["id"])["status"] == "completed"
    result = gw.client.get(f"/v1/jobs/{job['id']}/result")
    assert result.headers["content-type"].startswith("text/vtt") and result.text.startswith("WEBVTT")


def test_transcribe_json_body_base64(gw: Gateway) -> None:
    wav = speech_wav(gw.client, SENTENCE)
    response = gw.client.post("/v1/jobs", json={"kind": "transcribe", "model": "whisper-1",
                                                "file": base64.b64encode(wav).decode(), "language": "en"})
    assert response.status_code == 202, response.text
    assert gw.wait(response.json()["id"])["status"] == "completed"


def test_diagnose_batch(gw: Gateway) -> None:
    leaf = base64.b64encode(jpeg(mango_like_leaf(seed=2, spots=25), quality=95)).decode()
    cat = base64.b64encode(jpeg(photo("chelsea"))).decode()
    response = gw.client.post("/v1/jobs", json={"kind": "diagnose", "images": [f"data:image/jpeg;base64,{leaf}", cat],
                                                "language": "en"})
    assert response.status_code == 202, response.text
    done = gw.wait(response.json()["id"])
    assert done["status"] == "completed", done
    result = gw.client.get(f"/v1/jobs/{done['id']}/result").json()
    assert result["object"] == "list" and [r["index"] for r in result["data"]] == [0, 1]
    assert result["data"][0]["status"] == "diagnosed" and result["data"][0]["crop"] == "mango"
    assert result["data"][1]["status"] == "not_a_plant"


def test_diagnose_multipart_files(gw: Gateway) -> None:
    leaf = jpeg(mango_like_leaf(seed=3, spots=20))
    files = [("image", ("a.jpg", leaf, "image/jpeg")), ("image", ("b.jpg", leaf, "image/jpeg"))]
    response = gw.client.post("/v1/jobs", data={"kind": "diagnose", "crop": "mango", "compare": "true"}, files=files)
    assert response.status_code == 202, response.text
    done = gw.wait(response.json()["id"])
    assert done["status"] == "completed", done
    assert len(gw.client.get(f"/v1/jobs/{done['id']}/result").json()["data"]) == 2


def test_corrupt_audio_fails_with_a_clear_message_and_retry(gw: Gateway) -> None:
    response = submit_transcribe(gw, CORRUPT_WAV)
    assert response.status_code == 202, response.text  # not decoded up front: accepted, then failed
    done = gw.wait(response.json()["id"])
    assert done["status"] == "failed" and done["error"]["message"]
    result = gw.client.get(f"/v1/jobs/{done['id']}/result")
    assert result.status_code == 400, result.text
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith("The job failed: Could not decode the audio"), error
    # Retry: failed -> pending -> run again (the same input fails the same way, on attempt 2).
    retried = gw.client.post(f"/v1/jobs/{done['id']}/retry")
    assert retried.status_code == 202 and retried.json()["status"] in ("pending", "in_progress", "failed")
    again = gw.wait(done["id"])
    assert again["status"] == "failed" and again["attempt"] == 2


def test_retry_after_a_transient_failure_completes(tmp_path: Path, job_models: Path) -> None:
    """The model is not installed when the job runs (it fails with the reason); once it is, retry works."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "piper-joe").symlink_to(job_models / "piper-joe")
    with gateway(job_settings(tmp_path / "data", models)) as g:
        response = submit_transcribe(g, speech_wav(g.client, SENTENCE))
        assert response.status_code == 202, response.text
        failed = g.wait(response.json()["id"])
        assert failed["status"] == "failed" and "install" in failed["error"]["message"].lower(), failed
        result = g.client.get(f"/v1/jobs/{failed['id']}/result")
        # The model's 404 would read as "no such job" here: a failed job that named a missing model is a 400.
        assert result.status_code == 400 and result.json()["error"]["code"] == "model_not_found", result.text
        (models / "whisper-tiny.en").symlink_to(job_models / "whisper-tiny.en")
        assert g.client.post(f"/v1/jobs/{failed['id']}/retry").status_code == 202
        done = g.wait(failed["id"])
        assert done["status"] == "completed" and done["attempt"] == 2 and done["error"] is None, done
        assert "rice" in g.client.get(f"/v1/jobs/{failed['id']}/result").json()["text"].lower()


def test_cancel_and_retry_state_transitions(idle: Gateway) -> None:
    wav = speech_wav(idle.client, SENTENCE)
    job = submit_transcribe(idle, wav).json()
    result = idle.client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 409 and "not ready" in result.json()["error"]["message"]
    assert idle.client.post(f"/v1/jobs/{job['id']}/retry").status_code == 409  # only failed/canceled
    canceled = idle.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert idle.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # idempotent
    result = idle.client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 409 and "canceled" in result.json()["error"]["message"]
    retried = idle.client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"


def test_cancel_of_a_running_job_discards_its_outcome(idle: Gateway) -> None:
    job = submit_transcribe(idle, speech_wav(idle.client, SENTENCE)).json()
    store = idle.client.app.state.jobs.store  # type: ignore[attr-defined]

    async def claim_then_finish_after_cancel() -> bool:
        claimed = await store.claim(job["id"], "test-runner")
        assert claimed is not None and claimed.status == "in_progress"
        assert idle.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "in_progress"
        assert idle.client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
        return bool(await store.finish(job["id"], claimed.attempt, result={"text": "too late"}))

    assert asyncio.run(claim_then_finish_after_cancel()) is False
    assert idle.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_owner_isolation(idle: Gateway) -> None:
    job = submit_transcribe(idle, speech_wav(idle.client, SENTENCE)).json()
    alice = idle.user_key("alice-jobs")
    bob = idle.user_key("bob-jobs")
    mine = submit_transcribe(idle, speech_wav(idle.client, SENTENCE), key=alice).json()
    as_bob = {"Authorization": f"Bearer {bob}"}
    for path in (f"/v1/jobs/{mine['id']}", f"/v1/jobs/{mine['id']}/result", f"/v1/jobs/{job['id']}"):
        response = idle.client.get(path, headers=as_bob)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert idle.client.post(f"/v1/jobs/{mine['id']}/cancel", headers=as_bob).status_code == 404
    assert idle.client.post(f"/v1/jobs/{mine['id']}/retry", headers=as_bob).status_code == 404
    assert idle.client.get("/v1/jobs", headers=as_bob).json()["data"] == []
    as_alice = {"Authorization": f"Bearer {alice}"}
    assert [j["id"] for j in idle.client.get("/v1/jobs", headers=as_alice).json()["data"]] == [mine["id"]]
    assert idle.client.get(f"/v1/jobs/{mine['id']}", headers=as_alice).status_code == 200
    # Admins see everyone's.
    ids = [j["id"] for j in idle.client.get("/v1/jobs?limit=100").json()["data"]]
    assert mine["id"] in ids and job["id"] in ids
    assert idle.client.get("/v1/jobs/job_nope").status_code == 404


def test_expired_result_is_404_then_deleted_with_its_files(tmp_path: Path, job_models: Path) -> None:
    # The periodic cleanup runs at start and then hourly here: the test runs it itself.
    settings = job_settings(tmp_path, job_models, jobs_runner=False, job_result_ttl_s=0.5,
                            job_cleanup_interval_s=3600)
    with gateway(settings) as g:
        job = submit_transcribe(g, speech_wav(g.client, SENTENCE)).json()
        store = g.client.app.state.jobs.store  # type: ignore[attr-defined]
        folder: Path = store.folder(job["id"])
        assert folder.is_dir()
        assert g.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # finished: its TTL runs
        time.sleep(0.7)
        response = g.client.get(f"/v1/jobs/{job['id']}/result")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "job_expired" and "expired at" in response.json()["error"]["message"]
        assert asyncio.run(store.delete_expired()) == [job["id"]]
        assert not folder.exists()
        gone = g.client.get(f"/v1/jobs/{job['id']}/result")
        assert gone.status_code == 404 and "deleted" in gone.json()["error"]["message"]


@pytest.mark.parametrize("kwargs,status,needle", [
    ({"json": {"kind": "summarize"}}, 400, "Unknown job kind 'summarize'"),
    ({"json": {"images": []}}, 400, "Unknown job kind none"),
    ({"data": {"kind": "upscale"}, "files": {"file": ("a.wav", b"x", "audio/wav")}}, 400, "Unknown job kind"),
    ({"data": {"kind": "transcribe", "model": "whisper-1"}, "files": {"image": ("a.jpg", b"x", "image/jpeg")}}, 400,
     "one audio file"),
    ({"json": {"kind": "transcribe", "model": "whisper-1"}}, 400, "needs the audio"),
    ({"data": {"kind": "transcribe", "model": "whisper-1"}, "files": {"file": ("a.mp3", b"hello" * 50, "audio/mpeg")}},
     415, "not a recognised audio format"),
    ({"json": {"kind": "transcribe", "file": "UklGRg=="}}, 400, "needs 'model'"),
    ({"data": {"kind": "transcribe", "model": "whisper-1"}, "files": {"file": ("a.wav", b"", "audio/wav")}}, 400,
     "empty"),
    ({"json": {"kind": "diagnose", "images": []}}, 400, "at least one image"),
    ({"json": {"kind": "diagnose", "images": [base64.b64encode(b"not an image" * 20).decode()]}}, 415,
     "Image 0 is not an image"),
    ({"json": {"kind": "diagnose", "images": ["%%%"]}}, 400, "not valid base64"),
    ({"json": {"kind": "diagnose", "images": [base64.b64encode(b"x" * 10).decode()], "language": "fr"}}, 400,
     "'th' or 'en'"),
    ({"json": {"kind": "transcribe", "model": "whisper-1", "file": "UklGRg==", "webhook_url": "ftp://x"}}, 400,
     "webhook_url"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"kind=transcribe", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
])
def test_bad_input(idle: Gateway, kwargs: dict[str, Any], status: int, needle: str) -> None:
    response = idle.client.post("/v1/jobs", **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"], response.text


def test_huge_payloads_are_413(idle: Gateway) -> None:
    limit = 2 * 1024 * 1024
    # A file over the upload limit (the body is still under the gateway's body cap).
    big = b"\x00" * (limit + 10)
    response = submit_transcribe(idle, big)
    assert response.status_code == 413, response.text
    # A JSON body over the gateway's cap is refused before it is read.
    huge = base64.b64encode(b"\x00" * (limit * 2)).decode()
    response = idle.client.post("/v1/jobs", json={"kind": "diagnose", "images": [huge]})
    assert response.status_code == 413
    # Too many images.
    tiny = base64.b64encode(jpeg(photo("chelsea")[:8, :8])).decode()
    response = idle.client.post("/v1/jobs", json={"kind": "diagnose", "images": [tiny] * 65})
    assert response.status_code == 400 and "at most 64" in response.json()["error"]["message"]


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_on_completion_and_failure(gw: Gateway) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        ok = submit_transcribe(gw, speech_wav(gw.client, SENTENCE), webhook_url=url).json()
        bad = submit_transcribe(gw, CORRUPT_WAV, webhook_url=url).json()
        # A webhook nobody answers does not hold the runner up.
        dead = submit_transcribe(gw, CORRUPT_WAV, webhook_url="http://127.0.0.1:9/none").json()
        for job in (ok, bad, dead):
            gw.wait(job["id"])
        deadline = time.monotonic() + 20
        while len(_Hook.received) < 2:
            assert time.monotonic() < deadline, _Hook.received
            time.sleep(0.05)
        by_id = {h["id"]: h for h in _Hook.received}
        assert by_id[ok["id"]]["status"] == "completed" and by_id[ok["id"]]["result_url"].endswith("/result")
        assert by_id[bad["id"]]["status"] == "failed" and by_id[bad["id"]]["error"]["message"]
    finally:
        server.shutdown()


def test_restart_resumes_a_job_left_in_progress(tmp_path: Path, job_models: Path) -> None:
    settings = job_settings(tmp_path, job_models, jobs_runner=False)
    with gateway(settings) as first:
        job = submit_transcribe(first, speech_wav(first.client, SENTENCE)).json()
        store = first.client.app.state.jobs.store  # type: ignore[attr-defined]
        # A runner took it, then its process died (no more heartbeats, no hand-back).
        claimed = asyncio.run(store.claim(job["id"], "dead-runner"))
        assert claimed is not None
        assert first.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "in_progress"
        key = first.key
    # Its database row, as the dead process left it, seen from a new process with a runner.
    assert asyncio.run(_status(settings.resolved_database_url, job["id"])) == "in_progress"
    with gateway(job_settings(tmp_path, job_models, job_stale_s=1.0), key=key) as second:
        done = second.wait(job["id"], timeout=120)
        assert done["status"] == "completed" and done["attempt"] == 2, done
        assert "rice" in second.client.get(f"/v1/jobs/{job['id']}/result").json()["text"].lower()


def _wait_running(g: Gateway, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = g.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "pending":
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.01)


def test_shutdown_mid_job_hands_it_back(tmp_path: Path, job_models: Path) -> None:
    settings = job_settings(tmp_path, job_models, job_stale_s=60)
    with gateway(settings) as first:
        wav = speech_wav(first.client, PARAGRAPH)
        job = submit_transcribe(first, wav).json()
        running = _wait_running(first, job["id"])
        assert running["status"] == "in_progress", running
        key = first.key
    # Handed back at shutdown: pending at once, not after job_stale_s.
    assert asyncio.run(_status(settings.resolved_database_url, job["id"])) == "pending"
    with gateway(settings, key=key) as second:
        done = second.wait(job["id"])
        assert done["status"] == "completed" and done["attempt"] == 2, done


def test_cancel_of_a_running_job_stops_waiting_for_it(tmp_path: Path, job_models: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with gateway(job_settings(tmp_path, job_models, job_stale_s=0.4)) as g:
        job = submit_transcribe(g, speech_wav(g.client, PARAGRAPH)).json()
        assert _wait_running(g, job["id"])["status"] == "in_progress"
        with caplog.at_level("INFO", logger="kaset.jobs.runner"):
            assert g.client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
            # The runner notices at its next heartbeat and takes the next job.
            after = submit_transcribe(g, speech_wav(g.client, SENTENCE)).json()
            assert g.wait(after["id"])["status"] == "completed"
        assert g.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
        assert g.client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert f"job {job['id']} attempt 1: canceled or taken back" in messages, messages
        assert f"job {job['id']} attempt 1: stored" not in messages


async def _status(url: str, job_id: str) -> str | None:
    from kaset.jobs.store import JobStore

    db = Database(url)
    try:
        job = await JobStore(db, Path("/nonexistent"), 60).get(job_id)
        return job.status if job else None
    finally:
        await db.close()


def test_embedded_runner_on_postgresql_resumes_after_a_crash(tmp_path: Path, job_models: Path) -> None:
    """The embedded mode on the real PostgreSQL: a job a dead process left in progress completes."""
    from tests.fixtures import postgres

    with postgres.throwaway_database() as name:
        url = postgres.url(name)
        settings = job_settings(tmp_path, job_models, database_url=url, jobs_runner=False)
        with gateway(settings) as first:
            job = submit_transcribe(first, speech_wav(first.client, SENTENCE)).json()
            key = first.key
        assert asyncio.run(_claim(url, job["id"])) == 1  # a runner took it, then died
        with gateway(job_settings(tmp_path, job_models, database_url=url, job_stale_s=1.0), key=key) as second:
            done = second.wait(job["id"])
            assert done["status"] == "completed" and done["attempt"] == 2, done


async def _claim(url: str, job_id: str) -> int:
    from kaset.jobs.store import JobStore

    db = Database(url)
    try:
        job = await JobStore(db, Path("/nonexistent"), 60).claim(job_id, "dies")
        return job.attempt if job else 0
    finally:
        await db.close()
