"""The distributed mode: Celery on the real RabbitMQ, the real PostgreSQL, `kaset jobs-worker` processes.

The issue's test: a jobs worker is killed with SIGKILL in the middle of a job; a new worker
comes; the job completes exactly once in the result store.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures import postgres
from tests.fixtures.images import jpeg, photo
from tests.jobs.conftest import Gateway, gateway, job_settings, speech_wav

BROKER = os.environ.get("KASET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
KASET = Path(sys.executable).parent / "kaset"
PARAGRAPH = ("Water the rice field in the morning. Check the young plants for yellow leaves and brown spots. "
             "If the leaves have grey spots shaped like an eye, the plants may have rice blast. "
             "Keep the water level steady and do not use too much nitrogen fertilizer this season.")


def _broker_reachable() -> str | None:
    from kombu import Connection

    try:
        with Connection(BROKER, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at {BROKER} is unreachable ({exc})"
    return None


@pytest.fixture
def queue() -> Iterator[str]:
    reason = _broker_reachable()
    if reason:
        pytest.skip(reason)
    name = f"kaset-jobs-test-{secrets.token_hex(4)}"
    yield name
    from kombu import Connection

    with Connection(BROKER, connect_timeout=3) as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_delete(name)


@pytest.fixture
def pg() -> Iterator[str]:
    with postgres.throwaway_database() as name:
        yield postgres.url(name)


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = log.open("wb")
        self.process = subprocess.Popen([str(KASET), "jobs-worker", "--log-level", "info"], env=env,
                                        stdout=self.out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        self.out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


def _env(data_dir: Path, models_dir: Path, pg: str, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASET_")}
    env.update(KASET_DATA_DIR=str(data_dir), KASET_MODELS_DIR=str(models_dir), KASET_DATABASE_URL=pg,
               KASET_JOBS_BROKER_URL=BROKER, KASET_JOBS_QUEUE=queue, KASET_JOB_STALE_S="30")
    return env


def _wait(g: Gateway, job_id: str, pred, timeout: float, what: str) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        job = g.client.get(f"/v1/jobs/{job_id}").json()
        if pred(job):
            return dict(job)
        assert time.monotonic() < deadline, f"{what}: job is {job}"
        time.sleep(0.02)


def test_worker_killed_mid_job_completes_exactly_once(tmp_path: Path, job_models: Path, pg: str, queue: str) -> None:
    settings = job_settings(tmp_path, job_models, database_url=pg, jobs_broker_url=BROKER, jobs_queue=queue)
    env = _env(tmp_path, job_models, pg, queue)
    workers: list[Worker] = []
    try:
        with gateway(settings) as g:
            wav = speech_wav(g.client, PARAGRAPH)
            job = g.client.post("/v1/jobs", files={"file": ("long.wav", wav, "audio/wav")},
                                data={"kind": "transcribe", "model": "whisper-1"})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            time.sleep(0.5)
            assert g.client.get(f"/v1/jobs/{job_id}").json()["status"] == "pending"  # no worker yet

            first = Worker(env, tmp_path / "worker1.log")
            workers.append(first)
            running = _wait(g, job_id, lambda j: j["status"] != "pending", 120, "the first worker never took it")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
            assert running["status"] == "in_progress" and running["attempt"] == 1, running
            time.sleep(1.0)
            # The dead worker wrote nothing: the job is still in progress, attempt 1.
            left = g.client.get(f"/v1/jobs/{job_id}").json()
            assert left["status"] == "in_progress" and left["attempt"] == 1, (left, first.text())

            second = Worker(env, tmp_path / "worker2.log")
            workers.append(second)
            done = _wait(g, job_id, lambda j: j["status"] in ("completed", "failed"), 180,
                         "the second worker did not finish it")
            assert done["status"] == "completed" and done["attempt"] == 2, (done, second.text())
            result = g.client.get(f"/v1/jobs/{job_id}/result").json()
            assert "rice" in result["text"].lower()
            # Nothing runs it a third time, and exactly one attempt stored an outcome.
            time.sleep(2.0)
            again = g.client.get(f"/v1/jobs/{job_id}").json()
            assert again["attempt"] == 2 and again["finished_at"] == done["finished_at"]
            logs = first.text() + second.text()
            assert logs.count(f"job {job_id} attempt 2: stored") == 1, logs
            assert f"job {job_id} attempt 1: stored" not in logs
            assert "(redelivered)" in second.text(), second.text()
    finally:
        for worker in workers:
            worker.stop()


def test_celery_mode_submit_cancel_retry(tmp_path: Path, job_models: Path, pg: str, queue: str) -> None:
    """A canceled job's message is a no-op for the worker; a retried job is enqueued again and runs."""
    settings = job_settings(tmp_path, job_models, database_url=pg, jobs_broker_url=BROKER, jobs_queue=queue)
    worker: Worker | None = None
    try:
        with gateway(settings) as g:
            cat = base64.b64encode(jpeg(photo("chelsea"))).decode()
            leaf = g.client.post("/v1/jobs", json={"kind": "diagnose", "images": [cat]})
            assert leaf.status_code == 202, leaf.text
            job_id = leaf.json()["id"]
            assert g.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
            worker = Worker(_env(tmp_path, job_models, pg, queue), tmp_path / "worker.log")
            deadline = time.monotonic() + 60
            while f"job {job_id}: canceled; nothing to do" not in worker.text():
                assert time.monotonic() < deadline, worker.text()
                time.sleep(0.1)
            assert g.client.post(f"/v1/jobs/{job_id}/retry").status_code == 202
            done = _wait(g, job_id, lambda j: j["status"] in ("completed", "failed"), 120, "retried job")
            assert done["status"] == "completed", done
            assert g.client.get(f"/v1/jobs/{job_id}/result").json()["data"][0]["status"] == "not_a_plant"
    finally:
        if worker is not None:
            worker.stop()


def test_unreachable_broker_is_503_and_the_job_fails(tmp_path: Path, job_models: Path) -> None:
    settings = job_settings(tmp_path, job_models, jobs_broker_url="amqp://guest:guest@127.0.0.1:1//")
    with gateway(settings) as g:
        wav = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 300).decode()
        response = g.client.post("/v1/jobs", json={"kind": "transcribe", "model": "whisper-1", "file": wav})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "queue_unreachable"
        jobs = g.client.get("/v1/jobs").json()["data"]
        assert jobs[0]["status"] == "failed" and "queue is unreachable" in jobs[0]["error"]["message"]


def test_redis_broker(tmp_path: Path, job_models: Path, pg: str) -> None:
    """The same worker with Redis as the broker instead of RabbitMQ."""
    from tests.fixtures.redis import REDIS_URL, redis_unreachable

    reason = redis_unreachable()
    if reason:
        pytest.fail(reason)
    queue = f"kaset-jobs-test-{secrets.token_hex(4)}"
    settings = job_settings(tmp_path, job_models, database_url=pg, jobs_broker_url=REDIS_URL, jobs_queue=queue)
    env = _env(tmp_path, job_models, pg, queue)
    env["KASET_JOBS_BROKER_URL"] = REDIS_URL
    worker = Worker(env, tmp_path / "worker.log")
    try:
        with gateway(settings) as g:
            cat = base64.b64encode(jpeg(photo("chelsea"))).decode()
            job = g.client.post("/v1/jobs", json={"kind": "diagnose", "images": [cat, cat]})
            assert job.status_code == 202, job.text
            done = _wait(g, job.json()["id"], lambda j: j["status"] in ("completed", "failed"), 120, "redis job")
            assert done["status"] == "completed", (done, worker.text())
            assert len(g.client.get(f"/v1/jobs/{done['id']}/result").json()["data"]) == 2
    finally:
        worker.stop()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(queue)
        client.close()


def test_a_jobs_worker_without_models_runs_jobs_on_a_model_worker(tmp_path: Path, job_models: Path, pg: str,
                                                                   queue: str) -> None:
    """`kaset jobs-worker` with KASET_WORKER_URLS and an empty models folder: the transcription
    job's Whisper runs on a real `kaset worker` (through the model handle), not in the jobs worker."""
    from tests.fixtures.worker_process import worker_process
    from tests.workers.conftest import TOKEN

    settings = job_settings(tmp_path, job_models, database_url=pg, jobs_broker_url=BROKER, jobs_queue=queue)
    empty = tmp_path / "no-models"
    empty.mkdir()
    jobs: Worker | None = None
    with worker_process(tmp_path, "whisper-1", {"KASET_MODELS_DIR": str(job_models), "KASET_WORKER_TOKEN": TOKEN}) \
            as model_worker:
        try:
            with gateway(settings) as g:
                wav = speech_wav(g.client, PARAGRAPH)
                job = g.client.post("/v1/jobs", files={"file": ("long.wav", wav, "audio/wav")},
                                    data={"kind": "transcribe", "model": "whisper-1"})
                assert job.status_code == 202, job.text
                env = _env(tmp_path, empty, pg, queue)
                env.update(KASET_WORKER_URLS=model_worker.url, KASET_WORKER_TOKEN=TOKEN)
                jobs = Worker(env, tmp_path / "jobs-worker.log")
                done = _wait(g, job.json()["id"], lambda j: j["status"] in ("completed", "failed"), 180,
                             "the jobs worker did not finish it")
                assert done["status"] == "completed", (done, jobs.text())
                assert "rice" in g.client.get(f"/v1/jobs/{job.json()['id']}/result").json()["text"].lower()
            scraped = httpx.get(f"{model_worker.url}/metrics", timeout=10).text
            assert 'route="/internal/v1/models/{name}/{method}"' in scraped  # Whisper ran on the model worker
        finally:
            if jobs is not None:
                jobs.stop()
