"""What each kind of job does: the same service calls the synchronous routes make.

A job function gets the services (JobContext), the job and its input folder, and returns the
JSON result to store, or raises (a KasetError's message is what the caller reads).
Both the embedded runner and the Celery worker call `run_job`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kaset.api.routers.audio import _render as render_transcription
from kaset.api.routers.diagnose import to_response
from kaset.config import Settings
from kaset.errors import InvalidRequest, KasetError
from kaset.jobs.store import JobRecord
from kaset.media.image import decode_image
from kaset.pipelines.diagnose import DiagnosisService
from kaset.pipelines.speech import transcribe_bytes
from kaset.registry.routing import Router
from kaset.runtimes.base import TranscribeOptions

log = logging.getLogger(__name__)

TEXT_FORMATS = {"text": "text/plain; charset=utf-8", "srt": "text/plain; charset=utf-8", "vtt": "text/vtt"}


@dataclass
class JobContext:
    """The services a job may call (the app's own in the embedded mode; a worker's in Celery)."""

    settings: Settings
    router: Router
    diagnoser: DiagnosisService


def input_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}-*") if p.is_file())


async def run_transcribe(ctx: JobContext, job: JobRecord, folder: Path) -> Any:
    params = job.params
    files = input_files(folder, "audio")
    if not files:
        raise InvalidRequest("The job's audio file is gone (deleted from the job folder); submit it again.")
    data = await asyncio.to_thread(files[0].read_bytes)
    options = TranscribeOptions(language=params.get("language") or None, prompt=params.get("prompt") or None,
                                temperature=float(params.get("temperature", 0.0)), task="transcribe",
                                word_timestamps=bool(params.get("word_timestamps")))
    fmt = params.get("response_format", "json")
    result, used, _spec, seconds = await transcribe_bytes(ctx.router, data, params["model"], options,
                                                          ctx.settings.max_audio_seconds)
    response = render_transcription(result, fmt, used.task, {})
    body = bytes(response.body).decode("utf-8")
    if fmt in TEXT_FORMATS:
        return {"content": body, "media_type": TEXT_FORMATS[fmt], "audio_seconds": round(seconds, 3)}
    return json.loads(body)


async def run_diagnose(ctx: JobContext, job: JobRecord, folder: Path) -> Any:
    params = job.params
    files = input_files(folder, "image")
    if not files:
        raise InvalidRequest("The job's images are gone (deleted from the job folder); submit them again.")
    language: Literal["th", "en"] = "th" if params.get("language") == "th" else "en"
    results: list[dict[str, Any]] = []
    for index, path in enumerate(files):
        data = await asyncio.to_thread(path.read_bytes)
        try:
            image = await asyncio.to_thread(decode_image, data, max_pixels=ctx.settings.max_image_pixels)
        except KasetError as exc:
            # A bad image fails the whole job at once, naming it: no half-done batch to untangle.
            raise type(exc)(f"Image {index} of {len(files)}: {exc.message}", param=f"images[{index}]") from None
        diagnosis = await ctx.diagnoser.diagnose(image, crop=params.get("crop"), language=language,
                                                 k=int(params.get("top_k", 3)), compare=bool(params.get("compare")),
                                                 ab_key=params.get("ab_key"))
        results.append({"index": index, **to_response(diagnosis).model_dump(mode="json")})
    return {"object": "list", "data": results}


JobFunction = Callable[[JobContext, JobRecord, Path], Awaitable[Any]]
KIND_FUNCTIONS: dict[str, JobFunction] = {"transcribe": run_transcribe, "diagnose": run_diagnose}


def error_of(exc: BaseException) -> dict[str, Any]:
    """The stored error: the API's error envelope contents, with a message a person can act on."""
    if isinstance(exc, KasetError):
        return {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code,
                "status": exc.status_code}
    return {"message": f"The job failed with an internal error ({type(exc).__name__}: {exc}).",
            "type": "server_error", "param": None, "code": "job_failed", "status": 500}


async def run_job(ctx: JobContext, job: JobRecord, folder: Path) -> tuple[Any, dict[str, Any] | None]:
    """(result, None) on success, (None, error) on failure; never raises but for cancellation."""
    function = KIND_FUNCTIONS.get(job.kind)
    if function is None:
        return None, error_of(InvalidRequest(f"Unknown job kind '{job.kind}'.", param="kind"))
    try:
        return await function(ctx, job, folder), None
    except KasetError as exc:
        log.info("job %s (%s) failed: %s", job.id, job.kind, exc.message)
        return None, error_of(exc)
    except Exception as exc:
        log.exception("job %s (%s) failed", job.id, job.kind)
        return None, error_of(exc)
