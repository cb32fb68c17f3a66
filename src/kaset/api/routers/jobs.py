"""Durable async jobs (docs/jobs.md): POST /v1/jobs, then poll, fetch the result, cancel, retry.

Submission stores the input under <data_dir>/jobs/<id>/ and a `pending` row; a runner (the
embedded one, or a Celery `kaset jobs-worker`) does the work with the synchronous routes' code.
Each job belongs to the user who submitted it (any of their keys); others get 404, admins see all.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from kaset.api.deps import SettingsDep, check_model_allowed
from kaset.api.policy import PLAIN, apply_policy
from kaset.api.responses import json_response
from kaset.api.schemas.jobs import JobJSONRequest, JobList, JobObject, JobStatus
from kaset.api.uploads import image_from_base64
from kaset.auth.principal import Principal
from kaset.config import Settings
from kaset.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from kaset.jobs import KINDS
from kaset.jobs.runner import Jobs
from kaset.jobs.store import JobRecord, new_job_id
from kaset.media.audio import SUPPORTED_INPUT_FORMATS, sniff_container

router = APIRouter(tags=["jobs"])


def _jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


def _principal(request: Request) -> Principal | None:
    return getattr(request.state, "key", None)


def _ttl_text(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} s"


async def _visible_job(request: Request, job_id: str) -> JobRecord:
    jobs = _jobs(request)
    job = await jobs.store.get(job_id)
    principal = _principal(request)
    if job is None or (principal is not None and not principal.is_admin and job.owner_user_id != principal.user_id):
        raise NotFound(f"No job '{job_id}'. Jobs are deleted with their results "
                       f"{_ttl_text(jobs.settings.job_result_ttl_s)} after they finish.", param="id",
                       code="job_not_found")
    if job.expired and job.expires_at is not None:
        raise NotFound(f"Job '{job_id}' expired at {job.expires_at.isoformat(timespec='seconds')}: results are "
                       f"kept {_ttl_text(jobs.settings.job_result_ttl_s)} after the job finishes.",
                       param="id", code="job_expired")
    return job


def _check_webhook(url: str | None) -> str | None:
    if not url:
        return None
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise InvalidRequest("'webhook_url' must be an http:// or https:// URL (at most 2000 characters).",
                             param="webhook_url")
    return url


def _check_size(data: bytes, limit: int, what: str, param: str) -> None:
    if len(data) > limit:
        raise PayloadTooLarge(f"{what} is larger than this server's limit of {limit} bytes.", param=param)
    if not data:
        raise InvalidRequest(f"{what} is empty (0 bytes).", param=param)


def _sniff_image(data: bytes, index: int) -> None:
    """Cheap up-front check (the header only): a file that is no image at all is refused at once."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.format  # noqa: B018
    except (UnidentifiedImageError, OSError):
        raise UnsupportedMediaType(f"Image {index} is not an image this server can read (send JPEG, PNG or "
                                   "WebP photos).", param=f"images[{index}]") from None


async def _read_file(upload: UploadFile, limit: int, what: str, param: str) -> bytes:
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLarge(f"{what} is {upload.size} bytes; this server accepts at most {limit}.", param=param)
    data = await upload.read(limit + 1)
    _check_size(data, limit, what, param)
    return data


def _form_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


async def _parse(request: Request,
                 settings: Settings) -> tuple[str, dict[str, Any], list[tuple[str, bytes]], str | None]:
    """(kind, params, input files as (name, bytes), webhook_url) from a multipart or JSON submission."""
    limit = settings.max_upload_bytes
    max_images = settings.job_max_images
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit, max_files=max_images + 1)
        fields: dict[str, Any] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        fields["timestamp_granularities"] = [v for v in form.getlist("timestamp_granularities[]")
                                             if isinstance(v, str)]
        kind = str(fields.get("kind", ""))
        _check_kind(kind)
        keys = ("file",) if kind == "transcribe" else ("image", "images", "file")
        uploads = [v for key in keys for v in form.getlist(key) if isinstance(v, UploadFile)]
        files: list[bytes] = []
        if kind == "transcribe":
            if len(uploads) != 1:
                raise InvalidRequest("A transcribe job takes one audio file: send it as the file field 'file'.",
                                     param="file")
            files.append(await _read_file(uploads[0], limit, "The audio file", "file"))
            fields["filename"] = uploads[0].filename
        else:
            if len(uploads) > max_images:
                raise InvalidRequest(f"A diagnose job takes at most {max_images} images; got {len(uploads)}.",
                                     param="images")
            for i, upload in enumerate(uploads):
                files.append(await _read_file(upload, limit, f"Image {i}", f"images[{i}]"))
        fields.pop("kind", None)
        try:
            body = JobJSONRequest.model_validate({"kind": kind, **{k: v for k, v in fields.items()
                                                                   if k in JobJSONRequest.model_fields}})
        except ValidationError as exc:
            raise _validation_failed(exc) from None
    elif content_type.split(";")[0].strip().endswith("json"):
        try:
            raw = json.loads(await request.body())
        except ValueError:
            raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        _check_kind(str(raw.get("kind", "")))
        try:
            body = JobJSONRequest.model_validate(raw)
        except ValidationError as exc:
            raise _validation_failed(exc) from None
        files = []
        if body.kind == "transcribe":
            if not body.file:
                raise InvalidRequest("A transcribe job needs the audio: 'file' as base64 (or upload it with "
                                     "multipart/form-data).", param="file")
            data = image_from_base64(body.file, param="file")
            _check_size(data, limit, "The audio file", "file")
            files.append(data)
        else:
            images = body.images or []
            if len(images) > max_images:
                raise InvalidRequest(f"A diagnose job takes at most {max_images} images; got {len(images)}.",
                                     param="images")
            for i, encoded in enumerate(images):
                data = image_from_base64(encoded, param=f"images[{i}]")
                _check_size(data, limit, f"Image {i}", f"images[{i}]")
                files.append(data)
    else:
        raise UnsupportedMediaType("Send a job as multipart/form-data (files) or JSON (base64 data), with 'kind'.")

    webhook = _check_webhook(body.webhook_url)
    if body.kind == "transcribe":
        if not body.model:
            raise InvalidRequest("A transcribe job needs 'model' (e.g. whisper-1).", param="model")
        check_model_allowed(request, body.model)
        if sniff_container(files[0]) is None:  # cheap: the first bytes; decoding is the job's work
            raise UnsupportedMediaType("The file is not a recognised audio format. Supported formats: "
                                       + ", ".join(SUPPORTED_INPUT_FORMATS) + ".", param="file")
        params: dict[str, Any] = {
            "model": body.model, "language": body.language or None, "prompt": body.prompt or None,
            "response_format": body.response_format, "temperature": body.temperature,
            "word_timestamps": "word" in (body.timestamp_granularities or []),
            "filename": (body.filename or "audio")[:200]}
        named = [("audio-0", files[0])]
    else:
        if not files:
            raise InvalidRequest("A diagnose job needs at least one image: 'images' (base64) or file fields "
                                 "named 'image'.", param="images")
        if body.language not in (None, "th", "en"):
            raise InvalidRequest("'language' must be 'th' or 'en' for a diagnose job.", param="language")
        for i, data in enumerate(files):
            await asyncio.to_thread(_sniff_image, data, i)
        params = {"crop": body.crop, "language": body.language or "en", "top_k": body.top_k,
                  "compare": body.compare, "ab_key": body.ab_key, "images": len(files)}
        named = [(f"image-{i:04d}", data) for i, data in enumerate(files)]
    return body.kind, params, named, webhook


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        shown = f"'{kind}'" if kind else "none"
        raise InvalidRequest(f"Unknown job kind {shown}. Kinds: {', '.join(KINDS)}.", param="kind",
                             code="unknown_job_kind")


def _validation_failed(exc: ValidationError) -> ValidationFailed:
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"]))
    return ValidationFailed(f"Invalid request: {where}: {first['msg']}", param=where)


def _write_inputs(folder: Path, files: list[tuple[str, bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)


async def _queue(jobs: Jobs, job_id: str, outcome: str) -> None:
    """Hand a pending job to its runner (or the Celery broker). If that fails the job is marked
    failed and the caller gets 503: nothing accepted stays pending with nobody to run it."""
    try:
        await jobs.submitted(job_id)
    except Exception as exc:
        message = f"The job queue is unreachable ({type(exc).__name__}); {outcome}"
        await jobs.store.fail(job_id, {"message": message, "type": "server_error", "param": None,
                                       "code": "queue_unreachable", "status": 503})
        raise Overloaded(message, code="queue_unreachable") from exc


@router.post("/v1/jobs", status_code=202, response_model=JobObject,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "kind": {"type": "string", "enum": list(KINDS)},
                     "file": {"type": "string", "format": "binary"},
                     "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                     "model": {"type": "string"}, "webhook_url": {"type": "string"}}}},
                 "application/json": {"schema": JobJSONRequest.model_json_schema()}}}})
async def submit(request: Request, settings: SettingsDep) -> Response:
    """Submit a long job: 202 with its id at once; the work runs in the background."""
    jobs = _jobs(request)
    kind, params, files, webhook = await _parse(request, settings)
    principal = _principal(request)
    job_id = new_job_id()
    folder = jobs.store.folder(job_id)
    await asyncio.to_thread(_write_inputs, folder, files)
    job = await jobs.store.create(job_id, kind, params, webhook_url=webhook,
                                  owner_user_id=principal.user_id if principal else None,
                                  owner_key_id=principal.key_id if principal else None)
    await _queue(jobs, job_id, "the job was not accepted. Try again later.")
    return json_response(JobObject.of(job), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.get("/v1/jobs", response_model=JobList)
async def list_jobs(request: Request, status: JobStatus | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    """The caller's jobs, newest first (an admin's: everyone's)."""
    principal = _principal(request)
    everyone = principal is None or principal.is_admin
    found = await _jobs(request).store.list_jobs(principal.user_id if principal else None, everyone=everyone,
                                                 status=status, limit=limit)
    return json_response(JobList(data=[JobObject.of(j) for j in found if not j.expired]))


@router.get("/v1/jobs/{job_id}", response_model=JobObject)
async def get_job(request: Request, job_id: str) -> Response:
    return json_response(JobObject.of(await _visible_job(request, job_id)))


@router.get("/v1/jobs/{job_id}/result")
async def get_result(request: Request, job_id: str) -> Response:
    """200 with the result once completed; 409 before; the job's error when it failed."""
    job = await _visible_job(request, job_id)
    if job.status == "completed":
        result = job.result
        if job.kind == "transcribe" and isinstance(result, dict) and "media_type" in result and "content" in result:
            return PlainTextResponse(str(result["content"]), media_type=str(result["media_type"]))
        return JSONResponse(result)
    if job.status == "failed":
        error = dict(job.error or {})
        status = int(error.pop("status", 500) or 500)
        if status == 404:
            # 404 on this route means "no such job"; a job that named a missing model is a bad request.
            status = 400
        envelope = {"message": f"The job failed: {error.get('message', 'no reason recorded')}",
                    "type": error.get("type", "server_error"), "param": error.get("param"),
                    "code": error.get("code") or "job_failed"}
        return JSONResponse({"error": envelope}, status_code=status)
    if job.status == "canceled":
        raise Conflict(f"Job '{job_id}' was canceled; it has no result. Retry it with POST /v1/jobs/{job_id}/retry.",
                       code="job_canceled")
    state = "waiting to run" if job.status == "pending" else "running"
    raise Conflict(f"Job '{job_id}' is {job.status} ({state}); its result is not ready yet. Poll "
                   f"GET /v1/jobs/{job_id} until its status is 'completed'.", code="job_not_finished")


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobObject)
async def cancel(request: Request, job_id: str) -> Response:
    """Cancel a pending or running job (a running job's outcome is discarded when it ends)."""
    job = await _visible_job(request, job_id)
    store = _jobs(request).store
    if job.status != "canceled" and not await store.cancel(job_id):
        current = await store.get(job_id)
        raise Conflict(f"Job '{job_id}' is already {current.status if current else 'gone'}; only pending or "
                       "in_progress jobs can be canceled.", code="job_finished")
    return json_response(JobObject.of(await _visible_job(request, job_id)))


@router.post("/v1/jobs/{job_id}/retry", response_model=JobObject, status_code=202)
async def retry(request: Request, job_id: str) -> Response:
    """Run a failed or canceled job again (pending once more)."""
    await _visible_job(request, job_id)
    jobs = _jobs(request)
    if not await jobs.store.retry(job_id):
        current = await jobs.store.get(job_id)
        raise Conflict(f"Job '{job_id}' is {current.status if current else 'gone'}; only failed or canceled jobs "
                       "can be retried.", code="job_not_retryable")
    await _queue(jobs, job_id, "the job was not queued. Retry it later.")
    return json_response(JobObject.of(await _visible_job(request, job_id)), status_code=202)


apply_policy(router, PLAIN)
