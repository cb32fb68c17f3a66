"""Crop advice (Kaset's own API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class AdviceRequest(BaseModel):
    question: str = Field(min_length=1, max_length=2000, description="The farmer's question, in Thai or English.")
    language: Literal["th", "en"] | None = Field(default=None, description="Answer language; detected if omitted.")
    crop: str | None = Field(default=None, description="mango, rice, cassava or durian.")
    diagnosis: str | None = Field(default=None, description="A diagnosis label or entry id, e.g. 'Anthracnose'.")
    region: Literal["central", "north", "northeast", "east", "west", "south"] | None = None
    month: int | None = Field(default=None, ge=1, le=12)
    top_k: int = Field(default=3, ge=1, le=10)
    use_llm: bool = Field(default=True, description="Let the local LLM rephrase the curated answer.")


class SourceRef(BaseModel):
    title: str
    publisher: str
    url: str
    language: str


class Citation(BaseModel):
    id: str
    name: str
    crop: str
    score: float
    sources: list[SourceRef]


class AdviceResponse(BaseModel):
    answer: str
    language: Literal["th", "en"]
    path: Literal["llm", "curated"] = Field(description="'llm': the LLM's rewrite passed validation; "
                                                         "'curated': the knowledge base's own text.")
    curated_answer: str
    llm_model: str | None
    llm_rejected: str | None = Field(description="Why the LLM's rewrite was thrown away, if it was.")
    citations: list[Citation]
    notes: list[str]
    understood: bool = Field(default=True, description="Whether the question matched an entry well enough "
                             "(match_score at least the threshold) or a diagnosis named the entry. When false "
                             "the answer asks to rephrase and holds no treatment plan; the citations are only "
                             "suggestions.")
    match_score: float = Field(default=0.0, description="How well the question's words match the best entry "
                               "(embedding cosine plus the lexical score; without the crop and diagnosis boosts).")
