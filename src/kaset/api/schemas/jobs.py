"""Durable async jobs (docs/jobs.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from kaset.jobs.store import JobRecord

JobStatus = Literal["pending", "in_progress", "completed", "failed", "canceled"]


class JobError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class JobObject(BaseModel):
    id: str = Field(description="The task id: poll /v1/jobs/{id}, fetch /v1/jobs/{id}/result.")
    object: Literal["job"] = "job"
    kind: str
    status: JobStatus
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    expires_at: int | None = Field(default=None, description="When the job and its result are deleted.")
    attempt: int = Field(description="How many times a runner has taken the job.")
    webhook_url: str | None = None
    error: JobError | None = None

    @classmethod
    def of(cls, job: JobRecord) -> JobObject:
        error = None
        if job.status == "failed" and job.error:
            error = JobError(message=str(job.error.get("message", "")), type=str(job.error.get("type", "")),
                             param=job.error.get("param"), code=job.error.get("code"))
        return cls(id=job.id, kind=job.kind, status=job.status,
                   created_at=_ts(job.created_at) or 0, started_at=_ts(job.started_at),
                   finished_at=_ts(job.finished_at), expires_at=_ts(job.expires_at), attempt=job.attempt,
                   webhook_url=job.webhook_url, error=error)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]


class JobJSONRequest(BaseModel):
    """POST /v1/jobs as JSON: the input as base64 (multipart uploads take files instead)."""

    kind: Literal["transcribe", "diagnose"]
    webhook_url: str | None = Field(default=None, max_length=2000)
    # transcribe: the same fields as /v1/audio/transcriptions, the audio as base64.
    file: str | None = Field(default=None, description="transcribe: the audio file as base64 or a data URL.")
    filename: str | None = Field(default=None, max_length=200)
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[str] | None = None
    # diagnose: the same options as /v1/diagnose, a list of base64 photos.
    images: list[str] | None = Field(default=None, description="diagnose: photos as base64 or data URLs.")
    crop: str | None = None
    top_k: int = Field(default=3, ge=1, le=10)
    compare: bool = False
    ab_key: str | None = Field(default=None, max_length=200)


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def webhook_payload(job: JobRecord) -> dict[str, Any]:
    body = JobObject.of(job).model_dump(mode="json")
    body["result_url"] = f"/v1/jobs/{job.id}/result"
    return body
