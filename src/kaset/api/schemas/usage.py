"""GET /v1/usage: daily usage per key and model."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field


class UsageUnits(BaseModel):
    requests: int
    errors: int = Field(description="Requests answered with a status of 400 or more.")
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float = Field(description="Seconds of audio transcribed (in) or synthesised (out).")
    images: int
    characters: int = Field(description="Characters of text synthesised or translated.")
    mean_latency_ms: float
    mean_overhead_ms: float


class UsageDay(UsageUnits):
    date: date
    key_id: int | None = Field(description="The API key; null for requests made with authentication off.")
    user_id: int | None
    model: str | None


class UsageReport(BaseModel):
    object: str = "usage"
    start: date
    end: date
    key_id: int | None = Field(None, description="Set when the report covers one key.")
    user_id: int | None = Field(None, description="Set when the report covers one user's keys.")
    all: bool = Field(False, description="True when the report covers every key (admins only).")
    data: list[UsageDay]
    totals: UsageUnits
    truncated: bool = Field(False, description="True when there were more rows than one reply holds; narrow "
                            "the dates.")
