"""The listing writer (Kaset's own API): POST /v1/listings, GET /v1/listings/schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kaset.api.schemas.diagnose import ScoredLabel
from kaset.pipelines.listing import DEFAULT_MAX_KEYWORDS, MAX_KEYWORDS_LIMIT, MIN_KEYWORDS, Listing


class ListingJSONRequest(BaseModel):
    image: str = Field(description="The product photo as base64, or a data URL (data:image/jpeg;base64,...).")
    notes: str = Field(default="", max_length=1000,
                       description="The seller's own facts (weight, origin, condition); the listing may use them.")
    language: Literal["en", "th"] = Field(
        default="en", description="The offline LLM writes English only: Thai requests get English and a note.")
    max_keywords: int = Field(default=DEFAULT_MAX_KEYWORDS, ge=MIN_KEYWORDS, le=MAX_KEYWORDS_LIMIT)


class ListingResponse(BaseModel):
    listing: Listing
    method: Literal["llm-json", "repaired", "template"] = Field(
        description="llm-json: the LLM's JSON passed the schema and the grounding checks. repaired: it failed "
                    "twice; fields that passed were kept, the rest filled from the labels. template: built "
                    "from the labels alone (nothing of the LLM's passed, or no LLM is installed).")
    attempts: int = Field(description="LLM replies asked for (0 when no LLM is installed).")
    model: str | None = Field(description="The LLM that wrote the JSON (null when none was asked).")
    labels: list[ScoredLabel] = Field(description="The image classifier's labels the listing is based on.")
    errors: list[str] = Field(description="Why each failed attempt was rejected, prefixed 'attempt N: '.")
    constrained: bool = Field(description="Whether the LLM's sampling was constrained to the JSON schema "
                                          "(a llama.cpp grammar).")
    language: Literal["en"] = Field(description="The language the listing is written in.")
    requested_language: Literal["en", "th"]
    source_description: str = Field(description="The photo's description the listing was written from.")
    description_method: str = Field(description="How that description was made (see /v1/describe-image).")
    notes: list[str]
