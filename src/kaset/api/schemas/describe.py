"""Image description (Kaset's own API): POST /v1/describe-image."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kaset.api.schemas.diagnose import ScoredLabel


class DescribeJSONRequest(BaseModel):
    image: str = Field(description="The photo as base64, or a data URL (data:image/jpeg;base64,...).")
    language: Literal["en", "th"] = Field(
        default="en", description="Thai needs a configured vision provider; offline, the answer is English.")
    prompt: str | None = Field(default=None, max_length=2000,
                               description="What to ask about the photo (used as given by vision models).")


class FallbackReport(BaseModel):
    model: str
    error: str


class DescribeResponse(BaseModel):
    description: str
    method: Literal["vision-model", "labels", "labels-template"] = Field(
        description="vision-model: a provider's vision model saw the image. labels: the local LLM worded the "
                    "image classifier's labels. labels-template: a fixed sentence built from those labels.")
    language: Literal["en", "th"] = Field(description="The language the description is written in.")
    requested_language: Literal["en", "th"]
    note: str = Field(description="How the description was made, in the requested language.")
    model: str | None = Field(description="The model that wrote the description (none for the template).")
    classifier: str | None = Field(description="The image classifier whose labels the description is based on.")
    labels: list[ScoredLabel]
    fallbacks: list[FallbackReport] = Field(description="Vision models tried first that failed, and why.")
    notes: list[str]
    models_used: list[str]
